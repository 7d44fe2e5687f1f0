"""Score every demo model on every demo task with real lm-eval.

    python demo/evaluate.py                      # all models, all tasks
    python demo/evaluate.py --models base gen2 --json demo/build/scores.json

Prints a markdown table (rows: models, columns: tasks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
MODELS = ["base", "tuned", "tuned-local", "gen1", "gen2"]
TASKS = ["demo_skill_select", "demo_skill_test", "demo_retain_copy", "demo_retain_max", "demo_retain_color"]


def score(model_dir: Path, tasks=TASKS, batch_size: int = 16, limit=None) -> dict[str, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(DEMO_DIR / "tasks")),
        device="cpu",
        batch_size=batch_size,
        limit=limit,
    )
    out = {}
    for task in tasks:
        r = res["results"][task]
        key = "exact_match,none" if "exact_match,none" in r else "acc,none"
        out[task] = float(r[key])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--tasks", nargs="*", default=TASKS)
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    table = {}
    for m in args.models:
        t0 = time.time()
        table[m] = score(DEMO_DIR / "models" / m, args.tasks)
        print(f"{m}: {table[m]} ({time.time() - t0:.1f}s)", flush=True)
    head = "| model | " + " | ".join(args.tasks) + " |"
    print("\n" + head + "\n|" + "---|" * (len(args.tasks) + 1))
    for m, row in table.items():
        print(f"| {m} | " + " | ".join(f"{row[t]:.3f}" for t in args.tasks) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
