#!/usr/bin/env bash
# GPU check: the transplant merge and the analysis on CUDA give the CPU's answers.
#
# Self-contained: builds a small Llama pair whose donor differs from the target
# in three known tensors, a workload, then
#   1. runs `mergekit-transplant analyze` with --device cpu and with --device cuda
#      and requires both to select exactly the three changed tensors;
#   2. merges a recipe with strengths 1, 1 and 0.5 (0 everywhere else) on the CPU
#      and with `mergekit-yaml --cuda`, `mergekit-yaml --cuda --read-to-gpu` and
#      `mergekit-transplant merge --cuda`, and requires every tensor at strength
#      0 or 1 to be bit-identical to the CPU output (the 0.5 tensor is reported:
#      lerp on another device may differ in the last bit);
#   3. prints the wall times;
#   4. runs benchmarks/unplug.py on the device (full model vs its task experts at
#      keep 0.35 and 0.5: prefill tokens/s at batch 1 and 16, decode tokens/s,
#      interleaved medians) and prints its table; skipped by --merge-only or
#      --no-unplug. It reports, it does not fail: the 1.4x goal is a CPU goal.
# Exits 0 when everything matches, 1 on any mismatch, 2 when it cannot run.
#
#   benchmarks/gpu_check.sh                 # on a machine with a GPU
#   benchmarks/gpu_check.sh --device cpu    # dry run: the "GPU" side runs on the CPU
#
# Options: --device cuda|cpu (default cuda), --work DIR (default: a temp folder,
# removed afterwards unless --keep), --keep, --python PY (default: .venv/bin/python
# of this repository if present, else python3), --dtype float32|bfloat16|float16,
# --hidden N, --layers N, --merge-only (skip the analysis), --inject-mismatch
# (flip one bit of one device output before comparing: checks that the check fails),
# --no-unplug (skip step 4).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DEVICE=cuda
WORK=""
KEEP=0
PY=""
DTYPE=float32
HIDDEN=256
LAYERS=4
MERGE_ONLY=0
INJECT=0
UNPLUG=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --python) PY="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --hidden) HIDDEN="$2"; shift 2 ;;
    --layers) LAYERS="$2"; shift 2 ;;
    --merge-only) MERGE_ONLY=1; shift ;;
    --inject-mismatch) INJECT=1; shift ;;
    --no-unplug) UNPLUG=0; shift ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu" >&2; exit 2 ;; esac

if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
if [[ -z "$WORK" ]]; then
  WORK="$(mktemp -d -t mkt-gpu-check.XXXXXX)"
  [[ $KEEP == 1 ]] || trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

"$PY" - "$WORK" "$DEVICE" "$DTYPE" "$HIDDEN" "$LAYERS" "$MERGE_ONLY" "$INJECT" <<'PYEOF'
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

work, device, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
hidden, layers, merge_only, inject = (int(x) for x in sys.argv[4:8])
BIN = Path(sys.executable).parent


def tool(name):
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run(label, cmd):
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"FAIL {label}: exit {proc.returncode}\n$ {' '.join(map(str, cmd))}\n{proc.stderr[-4000:]}")
        sys.exit(1)
    print(f"  {label}: {wall:.1f}s")
    return wall


import torch  # noqa: E402

if device == "cuda" and not torch.cuda.is_available():
    print("gpu_check: --device cuda but torch sees no GPU (use --device cpu for a dry run)")
    sys.exit(2)
gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run: the device side runs on the CPU)"
print(f"gpu_check: device {device} ({gpu}); torch {torch.__version__}; dtype {dtype}; work {work}")

# ------------------------------------------------------------------ the pair and the workload
from mergekit_transplant.testing import WORDS, make_model, perturbed_copy  # noqa: E402

target, donor = work / "target", work / "donor"
changed = [
    "model.layers.1.mlp.down_proj.weight",
    f"model.layers.{layers - 2}.self_attn.o_proj.weight",
    f"model.layers.{layers - 1}.mlp.up_proj.weight",
]
if not (target / "model.safetensors").exists():
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(donor, ignore_errors=True)
    make_model(target, "llama", seed=0, dtype=dtype, hidden=hidden, layers=layers, intermediate=4 * hidden,
               heads=4, kv_heads=2, vocab_size=96)
    perturbed_copy(target, donor, changed, scale=0.5, seed=1)
workload = work / "workload.jsonl"
with workload.open("w") as fh:
    for i in range(24):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)]
        fh.write(json.dumps({"text": " ".join(words[:8]), "continuation": " " + " ".join(words[8:])}) + "\n")

failures = []
times = {}

