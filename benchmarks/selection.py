"""The protocol that chooses ``analyze``'s default: held-out pairs, held-out problems, random controls.

    python benchmarks/selection.py            # build what is missing, measure every pair, print the tables
    python benchmarks/selection.py --json build/selection/summary.json

The family (benchmarks/selection_family.py: 16 pairs, two architectures, two
skills; known-module donors, short and long full fine-tunes, forgetting
regressions) is built with the demo's tooling and cached under
``build/selection/``. For every pair, every method -- the four scores with
``--select top`` and ``--select greedy`` -- picks K in {2, 4, 8} modules on
the skill's *selection* problems (``analyze``'s workload, gold answers as
continuations); each selection is transplanted into the live target
(``sweep``'s apply/restore) and scored by greedy-decoding exact match on 150
held-out *test* problems (the demo's teacher-forced argmax, which equals
greedy decoding), against 3 seeded random module sets of the same size.

Recovery = (merged - target) / (donor - target). Pairs are split by their
seed into a *selection* half, which chooses the default (best mean Recovery
over K), and a *report* half, on which the goal is judged:

    the default's mean Recovery at K = 4 and at K = 8 is at least 1.5x the
    random controls' mean, and it is never below the target on any pair.

Each pair's measurements are cached (``build/selection/pairs/NAME.json``, with
the recipes of its two models: a pair whose model was retrained is measured
again); ``--fresh`` measures again.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import selection_family as family  # noqa: E402

OUT = REPO / "build" / "selection"
KS = (2, 4, 8)
SCORES = ("activation", "local", "attribution", "gain")
METHODS = SCORES + ("greedy",)
CONTROLS = 3
MIN_GAP = 0.05  # donor - target below this: Recovery is undefined for the pair
GOAL_RATIO = 1.5
VERSION = 1  # bump when a measurement changes, to invalidate the cache


def selections(pair: family.FamilyPair, workload: Path) -> Dict[str, List[str]]:
    """Each method's units, best first, up to max(KS) (fewer when it stops or runs out of positive scores)."""
    from mergekit_transplant.analysis import analyze, load_workload

    work = load_workload(workload)
    target, donor = str(pair.path(pair.target)), str(pair.path(pair.donor))
    common = dict(top_k=max(KS), batch_size=16, progress=False, controls=0, seed=pair.seed)
    top = dict(common, select="top")
    out, seconds = {}, {}
    t0 = time.perf_counter()
    res = analyze(target, donor, work, score="attribution", also=["local", "activation"], **top)
    seconds["scores"] = time.perf_counter() - t0
    cands = res.report["candidates"]
    for score in ("activation", "local", "attribution"):
        value = {c["tensor"]: c["scores"][score] for c in cands}
        out[score] = [u for u in res.ranking(score) if value[u] > 0][:max(KS)]
    t0 = time.perf_counter()
    res = analyze(target, donor, work, score="gain", **top)
    seconds["gain"] = time.perf_counter() - t0
    value = {c["tensor"]: c["scores"]["gain"] for c in res.report["candidates"]}
    out["gain"] = [u for u in res.ranking("gain") if value[u] > 0][:max(KS)]
    t0 = time.perf_counter()
    try:
        res = analyze(target, donor, work, score="attribution", select="greedy", holdout_fraction=0.25, **common)
        out["greedy"] = list(res.report["selected"]["units"])
        greedy = res.report["greedy"]
    except Exception as error:  # nothing helps: greedy transplants nothing
        if "nothing to transplant" not in str(error):
            raise
        out["greedy"], greedy = [], {"message": str(error)}
    seconds["greedy"] = time.perf_counter() - t0
    return {"units": out, "seconds": seconds, "greedy": greedy,
            "candidates": [c["tensor"] for c in cands], "tensors": {c["tensor"]: c["tensors"] for c in cands}}


