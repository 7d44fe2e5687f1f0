"""The DoE section of ``make demo``: task experts of the demo family's skill, against random keeps.

Runs, as a user would, ``mergekit-transplant unplug sweep`` on ``gen1`` (trained
from scratch on all four skills), with the neurons scored on the skill's
selection split and every expert evaluated on the selection split, the
held-out test split and the three retention tasks; then ``mergekit-transplant
unplug`` writes the expert at the keep ratio the sweep chose, and its speed
and size are measured against the full model. ``unplug_section`` turns what
this run wrote into the docs/results.md section; every figure is read from
those files.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, List, Optional

from demo.pairs import MODELS, RETAIN, SELECT, TASKS, TEST

MODEL = "gen1"
KEEPS = "0.03,0.06,0.12,0.25"
EVAL_LIMIT = 30  # documents per task and point
WORKLOAD_LIMIT = 64  # selection-split prompts the neurons are scored on
HOLDS = 0.95  # "holds the skill": at least this share of the full model's held-out accuracy


REPO = Path(__file__).resolve().parents[1]


def demo_unplug(build: Path, figures: Path, tool: Callable[..., None]) -> None:
    """Sweep, write the chosen expert, measure speed and size (into ``build/unplug``, relative to the repo)."""
    out = build / "unplug"
    (REPO / out).mkdir(parents=True, exist_ok=True)
    print(f"\n=== task experts (DoE): {MODEL} on the skill {SELECT} / {TEST}", flush=True)
    model = f"{MODELS}/{MODEL}"
    # one thread per process: on a 1M-parameter model lm-eval's calls are too small to gain from two, and on
    # shared cores a second thread made evaluations several times slower (docs/performance.md, Sweep)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or "1"
    try:
        _run(tool, model, out, figures)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    speed = measure_speed(REPO / model, REPO / out / "expert")
    (REPO / out / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")


def _run(tool: Callable[..., None], model: str, out: Path, figures: Path) -> None:
    tool("unplug", "sweep", "--model", model, "--lm-eval-task", SELECT, "--include-path", TASKS,
         "--workload-limit", str(WORKLOAD_LIMIT), "--keep", KEEPS, "--select-split", SELECT, "--report-split", TEST,
         "--retain-tasks", ",".join(RETAIN), "--limit", str(EVAL_LIMIT), "--eval-batch-size", "50",
         "--output", str(out / "unplug-sweep.json"), "--plot", str(figures / "unplug-sweep.png"))
    from mergekit_transplant.unplug.sweep import UnplugSweepResult

    best = UnplugSweepResult.load(REPO / out / "unplug-sweep.json").summary()
    tool("unplug", "--model", model, "--lm-eval-task", SELECT, "--include-path", TASKS, "--limit", str(WORKLOAD_LIMIT),
         "--keep", f"{best['keep']:g}", "-o", str(out / "expert"), "--overwrite")


def measure_speed(full: Path, expert: Path, reps: int = 7) -> dict:
    """Prefill tokens/s at batch 16 (32 tokens per row), interleaved runs, medians; file sizes."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from benchmarks.unplug import prefill, timed

    models = {name: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()
              for name, p in (("full", full), ("expert", expert))}
    ids = torch.randint(4, 90, (16, 32), generator=torch.Generator().manual_seed(0))
    runs = {name: [] for name in models}
    for name, m in models.items():
        prefill(m, ids)  # warm-up
    for rep in range(reps):
        for name in (list(models) if rep % 2 == 0 else list(models)[::-1]):
            runs[name].append(timed(lambda: prefill(models[name], ids), "cpu"))
    return {name: {"prefill_b16_tok_s": ids.numel() / statistics.median(runs[name]),
                   "parameters": sum(p.numel() for p in models[name].parameters()),
                   "file_bytes": sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))}
            for name, path in (("full", full), ("expert", expert))}


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def unplug_section(build: Path) -> List[str]:
    """The docs/results.md section, from ``build/unplug``; [] when the demo did not run it."""
    path = build / "unplug" / "unplug-sweep.json"
    if not path.exists():
        return []
    from mergekit_transplant.unplug.sweep import UnplugSweepResult

    result = UnplugSweepResult.load(path)
    speed_path = build / "unplug" / "speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else None
    best = result.summary()
    report, retain = result.labels["report"], result.labels.get("retain")
    named = [s for s in result.scores if s != "random"]
    full_report = result.full.split_scores[report]
    lines = [
        "## Task experts (DoE): unplugging the neurons the skill does not use", "",
        f"`mergekit-transplant unplug sweep` on `{MODEL}` (all four skills, {result.full.parameters:,} parameters): "
        f"every layer keeps the same share of its {result.settings['intermediate_size']} MLP neurons, ranked on "
        f"{result.settings['workload_info']['n']} prompts of `{SELECT}`; each expert is swapped into the live model "
        f"(`unplugged()`) and scored by lm-eval on {EVAL_LIMIT} documents per task. Skill = exact match on the "
        f"held-out `{TEST}`; retain = mean over {', '.join(f'`{t}`' for t in RETAIN)}; random = 3 seeds "
        f"(mean ± std, min–max). Full model: skill {_fmt(full_report)}, retain "
        f"{_fmt(result.full.split_scores.get(retain))}.", "",
    ]
    header = ["keep", "parameters"] + [f"{s} skill" for s in named] + ["random skill", "random min–max"] + [
        f"{s} retain" for s in named] + ["random retain"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for keep in result.keeps:
        band, rband = result.band(keep), result.band(keep, "retain")
        params = result.of(named[0], keep)[0].parameters
        row = [f"{keep:g}", f"{params:,}"] + [_fmt(result.value(s, keep)) for s in named]
        row += [f"{_fmt(band['mean'])} ± {_fmt(band['std'])}", f"{_fmt(band['min'])}–{_fmt(band['max'])}"]
        row += [_fmt(result.value(s, keep, "retain")) for s in named] + [_fmt(rband["mean"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "![unplug sweep](results/unplug-sweep.png)", ""]
    lines.append(
        f"Chosen on `{SELECT}` by the sweep's rule (best selection score, ties to the smaller model): "
        f"`{best['score']}` at keep {best['keep']:g} ({best['parameters']:,} parameters, "
        f"{100 * best['parameters'] / best['full_parameters']:.0f}% of the full model): skill {_fmt(best['report_score'])} "
        f"on the held-out split ({_fmt(best['kept_fraction_of_full'])} of the full model's), retain "
        f"{_fmt(best['retain_score'])} (full: {_fmt(best['full_retain_score'])}); random keeps of the same size: "
        f"{_fmt(best['random']['mean'])} (min {_fmt(best['random']['min'])}, max {_fmt(best['random']['max'])}).")
    lines += ["", where_it_breaks(result, named, full_report), ""]
    if speed:
        f, e = speed["full"], speed["expert"]
        lines += [
            f"Speed and size of the written expert (`mergekit-transplant unplug --keep {best['keep']:g}`, a stock "
            f"`LlamaForCausalLM`): prefill {e['prefill_b16_tok_s']:,.0f} tokens/s at batch 16 against "
            f"{f['prefill_b16_tok_s']:,.0f} for the full model ({e['prefill_b16_tok_s'] / f['prefill_b16_tok_s']:.2f}×; "
            f"7 interleaved runs, medians, on a shared 2-core CPU), {e['file_bytes'] / 2**20:.2f} MiB of safetensors "
            f"against {f['file_bytes'] / 2**20:.2f} MiB. The demo model is tiny (its embeddings and per-call "
            "overhead weigh more than in a real model); the ~100M-parameter benchmark is in "
            "[performance.md](performance.md#task-experts-benchmarksunplugpy).", "",
        ]
    return lines


def where_it_breaks(result, named: List[str], full: float) -> str:
    """One sentence, computed: the smallest keep at which each score still holds the skill."""
    def smallest_holding(score: str) -> Optional[float]:
        held = [k for k in result.keeps if (result.value(score, k) or 0.0) >= HOLDS * full]
        below = [k for k in result.keeps if k not in held]
        # the smallest keep from which every larger keep also holds
        ok = [k for k in held if not any(b > k for b in below)]
        return min(ok) if ok else None

    parts = []
    for score in named + ["random"]:
        k = smallest_holding(score)
        parts.append(f"{score} down to keep {k:g}" if k is not None else f"{score} at no keep tried")
    lowest = result.keeps[0]
    retain_full = result.full.split_scores.get(result.labels.get("retain"))
    chosen = result.summary()["score"]
    retain_held = [k for k in result.keeps if retain_full and (result.value(chosen, k, "retain") or 0.0)
                   >= HOLDS * retain_full]
    retain_text = (f"the retain tasks, which the workload never exercised, hold ≥ {HOLDS:.0%} only from keep "
                   f"{min(retain_held):g} ({chosen})" if retain_held else
                   f"the retain tasks, which the workload never exercised, stay below {HOLDS:.0%} of the full "
                   f"model's at every keep tried ({chosen}: {_fmt(result.value(chosen, result.keeps[-1], 'retain'))} "
                   f"at keep {result.keeps[-1]:g})")
    return (f"Where the expert breaks: holding ≥ {HOLDS:.0%} of the full model's skill, "
            f"{', '.join(parts)}; at keep {lowest:g} the skill falls to "
            + ", ".join(f"{_fmt(result.value(s, lowest))} ({s})" for s in named + ["random"])
            + f"; {retain_text}.")
