"""``make demo``: the whole user flow on the bundled model family, in a few minutes on CPU.

For each pair in ``demo/pairs.py`` it runs, as a user would, the real console
scripts: ``mergekit-transplant analyze`` (recipe into ``recipes/``),
``mergekit-yaml`` (the unmodified mergekit), ``mergekit-transplant eval`` on
the held-out split with retention tasks, and ``mergekit-transplant sweep``
against random-module and whole-model controls (one sweep per score on the
fully trained pairs). Then it prints a results table and rewrites
``docs/results.md`` and its plots from what this run measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.organs import run as run_organs  # noqa: E402
from demo.pairs import DEFAULT_SCORE, PAIRS, RETAIN, SCORES, SELECT, TASKS, TEST, Pair, analyze_args  # noqa: E402
from demo.unplug import demo_unplug  # noqa: E402

BIN = Path(sys.executable).parent
BUILD = Path("build/demo")
FIGURES = Path("docs/results")


#: torch threads in every command the demo runs; results.md states the figure used
THREADS = 1


def set_threads(threads: int) -> None:
    """Every child reads these at start: torch's intra-op pool (OpenMP/MKL) gets ``threads`` threads."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(list(args), check=True, cwd=REPO)


def tool(*args: str) -> None:
    run(str(BIN / "mergekit-transplant"), *args)


def sweep_args(pair: Pair, score: str, controls: bool, limit: int) -> list:
    out = BUILD / pair.name
    args = [
        "sweep", "--report", str(out / "report.json"), "--score", score,
        "--k", ",".join(map(str, pair.ks)), "--strength", ",".join(map(str, pair.strengths)),
        "--select-split", SELECT, "--report-split", TEST, "--include-path", TASKS,
        "--batch-size", "50", "--device", "cpu", "--limit", str(limit),
        "--recipe-out", str(out / f"best-{score}.yml"), "-o", str(out / f"sweep-{score}.json"),
    ]
    if controls:
        args += ["--random-controls", "3", "--plot", str(FIGURES / f"{pair.name}-sweep.png")]
    else:
        args += ["--random-controls", "0", "--no-whole-model"]
    return args


def demo_pair(pair: Pair, limit: int, all_scores: bool) -> None:
    out = BUILD / pair.name
    shutil.rmtree(REPO / out, ignore_errors=True)
    (REPO / out).mkdir(parents=True)
    print(f"\n=== {pair.name}: {pair.target} <- {pair.donor} ({pair.story})", flush=True)
    tool(*analyze_args(pair, str(out / "report.json"), str(FIGURES / f"{pair.name}-heatmap.png")))
    tool("check", pair.recipe)
    run(str(BIN / "mergekit-yaml"), pair.recipe, str(out / "merged"), "--quiet")
    tool(
        "eval", "--target", pair.target_path, "--donor", pair.donor_path, "--merged", str(out / "merged"),
        "--tasks", TEST, "--retain-tasks", ",".join(RETAIN), "--include-path", TASKS,
        "--batch-size", "50", "--device", "cpu", "--cache-dir", str(BUILD / "eval-cache"),
        "--output", str(out / "results.json"),
    )
    tool(*sweep_args(pair, DEFAULT_SCORE, controls=True, limit=limit))
    if all_scores:
        for score in SCORES[1:]:
            tool(*sweep_args(pair, score, controls=False, limit=limit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(p.name for p in PAIRS), help="comma-separated pair names")
    parser.add_argument("--limit", type=int, default=100, help="documents per split in sweeps")
    parser.add_argument("--no-score-comparison", action="store_true",
                        help="skip the per-score sweeps on the fully trained pairs")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads per command (default %(default)s: on 2 shared cores, more threads "
                             "made a sweep 9x slower; docs/performance.md)")
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (REPO / FIGURES).mkdir(parents=True, exist_ok=True)
    chosen = [p for p in PAIRS if p.name in args.pairs.split(",")]
    start = time.perf_counter()
    for pair in chosen:
        demo_pair(pair, args.limit, not args.no_score_comparison)
    run_organs(REPO / BUILD)  # trained organs vs LoRA vs full fine-tuning (demo/organs.py)
    demo_unplug(BUILD, FIGURES, tool)
    elapsed = time.perf_counter() - start

    from demo.results import write_results

    table = write_results(chosen, REPO / BUILD, REPO / "docs" / "results.md", REPO / FIGURES, elapsed)
    print("\n" + table)
    print(f"\ndemo finished in {elapsed / 60:.1f} min; wrote docs/results.md and recipes/")


if __name__ == "__main__":
    main()
