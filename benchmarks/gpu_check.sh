#!/usr/bin/env bash
# GPU check: the transplant merge and the analysis on CUDA give the CPU's answers.
#
# Self-contained: builds a small Llama pair whose donor differs from the target
# in three known tensors, a workload, then
#   1. runs `mergekit-transplant analyze` with --device cpu and with --device cuda
#      and requires both to select exactly the three changed tensors;
#   1b. runs `analyze --score gain` and `analyze --select greedy` on both devices and
#      requires the same predicted gains (within 1e-3 relative) and the same greedy
#      selection with the same measured gains;
#   2. merges a recipe with strengths 1, 1 and 0.5 (0 everywhere else) on the CPU
#      and with `mergekit-yaml --cuda`, `mergekit-yaml --cuda --read-to-gpu` and
#      `mergekit-transplant merge --cuda`, and requires every tensor at strength
#      0 or 1 to be bit-identical to the CPU output (the 0.5 tensor is reported:
#      lerp on another device may differ in the last bit);
#   3. trains a 3-step organ (`mergekit-transplant organ train`) on the CPU and
#      on the device, with the same seed, and requires the first step's loss to
#      agree, the device organ to pass `organ verify`, and `mergekit-yaml` to
#      rebuild the adapted model from it (bf16 mixed precision is tried too
#      when the GPU supports it);
#   4. prints the wall times;
#   5. for each score (attribution in its three backward modes: micro-batches (the default),
#      --recompute and --gradient-batch-size 8 (whole batches); gain; local; activation), runs
#      `analyze` on a larger pair (hidden 1024, 8 layers, vocab 32000, batch 8 x ~256 tokens),
#      timed, in a fresh process and
#      compares the memory plan's estimate with the measured peak: torch.cuda.max_memory_allocated
#      on a GPU (the plan's items: what the run adds to the device), the process's peak RSS in the
#      dry run (the plan's peak, runtime included). Reported with the ratio; a ratio outside
#      [0.75, 1.25] is flagged "PLAN OFF" but does not fail the check.
#   6. runs benchmarks/unplug.py on the device (full model vs its task experts at
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
# --hidden N, --layers N, --merge-only (skip the analysis, the plan check and the task
# experts), --plan-only (only step 5), --inject-mismatch (flip one bit of one device output
# before comparing: checks that the check fails), --no-unplug (skip step 6).
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
PLAN_ONLY=0
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
    --plan-only) PLAN_ONLY=1; shift ;;
    --inject-mismatch) INJECT=1; shift ;;
    --no-unplug) UNPLUG=0; shift ;;
    -h|--help) sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

RC=0
if [[ $PLAN_ONLY == 0 ]]; then
"$PY" - "$WORK" "$DEVICE" "$DTYPE" "$HIDDEN" "$LAYERS" "$MERGE_ONLY" "$INJECT" <<'PYEOF' || RC=$?
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
         "--top-k", "3", "--also", "local", "--also", "activation", "--quiet", "-o", recipe, "--report-out", work / f"analysis-{key}.json", "--device", dev],
    )
    report = json.loads((work / f"analysis-{key}.json").read_text())
    selected[key] = sorted(s["tensor"] for s in report["selection"])
for key, names in selected.items():
    if names != sorted(changed):
        failures.append(f"analysis on {key} selected {names}, expected the changed tensors {sorted(changed)}")
if not merge_only and selected.get("cpu") != selected.get("device"):
    failures.append(f"analysis selections differ: cpu {selected.get('cpu')} vs device {selected.get('device')}")

# ------------------------------------------------ 1b. gain and greedy selection, CPU vs device
print("gain and greedy (analyze --score gain; --select greedy):" if not merge_only else "gain/greedy: skipped")
gains, greedy = {}, {}
for key, dev in () if merge_only else (("cpu", "cpu"), ("device", device)):
    for kind, extra in (("gain", ["--score", "gain"]), ("greedy", ["--score", "local", "--select", "greedy"])):
        out = work / f"{kind}-{key}.json"
        times[f"analyze {kind} --device {dev} ({key})"] = run(
            f"analyze {kind} --device {dev} ({key})",
            [tool("mergekit-transplant"), "analyze", "--target", target, "--donor", donor, "--workload", workload,
             "--top-k", "3", *extra, "--quiet", "-o", work / f"{kind}-{key}.yml", "--report-out", out, "--device", dev],
        )
        report = json.loads(out.read_text())
        if kind == "gain":
            gains[key] = {c["tensor"]: c["scores"]["gain"] for c in report["candidates"]}
        else:
            greedy[key] = (report["selected"]["units"], [r["gain"] for r in report["greedy"]["rounds"]])
if not merge_only:
    for name, value in gains["cpu"].items():
        other = gains["device"][name]
        if abs(other - value) > 1e-3 * abs(value) + 1e-4:
            failures.append(f"gain of {name}: cpu {value} vs device {other}")
    if greedy["cpu"][0] != greedy["device"][0]:
        failures.append(f"greedy selections differ: cpu {greedy['cpu'][0]} vs device {greedy['device'][0]}")
    elif any(abs(a - b) > 1e-3 * abs(a) + 1e-4 for a, b in zip(greedy["cpu"][1], greedy["device"][1])):
        failures.append(f"greedy measured gains differ: cpu {greedy['cpu'][1]} vs device {greedy['device'][1]}")

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

