"""Benchmark peak memory of ``check``, ``card`` and ``organ extract/verify`` on a ~1 GB model.

These commands must never load whole models: ``check`` and ``card`` read
configs and safetensors headers, ``organ extract`` streams the transplanted
tensors' bytes in 16 MiB chunks, ``organ verify`` hashes them the same way.
This builds (once, cached under ``--cache``) a ~1 GB fp32 Llama
(``testing.make_model``: hidden 1024, 20 layers, MLP 2816, random weights) and
a donor that differs in 8 tensors, merges it once so that ``card`` has an
output folder, then runs each command as its own process under GNU ``time``
(``benchmarks/common.run_measured``) and reports the kernel's peak RSS.

For scale it also measures ``idle`` (importing torch, transformers and
mergekit: every command pays this), ``load`` (transformers loading the
target with every weight touched: what loading one model costs) and
``merge`` (mergekit's merge, which does read whole tensors; not a bounded
command).

    python benchmarks/memory.py [--cache /tmp/mergekit-transplant-bench/memory] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MiB, machine, mib, run_measured, summarize, venv_bin, write_json  # noqa: E402

SHAPE = dict(hidden=1024, layers=20, intermediate=2816, heads=8, kv_heads=4, vocab_size=96)
CHANGED = [f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 6, 11, 16)] + [
    f"model.layers.{i}.self_attn.q_proj.weight" for i in (3, 8, 13, 18)]
BOUNDED = ("check", "card", "organ_extract", "organ_verify")


def build(cache: Path) -> dict:
    import torch

    from mergekit_transplant.recipe import Selection, render_recipe
    from mergekit_transplant.testing import make_model, perturbed_copy

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    target, donor = cache / "target", cache / "donor"
    if not (target / "model.safetensors").exists():
        print(f"building the ~1 GB target in {target} (once)", flush=True)
        make_model(target, "llama", seed=0, **SHAPE)
    if not (donor / "model.safetensors").exists():
        print(f"building the donor in {donor} (once)", flush=True)
        perturbed_copy(target, donor, CHANGED, seed=1)
    recipe = cache / "recipe.yml"
    recipe.write_text(render_recipe(str(target), [Selection(t, str(donor), 1.0) for t in CHANGED],
                                    dtype="float32", header=["benchmarks/memory.py"]))
    merged = cache / "merged"
    if not (merged / "model.safetensors").exists() and not (merged / "model.safetensors.index.json").exists():
        print(f"merging once into {merged} (for card)", flush=True)
        m = run_measured([venv_bin("mergekit-transplant"), "merge", "--overwrite", str(recipe), str(merged)],
                         env={"TQDM_DISABLE": "1"})
        assert m.returncode == 0, "merge failed"
    return {"target": target, "donor": donor, "recipe": recipe, "merged": merged, "organ": cache / "organ"}


def commands(paths: dict) -> dict:
    cli = venv_bin("mergekit-transplant")
    py = sys.executable
    return {
        "idle": [py, "-c", "import torch, transformers, mergekit.merge, mergekit.config"],
        # what loading one model costs: transformers, every weight touched (safetensors maps lazily)
        "load": [py, "-c", "import sys, torch; from transformers import AutoModelForCausalLM; "
                 "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
                 "print(sum(float(p.double().sum()) for p in m.parameters()))", str(paths["target"])],
        "check": [cli, "check", str(paths["recipe"])],
        "card": [cli, "card", str(paths["merged"]), "--recipe", str(paths["recipe"])],
        "organ_extract": [cli, "organ", "extract", "--overwrite", str(paths["recipe"]), "-o", str(paths["organ"])],
        "organ_verify": [cli, "organ", "verify", str(paths["organ"]), "--target", str(paths["target"])],
        "merge": [cli, "merge", "--overwrite", str(paths["recipe"]), str(paths["merged"])],
    }


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mergekit-transplant-bench/memory"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="Measure only these (default: all).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    paths = build(args.cache)
    model_bytes = size_of(paths["target"])
    results = {}
    for name, cmd in commands(paths).items():
        if args.only and name not in args.only:
            continue
        runs = []
        for _ in range(args.repeats):
            m = run_measured(cmd, env={"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
            if m.returncode != 0:
                raise SystemExit(f"{name} failed (exit {m.returncode}): {' '.join(cmd)}")
            runs.append(m)
        results[name] = summarize(runs)
        print(f"{name:14s} peak RSS {mib(results[name]['peak_rss_bytes']):>9s} MiB   wall {results[name]['wall_s']:.1f} s",
              flush=True)

    organ_bytes = size_of(paths["organ"]) if paths["organ"].exists() else 0
    idle = results.get("idle", {}).get("peak_rss_bytes", 0)
    print()
    print(f"model: {model_bytes / MiB:,.0f} MiB of fp32 safetensors ({model_bytes / 4 / 1e6:,.0f}M parameters); "
          f"organ: {organ_bytes / MiB:,.1f} MiB")
    print("| command | peak RSS (MiB) | over idle (MiB) | share of the model size | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        over = r["peak_rss_bytes"] - idle
        print(f"| {name} | {mib(r['peak_rss_bytes'])} | {mib(over) if name != 'idle' else ''} | "
              f"{100 * r['peak_rss_bytes'] / model_bytes:.0f}% | {r['wall_s']:.1f} |")
    if args.json:
        write_json(args.json, {"machine": machine(), "model_bytes": model_bytes, "organ_bytes": organ_bytes,
                               "shape": SHAPE, "changed": CHANGED, "results": results})


if __name__ == "__main__":
    main()
