"""Benchmark ``analyze``: wall time against plain forward passes, and peak memory.

Builds a ~100M-parameter Llama locally (``testing.make_model``: hidden 768,
12 layers, MLP 3072; random weights) and a donor that differs in 4 tensors,
then times, each in a fresh subprocess (so peak RSS is per run):

- ``forward1`` / ``forward2``: load the target (and then the donor) and run
  plain forward passes, no hooks, over the same batches the analysis uses;
- ``local``, ``activation``, ``attribution``: ``analyze()`` end to end;
- ``idle``: import torch + transformers only (the runtime's own memory).

Goals (docs/performance.md): ``activation`` <= 1.2 x two forward passes,
``local`` <= 1.3 x one forward pass, peak RSS <= 1.25 x the larger model
plus runtime overhead; ``gain`` <= 1.3 x a forward plus backward pass (the
gradient of log p(continuation) with respect to every candidate weight, on
the same batches), and ``greedy`` <= 1.1 x one forward pass over the
workload per candidate evaluation (both measured in one process,
interleaved).

    python benchmarks/analysis.py [--samples 32] [--words 128] [--threads 1] [--repeats 3] [--json out.json]

On a shared machine, ``BENCH_LOCK=/work/cpu.lock`` runs each measured
subprocess under ``flock`` on that file (held for that run only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import goal_verdict  # noqa: E402

CHANGED = ["model.layers.2.mlp.down_proj.weight", "model.layers.5.self_attn.v_proj.weight",
           "model.layers.8.mlp.up_proj.weight", "model.layers.10.self_attn.o_proj.weight"]
MODES = ("idle", "forward1", "forward2", "local", "activation", "attribution", "attribution-recompute",
         "attribution-whole", "gain")
#: attribution's ways of running its backward pass (analyze options), besides the default micro-batches
ATTRIBUTION_VARIANTS = {"attribution-recompute": "--recompute",
                        "attribution-whole": "--gradient-batch-size = --batch-size"}
#: in one process, on one loaded model, alternating: the hooks' cost without load-time noise
PASSES = ("plain", "activation", "local", "attribution", "backward", "gain", "gain-recompute", "gain-whole", "greedy")
#: goals measured in one process: pass -> (baseline pass, ratio)
PASS_GOALS = {"gain": ("backward", 1.3), "greedy": ("plain", 1.1)}


#: model sizes: the 104M pair of docs/performance.md and the ~60M pair of issue 16
SIZES = {"104m": dict(hidden=768, layers=12, intermediate=3072, heads=12, kv_heads=4),
         "60m": dict(hidden=640, layers=10, intermediate=2560, heads=10, kv_heads=2)}
#: attribution's peak RSS against local's on the same pair, workload and batch (issue 16)
ATTRIBUTION_RSS_GOAL = 1.4


def build(root: Path, samples: int, words: int, seed: int = 0, size: str = "104m") -> dict:
    from mergekit_transplant.testing import WORDS, make_model, perturbed_copy

    target, donor, work = root / "target", root / "donor", root / "work.jsonl"
    if not target.exists():
        make_model(target, "llama", **SIZES[size], vocab_size=96, max_positions=512, seed=seed)
    if not donor.exists():
        # like a full fine-tune: every linear weight moves a little, four of them a lot
        from mergekit_transplant.testing import linear_weight_names

        everywhere = perturbed_copy(target, root / "donor-base", linear_weight_names(target), scale=0.02, seed=2)
        last = SIZES[size]["layers"] - 2  # layer 10 of the 104M pair
        perturbed_copy(everywhere, donor, [n.replace("layers.10.", f"layers.{last}.") for n in CHANGED], scale=0.5)
        import shutil

        shutil.rmtree(everywhere)
    rnd = random.Random(seed)
    rows = []
    for i in range(samples):
        n = rnd.randint(words // 2, words)
        row = {"text": " ".join(rnd.choice(WORDS) for _ in range(n))}
        if i % 2:
            row["continuation"] = " " + " ".join(rnd.choice(WORDS) for _ in range(8))
        rows.append(json.dumps(row))
    work.write_text("\n".join(rows) + "\n")
    return {"target": str(target), "donor": str(donor), "workload": str(work)}


def _peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, paths: dict, threads: int, batch_size: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (the runtime, for the idle baseline)

    if mode == "interleaved":
        return interleaved(paths, threads, batch_size, int(os.environ.get("BENCH_REPEATS", "3")))
    if mode == "idle":
        return {"mode": mode, "peak_rss_mb": _peak_rss_mb()}
    if mode.startswith("forward"):
        return _plain_forward(mode, paths, batch_size)
    from mergekit_transplant.analysis import analyze, load_workload

    start, cpu0 = time.perf_counter(), time.process_time()
    extra = {"attribution-recompute": {"recompute": True},
             "attribution-whole": {"gradient_batch_size": batch_size}}.get(mode, {})
    if mode.startswith("attribution-rows"):  # attribution-rowsN: --gradient-batch-size N
        extra = {"gradient_batch_size": int(mode[len("attribution-rows"):])}
    import inspect

    if "select" in inspect.signature(analyze).parameters:  # not in the code before issue 17 (@before)
        extra["select"] = "top"
    score = "attribution" if mode.startswith("attribution") else mode
    result = analyze(paths["target"], paths["donor"], load_workload(paths["workload"]), score=score, top_k=4,
                     batch_size=batch_size, progress=False, **extra)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    timing = result.report["timing"]
    passes = timing.get("target_pass_s", 0.0) + timing.get("donor_pass_s", 0.0)
    return {"mode": mode, "wall_s": wall, "cpu_s": cpu, "passes_s": passes, "peak_rss_mb": _peak_rss_mb(),
            "top4": result.ranking(score)[:4], "tokens": timing.get("target_tokens") or timing.get("donor_tokens"),
            "gradient_batch_size": result.report.get("settings", {}).get("gradient_batch_size"), "timing": timing}


def _plain_forward(mode: str, paths: dict, batch_size: int) -> dict:
    """What the analysis is compared with: the same batches, no hooks, no statistics."""
    import torch

    from mergekit_transplant.analysis import load_workload
    from mergekit_transplant.analysis.tokens import batches, context_limit, encode
    from mergekit_transplant.loading import load_causal_lm

    start = time.perf_counter()
    passes = 0.0
    refs = [paths["target"]] + ([paths["donor"]] if mode == "forward2" else [])
    tokens = 0
    for ref in refs:
        model, tok = load_causal_lm(ref)
        seqs = encode(tok, load_workload(paths["workload"]).samples, context_limit(model, 512))
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in batches(seqs, batch_size, pad_id=0, padding_side="right", device="cpu"):
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
                tokens += batch.tokens
        passes += time.perf_counter() - t0
        del model
    return {"mode": mode, "wall_s": time.perf_counter() - start, "passes_s": passes, "peak_rss_mb": _peak_rss_mb(),
            "tokens": tokens}


def interleaved(paths: dict, threads: int, batch_size: int, repeats: int) -> dict:
    """Time a plain pass and each kind of hooked pass on the same model, alternating.

    Other processes share the machine, so each kind runs ``repeats`` times in
    turn and the minimum (least disturbed) and median are reported.
    """
    import statistics

    import torch

    torch.set_num_threads(threads)
    from mergekit_transplant.analysis import load_workload
    from mergekit_transplant.analysis.candidates import find_candidates
    from mergekit_transplant.analysis.capture import run_pass
    from mergekit_transplant.analysis.streaming import TensorStreamer
    from mergekit_transplant.analysis.tokens import batches, context_limit, encode
    from mergekit_transplant.checkpoint import read_index
    from mergekit_transplant.loading import load_causal_lm

    model, tok = load_causal_lm(paths["target"])
    target, donor = read_index(paths["target"]), read_index(paths["donor"])
    seqs = encode(tok, load_workload(paths["workload"]).samples, context_limit(model, 512))
    cands, _ = find_candidates(model, target, donor)

    def plain():
        with torch.inference_mode():
            for b in batches(seqs, batch_size, pad_id=0, padding_side="right", device="cpu"):
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                      use_cache=False, logits_to_keep=1)

    from mergekit_transplant.analysis.greedy import LogLikelihood, greedy_select
    from mergekit_transplant.analysis.tokens import likelihood_view
    from mergekit_transplant.inplace import DonorTensors, LiveTransplant

    scored = [s for s in likelihood_view(seqs) if s is not None]

    from mergekit_transplant.analysis.pipeline import plan_analysis

    # the gradient passes run as analyze runs them: micro-batches of the plan's rows (or a variant)
    rows = {score: plan_analysis(paths["target"], paths["donor"], paths["workload"], score=score, select="top",
                                 batch_size=batch_size).gradient_batch_size for score in ("attribution", "gain")}
    print(f"gradient micro-batch rows (plan): {rows}", file=sys.stderr, flush=True)

    def hooked(kind):
        score, _, variant = kind.partition("-")
        with TensorStreamer(donor) as files:
            run_pass(model, cands, scored if score == "gain" else seqs,
                     stats=[] if score == "gain" else ["activation"] + (["local"] if kind == "local" else []),
                     batch_size=batch_size, pad_id=0, padding_side="right", other=files,
                     attribution=score == "attribution", gain=score == "gain", recompute=variant == "recompute",
                     gradient_batch_size=rows.get(score) if not variant else batch_size, progress=False)

    weights = [dict(model.named_parameters())[c.tensor] for c in cands]

    def backward():
        """What ``gain`` is compared with: d log p(continuation) / dW for every candidate weight."""
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        try:
            for b in batches(scored, batch_size, pad_id=0, padding_side="right", device="cpu"):
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                               use_cache=False).logits
                picked = logits[b.rows, b.cols].float().log_softmax(-1)
                picked.gather(1, b.labels[:, None]).sum().backward()
                for w in weights:
                    w.grad = None
        finally:
            for w in weights:
                w.requires_grad_(False)

    live = LiveTransplant(model, DonorTensors(paths["donor"]))
    ll = LogLikelihood(model, scored, batch_size=batch_size, pad_id=0, padding_side="right", device="cpu")

    def greedy():
        """One greedy round over the 4 strongly changed tensors; returns seconds per candidate evaluation."""
        result = greedy_select(live, ll, None, CHANGED, {c: [c] for c in CHANGED},
                               {c.tensor: c.parameters for c in cands}, top_k=1, budget=None, min_gain=-1e30,
                               strength=1.0, controls=0, seed=0, pool=CHANGED, progress=False,
                               echo=lambda line: None)
        return (result.seconds - result.forward_s) / result.evaluations

    kinds = [k for k in PASSES if k in os.environ.get("BENCH_PASSES", ",".join(PASSES)).split(",")]
    times = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind in kinds:
            start, cpu0 = time.perf_counter(), time.process_time()
            if kind == "greedy":
                times[kind].append(greedy())
                continue
            plain() if kind == "plain" else backward() if kind == "backward" else hooked(kind)
            times[kind].append(time.perf_counter() - start)
            cpu[kind].append(time.process_time() - cpu0)
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "all_s": v,
                "median_cpu_s": statistics.median(cpu[k]) if cpu[k] else None, "all_cpu_s": cpu[k],
                **({"gradient_rows": rows[k]} if k in rows else {})}
            for k, v in times.items()}


def run_worker(mode: str, paths: dict, threads: int, batch_size: int, before: str = None) -> dict:
    """One run in a fresh process; a mode ending in ``@before`` runs the code in ``before`` (PYTHONPATH)."""
    name, _, at = mode.partition("@")
    cmd = [sys.executable, __file__, "--worker", name, "--paths", json.dumps(paths), "--threads", str(threads),
           "--batch-size", str(batch_size)]
    env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
    if os.environ.get("BENCH_LOCK"):  # a shared machine: hold this lock for each measured run only
        cmd = ["flock", os.environ["BENCH_LOCK"]] + cmd
    if at == "before":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (before, env.get("PYTHONPATH")) if p)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["mode"] = mode
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--words", type=int, default=128, help="longest prompt in words (tokens, roughly)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3,
                        help="end-to-end runs per mode, round-robin; the fastest wall time is kept")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated; also attribution-rowsN (attribution at --gradient-batch-size N) "
                             "and MODE@before")
    parser.add_argument("--interleaved", type=int, default=5,
                        help="repeats of the in-process alternating pass timing (0: skip)")
    parser.add_argument("--size", choices=sorted(SIZES), default="104m", help="the model pair to build")
    parser.add_argument("--before", metavar="SRC",
                        help="a checkout of the code to compare with: modes MODE@before run it (e.g. "
                             "--modes local,attribution,attribution@before)")
    parser.add_argument("--passes", default=",".join(PASSES),
                        help="passes of the in-process timing (plain always runs)")
    parser.add_argument("--dir", help="folder for the models (kept between runs); default: a temp folder")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.paths), args.threads, args.batch_size)))
        return

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    root.mkdir(parents=True, exist_ok=True)
    paths = build(root, args.samples, args.words, size=args.size)
    from mergekit_transplant.checkpoint import read_index

    index = read_index(paths["target"])
    size_mb = sum(t.nbytes for t in index.tensors.values()) / 2**20
    results = {}
    if args.interleaved:
        os.environ["BENCH_REPEATS"] = str(args.interleaved)
        os.environ["BENCH_PASSES"] = "plain," + args.passes
        results["interleaved"] = run_worker("interleaved", paths, args.threads, args.batch_size)
        print(f"interleaved: {json.dumps(results['interleaved'])}", file=sys.stderr, flush=True)
    modes = [m for m in args.modes.split(",") if m]
    runs = {m: [] for m in modes}
    for _ in range(args.repeats):  # round-robin, so a busy spell on the machine hits every mode alike
        for mode in modes:
            runs[mode].append(run_worker(mode, paths, args.threads, args.batch_size, args.before))
            print(f"{mode}: {json.dumps({k: v for k, v in runs[mode][-1].items() if k != 'timing'})}",
                  file=sys.stderr, flush=True)
    for mode in modes:
        best = dict(min(runs[mode], key=lambda r: r.get("wall_s", 0.0)))
        best["all_wall_s"] = [r.get("wall_s") for r in runs[mode]]
        best["all_passes_s"] = [r.get("passes_s") for r in runs[mode]]
        best["all_peak_rss_mb"] = [r["peak_rss_mb"] for r in runs[mode]]
        best["peak_rss_mb"] = max(best["all_peak_rss_mb"])
        best["median_wall_s"] = statistics.median(best["all_wall_s"])
        best["median_cpu_s"] = statistics.median(r.get("cpu_s", float("nan")) for r in runs[mode])
        best["median_peak_rss_mb"] = statistics.median(best["all_peak_rss_mb"])
        results[mode] = best
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
                   f"torch threads {args.threads}",
        "model": {"parameters": index.num_parameters, "size_mb": size_mb},
        "workload": {"samples": args.samples, "tokens_per_pass": results.get("forward1", {}).get("tokens")},
        "results": results,
    }
    print(_markdown(summary, args))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _markdown(summary: dict, args) -> str:
    r = summary["results"]
    size = summary["model"]["size_mb"]
    idle = r.get("idle", {}).get("peak_rss_mb")
    out = []
    if "interleaved" in r:
        inter = r["interleaved"]
        plain = inter["plain"]
        out.append("In one process, same loaded target, passes alternating "
                   f"({len(plain['all_s'])} rounds; min and median seconds):\n")
        out.append("| pass | gradient rows | min s | median s | CPU s (median) | min / plain | median / plain |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for kind in PASSES:
            if kind not in inter:
                continue
            x = inter[kind]
            label = "greedy (per candidate evaluation)" if kind == "greedy" else kind
            cpu = f"{x['median_cpu_s']:.2f}" if x.get("median_cpu_s") is not None else "-"
            grad = x.get("gradient_rows") if kind in ("attribution", "gain") else (
                args.batch_size if kind.endswith(("-recompute", "-whole")) or kind == "backward" else "")
            out.append(f"| {label} | {grad if grad is not None else ''} | {x['min_s']:.2f} | {x['median_s']:.2f} | "
                       f"{cpu} | {x['min_s'] / plain['min_s']:.2f}x | {x['median_s'] / plain['median_s']:.2f}x |")
        out.append("")
        for kind, (base, goal) in PASS_GOALS.items():
            if kind in inter and base in inter:
                ratio = inter[kind]["median_s"] / inter[base]["median_s"]
                what = "a forward + backward pass" if base == "backward" else "one forward pass over the workload"
                out.append(f"Goal: `{kind}` <= {goal}x {what} (medians): {ratio:.2f}x: "
                           f"**{'met' if ratio <= goal else 'MISSED'}**")
                if inter[kind].get("median_cpu_s") and inter[base].get("median_cpu_s"):
                    ratio = inter[kind]["median_cpu_s"] / inter[base]["median_cpu_s"]
                    out.append(f"Goal: `{kind}` <= {goal}x {what} (CPU time, medians): {ratio:.2f}x: "
                               f"**{'met' if ratio <= goal else 'MISSED'}**")
        out.append("")
    rows = ["| run | wall s | CPU s (median) | passes s | wall / baseline | passes / baseline | goal | peak RSS MB | RSS - idle, x model "
            "| plan MB |", "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    goals = {"local": ("forward1", 1.3), "activation": ("forward2", 1.2), "attribution": ("forward1", None),
             "gain": ("forward1", None)}
    for mode in sorted((m for m in r if m != "interleaved"), key=_mode_order):
        x = r[mode]
        base, goal = goals.get(mode.partition("@")[0], (None, None))
        ratio_wall = ratio_pass = "-"
        verdict = ""
        if base and base in r:
            ratio_wall = f"{x['wall_s'] / r[base]['wall_s']:.2f}x {base}"
            ratio_pass = f"{x['passes_s'] / r[base]['passes_s']:.2f}x"
            if goal:
                met = x["wall_s"] / r[base]["wall_s"] <= goal
                verdict = f"<= {goal}x: {'met' if met else 'MISSED'}"
        mem = f"{(x['peak_rss_mb'] - idle) / size:.2f}x" if idle and mode != "idle" else "-"
        rows.append(f"| {mode} | {x.get('wall_s', 0):.2f} | {x.get('median_cpu_s', float('nan')):.1f} | "
                    f"{x.get('passes_s', 0):.2f} | {ratio_wall} | "
                    f"{ratio_pass} | {verdict} | {x['peak_rss_mb']:.0f} | {mem} | "
                    f"{x.get('timing', {}).get('plan_peak_mb', '-')} |")
    head = (f"{summary['model']['parameters'] / 1e6:.1f}M parameters ({size:.0f} MB float32), "
            f"{summary['workload']['samples']} samples, {summary['workload']['tokens_per_pass']} tokens per pass, "
            f"batch {args.batch_size}; {summary['machine']}")
    return head + "\n\n" + "\n".join(out + ["End to end, one subprocess per run (load included; fastest of "
                                             f"{args.repeats}):", ""] + rows
                                        + ["", "Goals (issue 3), computed:", ""]
                                        + [f"- {v['line']}" for v in goal_verdicts(summary)]
                                        + [""] + _attribution_goals(r))


def goal_verdicts(summary: dict) -> list:
    """Issue 3's goals as it set them: wall time against plain passes, and peak RSS no more than
    1.25 x the larger model over the runtime's own overhead (``idle``: import torch + transformers)."""
    r, size = summary["results"], summary["model"]["size_mb"]
    idle = r.get("idle", {}).get("peak_rss_mb")
    out = []
    for mode, base, limit in (("activation", "forward2", 1.2), ("local", "forward1", 1.3)):
        if mode in r and base in r:
            out.append(goal_verdict(f"analyze --score {mode}: wall time / {base}", r[mode]["wall_s"] / r[base]["wall_s"],
                                    f"<= {limit}", unit="x", source="issue 3"))
    for mode in ("local", "activation"):
        if mode in r:
            over = (r[mode]["peak_rss_mb"] - idle) / size if idle else None
            out.append(goal_verdict(f"analyze --score {mode}: (peak RSS - bare runtime) / model size", over, "<= 1.25",
                                    unit="x", source="issue 3"))
    return out