# ------------------------------------------------------------------ 3. organ train, CPU vs device
print("organ train (3 steps, layers auto):")
corpus = work / "organ-corpus.txt"
corpus.write_text("\n".join(" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(40)) for i in range(64)) + "\n")
organ_runs = [("cpu", "cpu", "no"), ("device", device, "no")]
if device == "cuda" and torch.cuda.is_bf16_supported():
    organ_runs.append(("device-bf16", device, "bf16"))
organs = {}
for key, dev, mp in organ_runs:
    out = work / f"organ-{key}"
    shutil.rmtree(out, ignore_errors=True)
    times[f"organ train --device {dev} --mixed-precision {mp} ({key})"] = run(
        f"organ train --device {dev} --mixed-precision {mp} ({key})",
        [tool("mergekit-transplant"), "organ", "train", "--model", target, "--corpus", corpus, "-o", out,
         "--steps", "3", "--batch-size", "4", "--max-length", "64", "--lr", "1e-3", "--seed", "0",
         "--device", dev, "--mixed-precision", mp, "--quiet"])
    organs[key] = json.loads((out / "organ.json").read_text())["training"]
first = {k: t["loss_curve"][0][1] for k, t in organs.items()}
print(f"  first-step loss: {first}")
if abs(first["device"] - first["cpu"]) > 1e-3 * max(1.0, abs(first["cpu"])):
    failures.append(f"organ train: first-step loss on the device {first['device']} differs from the CPU's {first['cpu']}")
run("organ verify (device organ)", [tool("mergekit-transplant"), "organ", "verify", work / "organ-device"])
shutil.rmtree(work / "organ-merged", ignore_errors=True)
run("mergekit-yaml organ-device/recipe.yml", [yaml_bin, work / "organ-device" / "recipe.yml", work / "organ-merged"])
merged, base, organ = state(work / "organ-merged"), state(target), state(work / "organ-device")
for name in base:
    if not torch.equal(merged[name], organ.get(name, base[name])):
        failures.append(f"organ merge: {name} is neither the organ's nor the base model's tensor")
        break

# ------------------------------------------------------------------ 4. report
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
fi

# ---------------------------------------------------------------------- 5. memory plan vs measured peak
if [[ $MERGE_ONLY == 0 ]]; then
"$PY" - "$WORK" "$DEVICE" <<'PYEOF' || RC=$?
import json
import os
import subprocess
import sys
from pathlib import Path

work, device = Path(sys.argv[1]), sys.argv[2]
dtype = "bfloat16" if device == "cuda" else "float32"
from mergekit_transplant.testing import WORDS, make_model, perturbed_copy  # noqa: E402

target, donor = work / "plan-target", work / "plan-donor"
if not (target / "model.safetensors").exists():
    make_model(target, "llama", seed=0, dtype=dtype, hidden=1024, layers=8, intermediate=4096, heads=16,
               kv_heads=4, vocab_size=32000, max_positions=1024)
    perturbed_copy(target, donor, ["model.layers.2.mlp.down_proj.weight", "model.layers.5.self_attn.o_proj.weight"])
workload = work / "plan-workload.jsonl"
with workload.open("w") as fh:
    for i in range(16):
        words = [WORDS[(i * 5 + j * 7) % len(WORDS)] for j in range(200 + 4 * i)]
        fh.write(json.dumps({"text": " ".join(words), "continuation": " " + " ".join(words[:16])}) + "\n")

MEASURE = """
import json, sys, time, torch
from mergekit_transplant.analysis import analyze, load_workload
target, donor, work, score, device, dtype, extra = sys.argv[1:8]
if device == "cuda":
    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
r = analyze(target, donor, load_workload(work), score=score, select="top", top_k=2, batch_size=8, device=device,
            dtype=dtype, progress=False, **json.loads(extra))
seconds = time.perf_counter() - start
if device == "cuda":
    measured, planned = torch.cuda.max_memory_allocated(), r.report["plan"]["added_bytes"]
else:
    measured = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
    planned = r.report["timing"]["plan_peak_mb"] * 2**20
print(json.dumps({"planned": planned, "measured": measured, "items": r.report["plan"]["items"], "seconds": seconds,
                  "rows": r.report["plan"].get("gradient_batch_size")}))
"""
what = "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS (dry run)"
print(f"memory plan vs {what} (hidden 1024, 8 layers, vocab 32000, {dtype}, batch 8):")
off = 0
CASES = [("attribution", "attribution", {}), ("attribution --recompute", "attribution", {"recompute": True}),
         ("attribution whole", "attribution", {"gradient_batch_size": 8}), ("gain", "gain", {}),
         ("local", "local", {}), ("activation", "activation", {})]
for label, score, extra in CASES:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(target), str(donor), str(workload), score, device, dtype,
                           json.dumps(extra)],
                          capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if proc.returncode != 0:
        print(f"FAIL plan check {label}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        sys.exit(1)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = got["planned"] / got["measured"]
    flag = "" if 0.75 <= ratio <= 1.25 else "  PLAN OFF"
    off += bool(flag)
    items = ", ".join(f"{i['name']} {i['bytes'] / 2**20:.0f}" for i in got["items"])
    print(f"  {label:24s} gradient rows {got['rows'] or '-'}  planned {got['planned'] / 2**20:9.1f} MiB  measured "
          f"{got['measured'] / 2**20:9.1f} MiB  planned/measured {ratio:.2f}{flag}  {got['seconds']:.1f} s  "
          f"({items} MiB)")
print(f"plan check: {len(CASES) - off} of {len(CASES)} runs within +-25%")
PYEOF
fi

# ------------------------------------------------------------------ 6. task experts on the device
if [[ $UNPLUG == 1 && $MERGE_ONLY == 0 && $PLAN_ONLY == 0 ]]; then
  echo "task experts (benchmarks/unplug.py --device $DEVICE):"
  "$PY" "$HERE/unplug.py" --device "$DEVICE" --work "$WORK/unplug" --json "$WORK/unplug.json"
fi
exit $RC