def measure(pair: family.FamilyPair, picked: dict) -> dict:
    """Test-split exact match of target, donor, each method's first K units, and random K-sets."""
    import torch
    from transformers import AutoModelForCausalLM

    import train  # demo/train.py

    from mergekit_transplant.inplace import DonorTensors, LiveTransplant

    tok = family.load_tokenizer(pair.arch)
    test = family.eval_sets()[f"{pair.skill}_test"]

    def load(name):
        return AutoModelForCausalLM.from_pretrained(pair.path(name), dtype=torch.float32).eval()

    donor_score = train.exact_match(load(pair.donor), tok, test)
    model = load(pair.target)
    target_score = train.exact_match(model, tok, test)
    live = LiveTransplant(model, DonorTensors(str(pair.path(pair.donor))))
    rng = random.Random(pair.seed)
    pool = sorted(picked["candidates"])
    results: Dict[str, Dict[str, float]] = {m: {} for m in METHODS}
    controls: Dict[str, List[float]] = {}
    for k in KS:
        for method in METHODS:
            units = picked["units"][method][:k]
            with live.applied({t: 1.0 for u in units for t in picked["tensors"][u]}):
                results[method][str(k)] = train.exact_match(model, tok, test)
        controls[str(k)] = []
        for _ in range(CONTROLS):
            with live.applied({t: 1.0 for u in rng.sample(pool, k) for t in picked["tensors"][u]}):
                controls[str(k)].append(train.exact_match(model, tok, test))
    return {"target": target_score, "donor": donor_score, "merged": results, "controls": controls,
            "sizes": {m: len(picked["units"][m]) for m in METHODS}}


def run_pair(pair: family.FamilyPair, fresh: bool) -> dict:
    cache = OUT / "pairs" / f"{pair.name}.json"
    trained = {name: json.loads(json.dumps(family.recipes(pair.arch)[name])) for name in (pair.target, pair.donor)}
    if cache.exists() and not fresh:
        data = json.loads(cache.read_text())
        if data.get("version") == VERSION and data.get("recipes") == trained:
            return data
    workload = OUT / f"workload-{pair.skill}.jsonl"
    workload.write_text("".join(json.dumps(r) + "\n" for r in family.workload_rows(pair.skill)))
    t0 = time.perf_counter()
    picked = selections(pair, workload)
    data = {"version": VERSION, "recipes": trained, "pair": pair.__dict__, "half": family.half(pair), **measure(pair, picked),
            "units": picked["units"], "analysis_seconds": picked["seconds"], "greedy": picked["greedy"],
            "seconds": time.perf_counter() - t0}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


# ------------------------------------------------------------------------------------------ summary
def recovery(value: float, d: dict) -> float:
    return (value - d["target"]) / (d["donor"] - d["target"])


def summarize(rows: List[dict]) -> dict:
    """Per half and method: mean Recovery per K, share beating every control, pairs below target."""
    out = {}
    for half in ("selection", "report"):
        pairs = [d for d in rows if d["half"] == half]
        usable = [d for d in pairs if d["donor"] - d["target"] >= MIN_GAP]
        table = {}
        for method in METHODS + ("random",):
            per_k = {}
            for k in map(str, KS):
                if method == "random":
                    recs = [statistics.mean(recovery(v, d) for v in d["controls"][k]) for d in usable]
                    beats = below = None
                else:
                    recs = [recovery(d["merged"][method][k], d) for d in usable]
                    beats = sum(d["merged"][method][k] > max(d["controls"][k]) for d in usable)
                    below = sum(d["merged"][method][k] < d["target"] for d in pairs)
                per_k[k] = {"mean_recovery": statistics.mean(recs) if recs else None, "beats_all": beats,
                            "below_target": below}
            per_k["mean"] = statistics.mean(per_k[k]["mean_recovery"] for k in map(str, KS)) if usable else None
            table[method] = per_k
        out[half] = {"pairs": [d["pair"]["name"] for d in pairs], "usable": len(usable),
                     "excluded": [d["pair"]["name"] for d in pairs if d not in usable], "methods": table}
    chosen = max(METHODS, key=lambda m: out["selection"]["methods"][m]["mean"])
    best_score = max(SCORES, key=lambda m: out["selection"]["methods"][m]["mean"])
    rep = out["report"]["methods"]
    checks = {}
    for k in ("4", "8"):
        ratio = rep[chosen][k]["mean_recovery"] / rep["random"][k]["mean_recovery"] \
            if rep["random"][k]["mean_recovery"] and rep["random"][k]["mean_recovery"] > 0 else None
        checks[k] = {"default": rep[chosen][k]["mean_recovery"], "random": rep["random"][k]["mean_recovery"],
                     "ratio": ratio, "met": ratio is not None and ratio >= GOAL_RATIO}
    below = {k: rep[chosen][k]["below_target"] for k in map(str, KS)}
    met = all(c["met"] for c in checks.values()) and below["4"] == 0 and below["8"] == 0
    return {"halves": out, "default": {"method": chosen, "score": best_score}, "goal": {
        "ratio_checks": checks, "below_target": below, "met": met}}