# ------------------------------------------------------------------ 1. analysis, CPU vs device
print("analysis (mergekit-transplant analyze --top-k 3):" if not merge_only else "analysis: skipped (--merge-only)")
selected = {}
for key, dev in () if merge_only else (("cpu", "cpu"), ("device", device)):
    recipe = work / f"analysis-{key}.yml"
    times[f"analyze --device {dev} ({key})"] = run(
        f"analyze --device {dev} ({key})",
        [tool("mergekit-transplant"), "analyze", "--target", target, "--donor", donor, "--workload", workload,
         "--top-k", "3", "--also", "local", "--also", "activation", "--quiet", "-o", recipe, "--report", work / f"analysis-{key}.json", "--device", dev],
    )
    report = json.loads((work / f"analysis-{key}.json").read_text())
    selected[key] = sorted(s["tensor"] for s in report["selection"])
for key, names in selected.items():
    if names != sorted(changed):
        failures.append(f"analysis on {key} selected {names}, expected the changed tensors {sorted(changed)}")
if not merge_only and selected.get("cpu") != selected.get("device"):
    failures.append(f"analysis selections differ: cpu {selected.get('cpu')} vs device {selected.get('device')}")

# ------------------------------------------------------------------ 2. merges, CPU vs device
from mergekit_transplant.recipe import Selection, render_recipe  # noqa: E402

strengths = {changed[0]: 1.0, changed[1]: 1.0, changed[2]: 0.5}
recipe = work / "merge.yml"
recipe.write_text(render_recipe(str(target), [Selection(t, str(donor), s) for t, s in strengths.items()]))
cuda_flags = ["--cuda"] if device == "cuda" else []
yaml_bin, plugin_bin = tool("mergekit-yaml"), tool("mergekit-transplant")
read_to_gpu = ["--read-to-gpu"] if device == "cuda" else []
merges = {  # label: (output folder, command)
    "cpu: mergekit-yaml": (work / "out-cpu", [yaml_bin, recipe, work / "out-cpu"]),
    "device: mergekit-yaml --cuda": (work / "out-cuda", [yaml_bin, recipe, work / "out-cuda", *cuda_flags]),
    "device: mergekit-yaml --cuda --read-to-gpu": (
        work / "out-cuda-read", [yaml_bin, recipe, work / "out-cuda-read", *cuda_flags, *read_to_gpu]),
    "device: mergekit-transplant merge --cuda": (
        work / "out-plugin", [plugin_bin, "merge", recipe, work / "out-plugin", *cuda_flags]),
}
print("merges:")
for label, (out, cmd) in merges.items():
    shutil.rmtree(out, ignore_errors=True)
    times[label] = run(label, cmd)

from safetensors.torch import load_file  # noqa: E402


def state(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


reference = state(merges["cpu: mergekit-yaml"][0])
for label, (out, _cmd) in list(merges.items())[1:]:
    other = state(out)
    if inject:  # the check must catch a single flipped bit in a tensor at strength 0
        name = next(n for n in sorted(other) if n not in strengths and other[n].is_floating_point())
        other[name] = other[name].clone()
        other[name].view(torch.uint8).view(-1)[0] ^= 1
        print(f"  {label}: injected a one-bit mismatch into {name}")
        inject = 0
    if sorted(other) != sorted(reference):
        failures.append(f"{label}: tensor names differ from the CPU output")
        continue
    exact = 0
    for name, ref in reference.items():
        got = other[name]
        s = strengths.get(name, 0.0)
        if s in (0.0, 1.0):
            if got.dtype != ref.dtype or not torch.equal(got.view(torch.uint8), ref.view(torch.uint8)):
                failures.append(f"{label}: {name} (strength {s:g}) is not bit-identical to the CPU output")
            else:
                exact += 1
        else:
            diff = (got.float() - ref.float()).abs().max().item()
            print(f"  {label}: {name} at strength {s:g}: max |device - cpu| = {diff:.3g}")
            if not torch.allclose(got.float(), ref.float(), rtol=1e-5, atol=1e-6):
                failures.append(f"{label}: {name} (strength {s:g}) differs from the CPU output by {diff:.3g}")
    print(f"  {label}: {exact} tensors at strength 0 or 1 bit-identical to the CPU output")

# ------------------------------------------------------------------ 3. report
print("times (s):")
for label, wall in times.items():
    print(f"  {wall:7.1f}  {label}")
if failures:
    print("MISMATCH:")
    for f in failures:
        print("  -", f)
    sys.exit(1)
print("OK: device outputs match the CPU run")
PYEOF

# ------------------------------------------------------------------ 4. task experts on the device
if [[ $UNPLUG == 1 && $MERGE_ONLY == 0 ]]; then
  echo "task experts (benchmarks/unplug.py --device $DEVICE):"
  "$PY" "$HERE/unplug.py" --device "$DEVICE" --work "$WORK/unplug" --json "$WORK/unplug.json"
fi
