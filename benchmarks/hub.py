"""Bytes transferred from the Hub by a transplant, measured on a real HTTP server.

The models are served by ``mergekit_transplant.testing_hub.LocalHub`` on
127.0.0.1 (the real ``huggingface_hub`` client in child processes, pointed at
it through ``HF_ENDPOINT``), which counts every body byte it sends. A ~5%
transplant of a 4-shard donor is run four ways, each with an empty cache:

- ``merge``: ``mergekit-transplant merge`` (check, NaN guard, merge, card);
- ``mergekit-yaml``: plain ``mergekit-yaml`` with the plugin installed;
- ``mergekit-yaml, READ_ALL``: the same with ``MERGEKIT_TRANSPLANT_READ_ALL=1``,
  i.e. what mergekit downloads without the plugin's planning;
- ``organ extract``: the organ of the same recipe.

Goals (issue 14), each verdict computed from the measured bytes:
- a merge transfers at most the target + 1.1x the transplanted bytes + the headers;
- organ extract transfers at most 1.1x the transplanted bytes + the headers.
"Headers" are everything that is not tensor data: the safetensors headers of
both models, the donor's small files and the Hub API's JSON answers
(``LocalHub.transfer_goal``). Byte counts do not depend on the machine's load.

    python benchmarks/hub.py [--layers 8] [--hidden 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mergekit_transplant.testing import make_model, perturbed_copy  # noqa: E402
from mergekit_transplant.testing_hub import LocalHub, shard_model  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024


def pick_tensors(target: Path, share: float):
    """Linear weights, largest first, until about ``share`` of the target's bytes (spread over layers)."""
    from mergekit_transplant.checkpoint import read_index

    index = read_index(str(target))
    total = sum(t.nbytes for t in index.tensors.values())
    order = sorted((t for t in index.tensors.values() if t.name.endswith("proj.weight")),
                   key=lambda t: (-t.nbytes, t.name))
    chosen, size, layers = [], 0, set()
    for info in order:
        layer = info.name.split(".")[2]
        if layer in layers or size + info.nbytes > share * total * 1.02:
            continue
        chosen.append(info.name)
        layers.add(layer)
        size += info.nbytes
    return chosen, size, total


def recipe_text(target: str, donor: str, tensors) -> str:
    lines = ["merge_method: transplant", f"base_model: {target}", "models:", f"  - model: {donor}",
             "    parameters:", "      strength:"]
    for name in tensors:
        lines += [f"        - filter: {name}", "          value: 1.0"]
    return "\n".join(lines + ["        - value: 0", ""])


def run(hub: LocalHub, work: Path, name: str, argv, extra_env=None) -> dict:
    cache = work / f"cache-{name.replace(' ', '-').replace(',', '')}"
    hub.reset_log()
    env = {**os.environ, **hub.environment(cache / "hub"), "TQDM_DISABLE": "1", **(extra_env or {})}
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {"requests": len(hub.log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--share", type=float, default=0.05, help="share of the target's bytes to transplant")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        work = Path(tmp)
        target = make_model(work / "target", "llama", layers=args.layers, hidden=args.hidden,
                            intermediate=4 * args.hidden, heads=4, kv_heads=2, seed=0)
        tensors, transplanted, total = pick_tensors(target, args.share)
        donor = perturbed_copy(target, work / "donor", tensors, seed=1)
        sharded = shard_model(donor, work / "donor-4-shards", total // 4 + 1)
        (work / "recipe.yml").write_text(recipe_text("org/target", "org/donor", tensors))
        rows = []
        with LocalHub() as hub:
            hub.add_model("org/target", target)
            hub.add_model("org/donor", sharded)
            runs = [
                ("merge", [BIN / "mergekit-transplant", "merge", "recipe.yml", "out-merge"], None),
                ("mergekit-yaml", [BIN / "mergekit-yaml", "recipe.yml", "out-yaml"], None),
                ("mergekit-yaml, READ_ALL", [BIN / "mergekit-yaml", "recipe.yml", "out-all"],
                 {"MERGEKIT_TRANSPLANT_READ_ALL": "1"}),
                ("organ extract", [BIN / "mergekit-transplant", "organ", "extract", "recipe.yml", "-o", "organ"], None),
            ]
            for name, argv, env in runs:
                info = run(hub, work, name, argv, env)
                goal = hub.transfer_goal("org/target", "org/donor", transplanted)
                target_sent = hub.bytes_sent("/org/target/")
                donor_sent = hub.bytes_sent("/org/donor/")
                if name == "organ extract":  # no target weights needed
                    goal["budget"] -= goal["target"] - hub.repo_bytes("org/target", weights=False)
                rows.append({"run": name, **goal, "target_sent": target_sent, "donor_sent": donor_sent,
                             "requests": info["requests"], "met": goal["sent"] <= goal["budget"]})
        print(f"target {total / MiB:.1f} MiB ({args.layers} layers, hidden {args.hidden}); donor in 4 shards; "
              f"transplant {len(tensors)} tensors = {transplanted / MiB:.2f} MiB "
              f"({100 * transplanted / total:.1f}% of the target)")
        print(f"{'run':<26}{'sent MiB':>10}{'target MiB':>12}{'donor MiB':>11}{'headers KiB':>13}"
              f"{'budget MiB':>12}{'requests':>10}  goal")
        for r in rows:
            print(f"{r['run']:<26}{r['sent'] / MiB:>10.2f}{r['target_sent'] / MiB:>12.2f}{r['donor_sent'] / MiB:>11.2f}"
                  f"{r['headers'] / 1024:>13.1f}{r['budget'] / MiB:>12.2f}{r['requests']:>10}  "
                  + ("met" if r["met"] else "NOT met") + (" (baseline, no goal)" if "READ_ALL" in r["run"] else ""))
        for r in rows:
            if "READ_ALL" in r["run"]:
                continue
            bound = ("target + 1.1x transplanted + headers" if r["run"] != "organ extract"
                     else "1.1x transplanted + headers")
            print(f"goal {r['run']}: sent {r['sent']:,} B <= {bound} = {r['budget']:,} B: "
                  + ("MET" if r["met"] else "NOT MET"))
        if args.json:
            args.json.write_text(json.dumps({"transplanted": transplanted, "target_bytes": total,
                                             "tensors": tensors, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