def markdown(summary: dict, rows: List[dict]) -> str:
    lines = []
    for half in ("selection", "report"):
        h = summary["halves"][half]
        lines += [f"**{half.capitalize()} half** ({len(h['pairs'])} pairs: {', '.join(h['pairs'])}"
                  + (f"; excluded for a donor-target gap under {MIN_GAP}: {', '.join(h['excluded'])}"
                     if h["excluded"] else "") + ")", "",
                  "| method | Recovery K=2 | K=4 | K=8 | mean | beats every control K=2 / 4 / 8 | below target K=2 / 4 / 8 |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for method in METHODS + ("random",):
            x = h["methods"][method]
            recs = " | ".join(f"{x[k]['mean_recovery']:.3f}" for k in map(str, KS))
            if method == "random":
                beats = below = "-"
            else:
                beats = " / ".join(f"{x[k]['beats_all']}/{h['usable']}" for k in map(str, KS))
                below = " / ".join(f"{x[k]['below_target']}" for k in map(str, KS))
            name = "random controls (mean of 3)" if method == "random" else \
                (f"`{method}` (top)" if method in SCORES else "`greedy`")
            lines.append(f"| {name} | {recs} | {x['mean']:.3f} | {beats} | {below} |")
        lines.append("")
    d = summary["default"]
    lines.append(f"Default chosen on the selection half: **`{d['method']}`** "
                 f"(best score for `--select top`: `{d['score']}`).")
    g = summary["goal"]
    parts = [f"K={k}: {c['default']:.3f} vs random {c['random']:.3f} = "
             + (f"{c['ratio']:.2f}x" if c["ratio"] is not None else "n/a") for k, c in g["ratio_checks"].items()]
    lines.append(f"Goal on the report half (>= {GOAL_RATIO}x the random controls' mean Recovery at K=4 and K=8, "
                 f"never below target): {'; '.join(parts)}; pairs below target at K=4 / 8: "
                 f"{g['below_target']['4']} / {g['below_target']['8']}: **{'met' if g['met'] else 'MISSED'}**.")
    lines += ["", "| pair | half | target | donor | " + " | ".join(f"{m} K=4" for m in METHODS)
              + " | random K=4 (3) |", "|---|---|---:|---:|" + "---:|" * (len(METHODS) + 1)]
    for d in rows:
        ctrl = ", ".join(f"{v:.2f}" for v in d["controls"]["4"])
        lines.append(f"| {d['pair']['name']} | {d['half']} | {d['target']:.3f} | {d['donor']:.3f} | "
                     + " | ".join(f"{d['merged'][m]['4']:.3f}" for m in METHODS) + f" | {ctrl} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="measure every pair again (models stay cached)")
    parser.add_argument("--pairs", help="comma-separated pair names (default: all)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    family.build(log=lambda line: print(line, file=sys.stderr, flush=True))
    wanted = set(args.pairs.split(",")) if args.pairs else None
    rows = []
    for pair in family.pairs():
        if wanted and pair.name not in wanted:
            continue
        d = run_pair(pair, args.fresh)
        print(f"{pair.name} ({d['half']}): target {d['target']:.3f} donor {d['donor']:.3f} "
              + " ".join(f"{m}@4={d['merged'][m]['4']:.3f}" for m in METHODS)
              + f" random@4={statistics.mean(d['controls']['4']):.3f} ({d['seconds']:.0f}s)",
              file=sys.stderr, flush=True)
        rows.append(d)
    if wanted:
        return
    summary = summarize(rows)
    summary["seconds"] = time.perf_counter() - t0
    text = markdown(summary, rows)
    print(text)
    (OUT / "summary.md").write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
