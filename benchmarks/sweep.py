"""Benchmark ``sweep`` against the naive loop (a merge to disk plus a fresh lm-eval per point).

The same sweep is run two ways, each as the user would run it, as subprocesses
timed by wall clock:

- in memory: ``mergekit-transplant sweep --report report.json ...`` (load the
  target once; per point: transplant in place, lm-eval on the live model,
  restore);
- naive: per point, ``mergekit-yaml recipe.yml out/`` then
  ``lm-eval run --model hf --model_args pretrained=out/ ...`` on the same tasks.

The naive loop is timed on ``--naive-points`` of the sweep's points (analysis
points, spread over K). One untimed naive point runs before anything is
timed, to warm the page cache for both ways; its cost for the whole sweep is that mean per-point
time × the number of points the sweep scores (references included; every
point of the naive loop costs the same merge + load + evaluate whatever it
holds). Goal: in-memory ≤ 0.35 × naive.

The pair: the demo family (``demo/models/base`` + ``demo/models/tuned-local``,
or ``--demo-donor tuned``, with
the ``demo_skill_select`` / ``demo_skill_test`` tasks in ``demo/tasks``) when
it exists, else a tiny Llama pair built here (donor = target + noise in 4
tensors) with two local perplexity tasks. The ranking comes from
``mergekit-transplant analyze`` (its ``--report``).

    python benchmarks/sweep.py [--k 1,2,4,8] [--strength 0.5,1.0] [--random-controls 2]
                               [--naive-points 3] [--json out.json] [--force-local]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import goal_verdict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = REPO / "demo"
CHANGED = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.v_proj.weight",
           "model.layers.2.mlp.up_proj.weight", "model.layers.3.self_attn.o_proj.weight"]


def run(cmd, env=None) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return elapsed


def demo_pair(donor: str):
    base, tuned, tasks = DEMO / "models" / "base", DEMO / "models" / donor, DEMO / "tasks"
    if not ((base / "config.json").exists() and (tuned / "config.json").exists()):
        return None
    yamls = " ".join(p.read_text() for p in tasks.glob("**/*.yaml"))
    if "demo_skill_select" not in yamls or "demo_skill_test" not in yamls:
        return None
    return {"name": f"demo base + {donor}", "target": base, "donor": tuned, "tasks": tasks,
            "select": "demo_skill_select", "report": "demo_skill_test",
            "workload": ["--lm-eval-task", "demo_skill_select", "--include-path", str(tasks)]}


def local_pair(root: Path, docs: int):
    from mergekit_transplant.testing import WORDS, make_model, perturbed_copy, write_task

    target, donor, tasks = root / "target", root / "donor", root / "tasks"
    make_model(target, "llama", hidden=256, layers=4, intermediate=768, heads=8, kv_heads=4, seed=0)
    perturbed_copy(target, donor, CHANGED, scale=1.0, seed=1)
    rnd = random.Random(0)
    for name in ("bench_select", "bench_test"):
        write_task(tasks, name, [{"text": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(12, 24)))}
                                 for _ in range(docs)])
    work = root / "workload.jsonl"
    work.write_text("".join(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(16))}) + "\n"
                            for _ in range(16)))
    return {"name": "local tiny Llama (hidden 256, 4 layers)", "target": target, "donor": donor, "tasks": tasks,
            "select": "bench_select", "report": "bench_test", "workload": ["--workload", str(work)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="1,2,4,8")
    ap.add_argument("--strength", default="0.5,1.0")
    ap.add_argument("--random-controls", type=int, default=2)
    ap.add_argument("--naive-points", type=int, default=3)
    ap.add_argument("--docs", type=int, default=40, help="documents per local task")
    ap.add_argument("--batch-size", default="8", help="lm-eval batch size, the same for both ways")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every subprocess")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="do not run one untimed naive point before the timed ones")
    ap.add_argument("--force-local", action="store_true", help="use the local tiny pair even if the demo exists")
    ap.add_argument("--demo-donor", default=None,
                    help="demo donor model (default tuned-local, the pair built for transplanting, else tuned)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        donor = args.demo_donor or ("tuned-local" if (DEMO / "models" / "tuned-local").exists() else "tuned")
        pair = None if args.force_local else demo_pair(donor)
        pair = pair or local_pair(root, args.docs)
        from mergekit_transplant.checkpoint import read_index

        params = read_index(str(pair["target"])).num_parameters
        print(f"pair: {pair['name']} ({params / 1e6:.1f}M parameters)", file=sys.stderr)

        report = root / "report.json"
        analyze_s = run([BIN / "mergekit-transplant", "analyze", "--target", pair["target"], "--donor",
                         pair["donor"], *pair["workload"], "--report-out", report, "-o", root / "analysis.yml",
                         "--select", "top", "--quiet"], env)
        from mergekit_transplant.analysis.report import AnalysisReport
        from mergekit_transplant.sweep.result import SweepResult

        analysis = AnalysisReport.load(report)
        score = analysis.score
        order = analysis.ranking[score]

        from mergekit_transplant.recipe import Selection, render_recipe

        def naive_point(tag: str, k: int):
            """Per point of the naive loop: merge to disk with mergekit-yaml, then a fresh lm-eval."""
            recipe, out = root / f"naive-{tag}.yml", root / f"naive-{tag}"
            recipe.write_text(render_recipe(str(pair["target"]), [Selection(t, str(pair["donor"]), 1.0)
                                                                  for t in order[:k]]))
            merge_s = run([BIN / "mergekit-yaml", recipe, out], env)
            eval_s = run([BIN / "lm-eval", "run", "--model", "hf", "--model_args", f"pretrained={out}",
                          "--tasks", pair["select"], pair["report"], "--include_path", pair["tasks"],
                          "--batch_size", args.batch_size, "--device", "cpu"], env)
            shutil.rmtree(out)
            return {"k": k, "merge_s": round(merge_s, 2), "eval_s": round(eval_s, 2)}

        ks = [int(k) for k in args.k.split(",")]
        if args.warmup:
            # one untimed naive point first: warms the page cache (lm-eval's ~15k task YAMLs, the
            # packages) for both ways, so neither is timed on its very first run
            naive_point("warmup", ks[0])

        sweep_json = root / "sweep.json"
        sweep_s = run([BIN / "mergekit-transplant", "sweep", "--report", report, "--k", args.k,
                       "--strength", args.strength, "--select-split", pair["select"], "--report-split",
                       pair["report"], "--include-path", pair["tasks"], "--random-controls",
                       str(args.random_controls), "--batch-size", args.batch_size, "--output", sweep_json], env)
        swept = SweepResult.load(sweep_json)
        n_points = swept.timing["points"]
        print(f"sweep: {n_points} points in {sweep_s:.1f} s", file=sys.stderr)

        picks = [ks[round(i * (len(ks) - 1) / max(1, args.naive_points - 1))] for i in range(args.naive_points)]
        naive = []
        for i, k in enumerate(picks):
            naive.append(naive_point(str(i), k))
            print(f"naive point K={k}: merge {naive[-1]['merge_s']} s + lm-eval {naive[-1]['eval_s']} s",
                  file=sys.stderr)
        per_point = statistics.fmean(p["merge_s"] + p["eval_s"] for p in naive)
        naive_total = per_point * n_points
        result = {
            "pair": pair["name"], "parameters": params, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "threads": args.threads, "ks": args.k, "strengths": args.strength,
            "random_controls": args.random_controls, "points": n_points,
            "evaluations": swept.timing["evaluations"], "analyze_s": round(analyze_s, 2),
            "sweep_wall_s": round(sweep_s, 2), "sweep_timing": swept.timing,
            "naive_points": naive, "naive_warmup": args.warmup, "naive_per_point_s": round(per_point, 2),
            "naive_total_estimate_s": round(naive_total, 1), "ratio": round(sweep_s / naive_total, 4),
            "goal_ratio": 0.35,
        }
        result["goal"] = goal_verdict("sweep cost vs the naive merge + lm-eval loop", result["ratio"], "<= 0.35",
                                      unit="x", source="issue 4")
        result["meets_goal"] = result["goal"]["met"]
        print(json.dumps(result, indent=2))
        print(result["goal"]["line"])
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