def _mode_order(mode: str):
    name, _, at = mode.partition("@")
    return (MODES.index(name) if name in MODES else len(MODES), at)


def _attribution_goals(r: dict) -> list:
    """Issue 16's goals, computed: attribution's peak RSS vs local's, and its wall time vs the code before."""
    lines = []
    for tag in ("", "@before"):
        attr, local = r.get("attribution" + tag), r.get("local" + tag)
        if attr and local:
            ratio = attr["peak_rss_mb"] / local["peak_rss_mb"]
            verdict = "met" if ratio <= ATTRIBUTION_RSS_GOAL else "MISSED"
            lines.append(f"- attribution{tag} peak RSS / local{tag} peak RSS (worst runs): {attr['peak_rss_mb']:.0f} / "
                         f"{local['peak_rss_mb']:.0f} MB = {ratio:.2f}x; goal <= {ATTRIBUTION_RSS_GOAL}x: {verdict}")
    now, before = r.get("attribution"), r.get("attribution@before")
    variants = dict(ATTRIBUTION_VARIANTS, **{m: f"--gradient-batch-size {m[len('attribution-rows'):]}"
                                             for m in r if m.startswith("attribution-rows")})
    for variant, option in variants.items():
        run, local = r.get(variant), r.get("local")
        if run and local:
            ratio = run["peak_rss_mb"] / local["peak_rss_mb"]
            lines.append(f"- {variant} ({option}) peak RSS / local peak RSS (worst runs): {run['peak_rss_mb']:.0f} / "
                         f"{local['peak_rss_mb']:.0f} MB = {ratio:.2f}x; goal <= {ATTRIBUTION_RSS_GOAL}x: "
                         f"{'met' if ratio <= ATTRIBUTION_RSS_GOAL else 'MISSED'}")
    for label, run in [("attribution", now)] + [(v, r.get(v)) for v in variants]:
        if run and before:
            ratio = run["median_cpu_s"] / before["median_cpu_s"]
            lines.append(f"- {label} CPU time / before (medians): {run['median_cpu_s']:.1f} / "
                         f"{before['median_cpu_s']:.1f} s = {ratio:.2f}x; goal <= 1.0x (no worse): "
                         f"{'met' if ratio <= 1.0 else 'MISSED'}")
    if now and before:
        for what in ("wall_s", "median_wall_s"):
            ratio = now[what] / before[what]
            lines.append(f"- attribution wall time / before ({what.replace('_s', '').replace('_', ' ')}): "
                         f"{now[what]:.2f} / {before[what]:.2f} s = {ratio:.2f}x; goal <= 1.0x (no worse): "
                         f"{'met' if ratio <= 1.0 else 'MISSED'}")
        ratio = now["peak_rss_mb"] / before["peak_rss_mb"]
        lines.append(f"- attribution peak RSS / before: {ratio:.2f}x")
    return (["Goals (issue 16):", ""] + lines) if lines else []


if __name__ == "__main__":
    main()
