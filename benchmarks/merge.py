"""What a transplant merge reads from disk, against the floors it should approach.

Builds a ~145M-parameter fp32 Llama pair locally (the donor differs from the
target in one decoder layer's MLP, ~5% of the parameters), then measures each
of these, with a cold and with a warm page cache:

- ``cp -r`` of the target: the floor for writing a model of this size;
- mergekit ``passthrough`` of the target alone: mergekit's own floor;
- mergekit ``linear`` of target and donor: a merge that reads both models;
- the transplant through ``mergekit-yaml`` with the plugin's read planning
  turned off (``MERGEKIT_TRANSPLANT_READ_ALL=1``): what mergekit reads by default;
- the transplant through ``mergekit-yaml`` with the planner hook but the read
  hints (``adapter/read_hints.py``) removed: what the hints save;
- the transplant through ``mergekit-yaml`` and ``mergekit-transplant merge``;
- the same transplant from an organ (only the transplanted donor tensors).

Figures come from the kernel (GNU ``time``, else ``os.wait4``): wall time, CPU
time, peak RSS, bytes read from the block device. On a shared machine the CPU
time is the steadier figure; wall time is what the goal names. Goals (docs/merge-reads.md): transplant reads <= target
bytes + 1.1x the transplanted donor bytes, and wall time <= 1.1x mergekit's
passthrough of the target alone. The script prints a markdown table and the
goal checks, writes everything to ``--json``, and checks that the transplant
outputs are bit-identical with and without read planning, and from the organ.

    python benchmarks/merge.py --reps 3 --json /tmp/merge-bench.json
    python benchmarks/merge.py --only passthrough --only "transplant, mergekit-yaml"  # a subset
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    check_eviction,
    evict,
    files_under,
    machine,
    mib,
    run_measured,
    summarize,
    venv_bin,
    warm,
    write_json, goal_verdict,
)

READ_ALL_ENV = "MERGEKIT_TRANSPLANT_READ_ALL"


def build_pair(work: Path, args) -> dict:
    """Target, donor (one layer's MLP perturbed) and the list of transplanted tensors."""
    from mergekit_transplant.testing import make_model, perturbed_copy

    layer = args.layers // 2
    tensors = [f"model.layers.{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    target, donor = work / "target", work / "donor"
    if not (target / "model.safetensors").exists():
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        make_model(target, "llama", seed=0, dtype="float32", hidden=args.hidden, layers=args.layers,
                   intermediate=args.intermediate, heads=args.heads, kv_heads=args.heads,
                   vocab_size=args.vocab)
        print(f"built target in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if not (donor / "model.safetensors").exists():
        shutil.rmtree(donor, ignore_errors=True)
        perturbed_copy(target, donor, tensors, scale=0.5, seed=1)
    return {"target": target, "donor": donor, "tensors": tensors}


def write_recipes(work: Path, pair: dict) -> dict:
    import yaml

    from mergekit_transplant.recipe import Selection, render_recipe

    target, donor = str(pair["target"]), str(pair["donor"])
    recipes = {
        "transplant": render_recipe(target, [Selection(t, donor, 1.0) for t in pair["tensors"]],
                                    header=["benchmarks/merge.py: one decoder layer's MLP"]),
        "passthrough": yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": target}]}),
        "linear": yaml.safe_dump({
            "merge_method": "linear",
            "models": [{"model": target, "parameters": {"weight": 0.5}},
                       {"model": donor, "parameters": {"weight": 0.5}}],
        }),
    }
    paths = {}
    for name, text in recipes.items():
        paths[name] = work / f"{name}.yml"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def build_organ(work: Path, pair: dict, transplant_recipe: Path) -> tuple:
    """An organ of the transplant: ``mergekit-transplant organ extract``, else one made by hand."""
    import subprocess

    organ = work / "organ"
    shutil.rmtree(organ, ignore_errors=True)
    cli = [venv_bin("mergekit-transplant"), "organ", "extract", str(transplant_recipe), "-o", str(organ)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    if proc.returncode == 0:
        return organ, organ / "recipe.yml", "mergekit-transplant organ extract"
    print(f"organ extract unavailable ({proc.stderr.strip().splitlines()[-1:]}); making one by hand",
          file=sys.stderr)
    shutil.rmtree(organ, ignore_errors=True)

    from safetensors import safe_open
    from safetensors.torch import save_file

    from mergekit_transplant.recipe import Selection, render_recipe

    organ.mkdir()
    shutil.copy(pair["donor"] / "config.json", organ / "config.json")
    with safe_open(str(pair["donor"] / "model.safetensors"), "pt") as fh:
        save_file({t: fh.get_tensor(t) for t in pair["tensors"]}, organ / "model.safetensors",
                  metadata={"format": "pt"})
    recipe = work / "organ.yml"
    recipe.write_text(render_recipe(str(pair["target"]), [Selection(t, str(organ)) for t in pair["tensors"]]))
    return organ, recipe, "hand-made (config.json + the transplanted tensors)"


def no_hints_site(work: Path) -> Path:
    """A sitecustomize that keeps the planner hook but never installs the read hints (benchmark only)."""
    site = work / "site-no-read-hints"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import mergekit_transplant.adapter.read_hints as hints\n"
        "hints.install_read_hints = lambda: False\n")
    return site


def variants(work: Path, pair: dict, recipes: dict, organ: Path, organ_recipe: Path) -> list:
    """(label, command, env, input folders) for every measured command."""
    yaml_bin, plugin_bin = venv_bin("mergekit-yaml"), venv_bin("mergekit-transplant")
    t, d = pair["target"], pair["donor"]
    no_hints = {"PYTHONPATH": str(no_hints_site(work))}
    return [
        ("cp -r target (floor)", ["cp", "-r", t], {}, [t]),
        ("mergekit passthrough, target alone", [yaml_bin, recipes["passthrough"]], {}, [t]),
        ("mergekit linear, target + donor", [yaml_bin, recipes["linear"]], {}, [t, d]),
        ("transplant, mergekit-yaml, read planning off", [yaml_bin, recipes["transplant"]], {READ_ALL_ENV: "1"},
         [t, d]),
        ("transplant, mergekit-yaml, read hints off", [yaml_bin, recipes["transplant"]], no_hints, [t, d]),
        ("transplant, mergekit-yaml", [yaml_bin, recipes["transplant"]], {}, [t, d]),
        ("transplant, mergekit-transplant merge", [plugin_bin, "merge", recipes["transplant"]], {}, [t, d]),
        ("transplant from organ, mergekit-yaml", [yaml_bin, organ_recipe], {}, [t, organ]),
    ]


def run_all(work: Path, cases: list, reps: int) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {label: {"cold": [], "warm": []} for label, *_ in cases}
    out = work / "out"
    for rep in range(reps):
        for label, cmd, extra_env, inputs in cases:  # interleaved: contention hits all alike
            for cache in ("cold", "warm"):
                shutil.rmtree(out, ignore_errors=True)
                if cache == "cold":
                    evict(inputs)
                else:
                    warm(inputs)
                    os.sync()
                m = run_measured([*cmd, out], env={**env, **extra_env})
                if m.returncode != 0:
                    raise SystemExit(f"{label} failed (exit {m.returncode}): {' '.join(map(str, cmd))}")
                results[label][cache].append(m)
                print(f"[{rep + 1}/{reps}] {cache:4s} {label}: {m.wall_s:.1f}s ({m.cpu_s:.1f}s CPU), "
                      f"read {mib(m.read_bytes)} MiB, "
                      f"peak RSS {mib(m.peak_rss_bytes)} MiB", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    return results


def same_bits(a: Path, b: Path) -> bool:
    """Whether two single-file safetensors outputs hold the same tensors, bit for bit."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        if sorted(fa.keys()) != sorted(fb.keys()):
            return False
        for k in fa.keys():
            x, y = fa.get_tensor(k), fb.get_tensor(k)
            if x.dtype != y.dtype or not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
                return False
    return True


def verify_outputs(work: Path, recipes: dict, organ_recipe: Path) -> dict:
    yaml_bin = venv_bin("mergekit-yaml")
    outs = {}
    for name, recipe, env in (("planned", recipes["transplant"], {}),
                              ("read_all", recipes["transplant"], {READ_ALL_ENV: "1"}),
                              ("organ", organ_recipe, {})):
        outs[name] = work / f"verify-{name}"
        shutil.rmtree(outs[name], ignore_errors=True)
        m = run_measured([yaml_bin, recipe, outs[name]], env={"HF_HUB_OFFLINE": "1", **env})
        if m.returncode != 0:
            raise SystemExit(f"verification merge {name} failed")
    result = {
        "planned_equals_read_all": same_bits(outs["planned"], outs["read_all"]),
        "organ_equals_read_all": same_bits(outs["organ"], outs["read_all"]),
    }
    for p in outs.values():
        shutil.rmtree(p, ignore_errors=True)
    return result


def table(summary: dict) -> str:
    lines = [
        "| command | cache | wall s, median (min-max) | CPU s | peak RSS MiB | read MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, by_cache in summary.items():
        for cache, s in by_cache.items():
            lines.append(f"| {label} | {cache} | {s['wall_s']:.1f} ({s['wall_s_min']:.1f}-{s['wall_s_max']:.1f}) "
                         f"| {s['cpu_s']:.1f} | {mib(s['peak_rss_bytes'])} | {mib(s['read_bytes'])} |")
    return "\n".join(lines)


def goals(summary: dict, sizes: dict) -> list:
    out = []
    budget = sizes["target_bytes"] + 1.1 * sizes["transplanted_bytes"]
    for label in ("transplant, mergekit-yaml, read hints off", "transplant, mergekit-yaml",
                  "transplant, mergekit-transplant merge", "transplant from organ, mergekit-yaml"):
        if label not in summary or "mergekit passthrough, target alone" not in summary:
            continue  # left out with --only
        read = summary[label]["cold"]["read_bytes"]
        out.append(goal_verdict(f"{label}, cold: bytes read / (target + 1.1 x transplanted)", read / budget, "<= 1",
                                unit="x", source=f"issue 8; read {mib(read)} MiB, budget {mib(budget)} MiB")["line"])
        for cache in ("cold", "warm"):
            wall, floor = summary[label][cache]["wall_s"], summary["mergekit passthrough, target alone"][cache]["wall_s"]
            out.append(goal_verdict(f"{label}, {cache}: wall time / mergekit passthrough of the target", wall / floor,
                                    "<= 1.1", unit="x", source=f"issue 8; {wall:.1f} s vs {floor:.1f} s")["line"])
            cpu, cpu_floor = summary[label][cache]["cpu_s"], summary["mergekit passthrough, target alone"][cache]["cpu_s"]
            if cpu_floor:
                out.append(f"{label}, {cache}: CPU {cpu:.1f}s = {cpu / cpu_floor:.2f}x passthrough ({cpu_floor:.1f}s)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mkt-bench-merge"),
                    help="folder for the models and outputs (kept between runs; models are reused)")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every command and cache state")
    ap.add_argument("--json", type=Path, default=None, help="write all measurements here")
    ap.add_argument("--clean", action="store_true", help="delete --work afterwards")
    ap.add_argument("--only", action="append", default=[],
                    help="measure only the commands whose label contains this text (repeatable)")
    args = ap.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pair = build_pair(work, args)
    recipes = write_recipes(work, pair)
    organ, organ_recipe, organ_how = build_organ(work, pair, recipes["transplant"])

    from mergekit_transplant.checkpoint import read_index

    t_index, d_index = read_index(str(pair["target"])), read_index(str(pair["donor"]))
    sizes = {
        "target_parameters": t_index.num_parameters,
        "transplanted_parameters": sum(d_index.tensors[n].numel for n in pair["tensors"]),
        "target_bytes": sum(f.stat().st_size for f in files_under([pair["target"]])),
        "target_weights_bytes": (pair["target"] / "model.safetensors").stat().st_size,
        "donor_bytes": sum(f.stat().st_size for f in files_under([pair["donor"]])),
        "transplanted_bytes": sum(d_index.tensors[n].nbytes for n in pair["tensors"]),
        "organ_bytes": sum(f.stat().st_size for f in files_under([organ])),
    }
    share = sizes["transplanted_parameters"] / sizes["target_parameters"]
    print(f"target {sizes['target_parameters'] / 1e6:.1f}M parameters ({mib(sizes['target_bytes'])} MiB); "
          f"transplant {', '.join(pair['tensors'])}: {sizes['transplanted_parameters'] / 1e6:.2f}M parameters "
          f"({100 * share:.1f}%, {mib(sizes['transplanted_bytes'])} MiB); organ {organ_how}", file=sys.stderr)

    eviction_works = check_eviction(pair["target"] / "model.safetensors")
    if not eviction_works:
        print("WARNING: evicting files from the page cache does not work here; 'cold' is not cold",
              file=sys.stderr)
    host = machine()
    cases = variants(work, pair, recipes, organ, organ_recipe)
    if args.only:
        cases = [c for c in cases if any(o in c[0] for o in args.only)]
    raw = run_all(work, cases, args.reps)
    summary = {label: {c: summarize(runs) for c, runs in by_cache.items()} for label, by_cache in raw.items()}
    verified = verify_outputs(work, recipes, organ_recipe)
    host["load_average_after"] = os.getloadavg()

    report = {"machine": host, "eviction_works": eviction_works, "sizes": sizes, "transplanted": pair["tensors"],
              "organ": organ_how, "summary": summary, "raw": raw, "bit_identical": verified}
    if args.json:
        write_json(args.json, report)
    print(f"machine: {host}")
    print(f"sizes: target {mib(sizes['target_bytes'])} MiB, donor {mib(sizes['donor_bytes'])} MiB, "
          f"transplanted {mib(sizes['transplanted_bytes'])} MiB ({100 * share:.1f}% of parameters), "
          f"organ {mib(sizes['organ_bytes'])} MiB")
    print(table(summary))
    for line in goals(summary, sizes):
        print("-", line)
    print(f"- bit-identical: {verified}")
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(verified.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
