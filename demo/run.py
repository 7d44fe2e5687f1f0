"""``make demo``: the whole user flow on the bundled model family, in a few minutes on CPU.

For each pair in ``demo/pairs.py`` it runs, as a user would, the real console
scripts: ``mergekit-transplant analyze`` (recipe into ``recipes/``),
``mergekit-yaml`` (the unmodified mergekit), ``mergekit-transplant eval`` on
the held-out split with retention tasks, and ``mergekit-transplant sweep``
against random-module and whole-model controls (one sweep per score on the
fully trained pairs). Then it prints a results table and rewrites
``docs/results.md`` and its plots from what this run measured.

It prints one line per step (what ran, how long, what it wrote); each
command's own output goes to ``build/demo/logs/NN-step.log`` and is shown
only when the step fails. ``-v`` prints every command and its full output
instead, run with ``mergekit-transplant -v`` (lm-eval's inner progress bars
and log lines included).
"""

from __future__ import annotations

import argparse
import os
import re
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
LOGS = BUILD / "logs"
#: ``-v``: every command printed and run verbosely, its output on the terminal; steps counted for the log names
OUTPUT = {"verbose": False, "step": 0, "section": ""}


#: torch threads in every command the demo runs; results.md states the figure used
THREADS = 1


def set_threads(threads: int) -> None:
    """Every child reads these at start: torch's intra-op pool (OpenMP/MKL) gets ``threads`` threads."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def _step_name(args) -> str:
    """``analyze``, ``unplug sweep``, ``mergekit-yaml``: the program's words before its first option."""
    words = [Path(args[0]).name]
    for arg in args[1:]:
        if arg.startswith("-") or "/" in arg or "." in arg:
            break
        words.append(arg)
    return " ".join(w for w in words if w != "mergekit-transplant")


def _written(args) -> str:
    """The step's main output, as the command names it (-o/--output, else mergekit-yaml's OUT)."""
    for flag in ("-o", "--output"):
        if flag in args[:-1]:
            return args[args.index(flag) + 1]
    return args[2] if Path(args[0]).name == "mergekit-yaml" else ""


def run(*args: str) -> None:
    """One step: one line (name, seconds, output); its output in build/demo/logs, shown if it fails."""
    OUTPUT["step"] += 1
    name = _step_name(args)
    if OUTPUT["verbose"]:
        print("$", " ".join(args), flush=True)
        subprocess.run(list(args), check=True, cwd=REPO)
        return
    section = f"{OUTPUT['section']}: " if OUTPUT["section"] else ""
    log = REPO / LOGS / f"{OUTPUT['step']:02d}-{re.sub(r'[^a-z0-9]+', '-', (section + name).lower()).strip('-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.run(list(args), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"demo: step {OUTPUT['step']} ({section}{name}) failed with exit code {proc.returncode}; "
                 f"full output in {log.relative_to(REPO)}")
    written = _written(args)
    label = f"{section}{name}"
    print(f"[{OUTPUT['step']:2d}] {label:<26} {seconds:6.1f} s" + (f"  -> {written}" if written else ""), flush=True)


def tool(*args: str) -> None:
    run(str(BIN / "mergekit-transplant"), *(("-v",) if OUTPUT["verbose"] else ()), *args)


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
    OUTPUT["section"] = pair.name
    tool(*analyze_args(pair, str(out / "report.json"), str(FIGURES / f"{pair.name}-heatmap.png")))
    tool("check", pair.recipe)
    run(str(BIN / "mergekit-yaml"), pair.recipe, str(out / "merged"), *(() if OUTPUT["verbose"] else ("--quiet",)))
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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every command and its whole output (lm-eval's progress bars included) "
                             "instead of one line per step")
    args = parser.parse_args()
    OUTPUT["verbose"] = args.verbose
    if not args.verbose:  # library deprecation notices (transformers' FutureWarning) are not the demo's output
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the speed measurement loads models in this process
    set_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (REPO / FIGURES).mkdir(parents=True, exist_ok=True)
    chosen = [p for p in PAIRS if p.name in args.pairs.split(",")]
    start = time.perf_counter()
    for pair in chosen:
        demo_pair(pair, args.limit, not args.no_score_comparison)
    OUTPUT["section"] = ""
    run_organs(REPO / BUILD)  # trained organs vs LoRA vs full fine-tuning (demo/organs.py)
    OUTPUT["section"] = "experts"
    demo_unplug(BUILD, FIGURES, tool)
    elapsed = time.perf_counter() - start

    from demo.results import write_results

    table = write_results(chosen, REPO / BUILD, REPO / "docs" / "results.md", REPO / FIGURES, elapsed)
    print("\n" + table)
    print(f"\ndemo finished in {elapsed / 60:.1f} min; wrote docs/results.md and recipes/")


if __name__ == "__main__":
    main()
