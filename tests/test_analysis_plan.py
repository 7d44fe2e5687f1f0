"""The memory plan: itemised, close to the measured peak, and it stops runs that cannot fit.

The accuracy test runs ``analyze`` in a fresh process per case and compares
the plan's estimated peak (which includes the process's measured memory
before loading) with the process's high-water RSS (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from mergekit_transplant.analysis import analyze, load_workload  # noqa: E402
from mergekit_transplant.analysis import plan as plan_mod  # noqa: E402
from mergekit_transplant.analysis.paper import PUBLISHED, plan_on_paper  # noqa: E402
from mergekit_transplant.analysis.pipeline import plan_analysis  # noqa: E402
from mergekit_transplant.cli import main  # noqa: E402
from mergekit_transplant.testing import WORDS, make_model, perturbed_copy  # noqa: E402

CHANGED = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight"]


def _workload(path, n=16, words=(60, 120), continuation=8, seed=0):
    import random

    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"text": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(*words)))}
        if i % 2:
            row["continuation"] = " " + " ".join(rnd.choice(WORDS) for _ in range(continuation))
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    target = make_model(root / "t", "llama", hidden=64, layers=2)
    donor = perturbed_copy(target, root / "d", CHANGED)
    return target, donor, _workload(root / "w.jsonl", n=8, words=(10, 30))


# --------------------------------------------------------------------------- accuracy

#: three sizes; peak RSS is measured in a fresh process per (size, score)
SIZES = {
    "8M": dict(hidden=256, layers=4, intermediate=1024, heads=4, kv_heads=2),
    "30M": dict(hidden=512, layers=6, intermediate=2048, heads=8, kv_heads=4),
    "60M": dict(hidden=640, layers=10, intermediate=2560, heads=10, kv_heads=2),
}

_MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from mergekit_transplant.analysis import analyze, load_workload
    target, donor, work, score = sys.argv[1:5]
    r = analyze(target, donor, load_workload(work), score=score, select="top", top_k=2, batch_size=8,
                 progress=False)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
    print(json.dumps({"plan_mb": r.report["timing"]["plan_peak_mb"], "rss_mb": hwm}))
""")


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    root = tmp_path_factory.mktemp("sized")
    work = _workload(root / "w.jsonl", n=16, words=(100, 200))
    pairs = {}
    for name, dims in SIZES.items():
        target = make_model(root / name / "t", "llama", vocab_size=96, max_positions=512, **dims)
        pairs[name] = (target, perturbed_copy(target, root / name / "d", CHANGED), work)
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("score", ["attribution", "local"])
def test_plan_is_within_a_quarter_of_the_measured_peak_rss(sized, score):
    """Three model sizes, each run in its own process: estimate / measured peak RSS in [0.75, 1.25]."""
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    ratios = {}
    for name, (target, donor, work) in sized.items():
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(target), str(donor), str(work), score],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        ratios[name] = got["plan_mb"] / got["rss_mb"]
    print(f"plan / measured peak RSS ({score}):", {k: round(v, 3) for k, v in ratios.items()})
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), ratios


# --------------------------------------------------------------------------- on paper


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("score", ["attribution", "local", "activation"])
def test_real_architectures_plan_on_the_meta_device_and_items_sum_up(name, score):
    plan = plan_on_paper(name, score=score, batch=8, length=512)
    cfg = PUBLISHED[name]
    items = {i.name: i.bytes for i in plan.items}
    assert plan.added_bytes == sum(items.values()) == plan.peak_bytes  # no measured baseline on paper
    assert set(items) >= {"weights", "activations", "score buffers"}
    assert all(v >= 0 for v in items.values())
    # the weights: every parameter once (a tied head counted once), in bf16
    model = plan_mod.meta_model(cfg)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert items["weights"] == 2 * sum(unique.values())
    assert ("streamed tensors" in items) == (score != "activation")
    # attribution's backward runs over micro-batches of whole rows whose saved activations fit in
    # GRADIENT_BUDGET x the weights (at least one row)
    assert ("saved activations" in items) == (score == "attribution")
    if score == "attribution":
        rows = plan.gradient_batch_size
        assert 1 <= rows <= 8 and f"{rows} x 512 tokens" in next(i.detail for i in plan.items
                                                                 if i.name == "saved activations")
        assert rows == 1 or items["saved activations"] <= plan_mod.GRADIENT_BUDGET * items["weights"]
        wider = plan_on_paper(name, score=score, batch=8, length=512, gradient_batch_size=rows + 1)
        assert rows == 8 or next(i.bytes for i in wider.items if i.name == "saved activations") > (
            plan_mod.GRADIENT_BUDGET * items["weights"])
    # --device-map auto: weights and saved activations spread over the GPUs, the rest stays whole
    rest = plan.added_bytes - items["weights"] - items.get("saved activations", 0)
    assert plan.per_device_bytes(4) == -(-(items["weights"] + items.get("saved activations", 0)) // 4) + rest
    json.dumps(plan.to_json())  # serialisable
    assert plan_mod.MemoryPlan.from_json(plan.to_json()).added_bytes == plan.added_bytes
    if score == "attribution":  # --recompute: whole batches; each layer's input kept for its recomputation
        recomputed = plan_on_paper(name, score=score, batch=8, length=512, recompute=True)
        inputs = (cfg["num_hidden_layers"] + 1) * 8 * 512 * cfg["hidden_size"] * 2
        assert {i.name: i.bytes for i in recomputed.items}["layer inputs"] == inputs
        assert recomputed.gradient_batch_size == 8


def test_attribution_costs_more_than_local_and_batch_size_scales_activations():
    local = plan_on_paper("meta-llama/Meta-Llama-3-8B", score="local")
    attribution = plan_on_paper("meta-llama/Meta-Llama-3-8B", score="attribution")
    assert attribution.added_bytes > local.added_bytes
    one, eight = (plan_on_paper("meta-llama/Meta-Llama-3-8B", score="attribution", batch=b, recompute=True)
                  for b in (1, 8))
    acts = [next(i.bytes for i in p.items if i.name == "activations") for p in (one, eight)]
    assert acts[1] > 6 * acts[0]
    # micro-batches: the saved activations stop growing with --batch-size once a micro-batch is full
    saved = {b: next(i.bytes for i in plan_on_paper("meta-llama/Meta-Llama-3-8B", score="attribution",
                                                    batch=b).items if i.name == "saved activations")
             for b in (1, 8, 16)}
    assert saved[1] < saved[8] == saved[16]


# --------------------------------------------------------------------------- the CLI


def _cli(small, tmp_path, *extra):
    target, donor, work = small
    return CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), "--workload",
                                     str(work), *extra])


def _no_loading(monkeypatch):
    from mergekit_transplant.analysis import pipeline

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline, "_load", refuse)


def test_plan_flag_prints_the_itemised_plan_and_loads_nothing(small, tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    result = _cli(small, tmp_path, "--plan")
    assert result.exit_code == 0, result.output
    for item in ("weights", "streamed tensors", "activations", "score buffers", "estimated peak", "runtime"):
        assert item in result.output, item
    assert not list(tmp_path.iterdir())


def test_every_run_prints_the_plan_and_stores_it_in_the_report(small, tmp_path):
    # not --quiet, which hides the plan (an informational line)
    result = _cli(small, tmp_path, "--select", "top", "-o", str(tmp_path / "r.yml"), "--report",
                  str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert result.output.index("memory plan") < result.output.index("wrote recipe")
    report = json.loads((tmp_path / "r.json").read_text())
    plan = report["plan"]
    assert plan["added_bytes"] == sum(i["bytes"] for i in plan["items"]) > 0
    assert report["timing"]["plan_peak_mb"] > plan["added_bytes"] / 2**20  # plus the measured runtime


def test_a_plan_over_the_free_memory_stops_before_loading_and_names_a_batch_size(small, tmp_path, monkeypatch):
    target, donor, work = small
    at_8 = plan_analysis(str(target), str(donor), load_workload(work), batch_size=8, progress=False)
    at_2 = plan_analysis(str(target), str(donor), load_workload(work), batch_size=2, progress=False)
    monkeypatch.setattr(plan_mod, "available_ram_bytes", lambda: (at_2.added_bytes + at_8.added_bytes) // 2)
    _no_loading(monkeypatch)
    result = _cli(small, tmp_path, "-o", str(tmp_path / "r.yml"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "memory plan: estimated" in errors[0]
    fits = int(errors[0].split("--batch-size ")[1].split()[0])
    assert 2 <= fits < 8
    assert plan_analysis(str(target), str(donor), load_workload(work), batch_size=fits,
                         progress=False).added_bytes <= (at_2.added_bytes + at_8.added_bytes) // 2
    assert not (tmp_path / "r.yml").exists()


def test_force_runs_anyway_with_a_warning(small, tmp_path, monkeypatch):
    monkeypatch.setattr(plan_mod, "available_ram_bytes", lambda: 1)
    result = _cli(small, tmp_path, "--quiet", "--select", "top", "--force", "-o", str(tmp_path / "r.yml"))
    assert result.exit_code == 0, result.output
    assert "running anyway (--force)" in result.output and (tmp_path / "r.yml").exists()


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--max-length", "5"], "--max-length 5 is below the longest continuation (8 tokens, workload sample 2)"),
    (["--free", "1"], "cannot fit even at --batch-size 1"),
])
def test_bad_sizes_are_one_line_and_load_nothing(tmp_path, monkeypatch, args, message):
    root = tmp_path / "m"
    target = make_model(root / "t", "llama", hidden=64, layers=2)
    donor = perturbed_copy(target, root / "d", CHANGED)
    work = _workload(tmp_path / "w.jsonl", n=4, words=(3, 6))
    if args[0] == "--free":
        monkeypatch.setattr(plan_mod, "available_ram_bytes", lambda: 1)
        args = []
    _no_loading(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), "--workload",
                                       str(work), *args, "-o", str(out / "r.yml")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and not list(out.iterdir())


def test_analyze_api_returns_the_plan_with_plan_only(small):
    target, donor, work = small
    seen = []
    plan = analyze(str(target), str(donor), load_workload(work), plan_only=True, on_plan=seen.append,
                   progress=False)
    from mergekit_transplant.analysis import DEFAULT_SCORE

    assert seen == [plan] and plan.score == DEFAULT_SCORE and plan.fits() in (True, None)


def test_help_names_the_plan_options():
    result = CliRunner().invoke(main, ["analyze", "--help"])
    assert result.exit_code == 0
    for option in ("--plan", "--force", "--recompute / --no-recompute", "--gradient-batch-size"):
        assert option in result.output, option
    assert "memory plan" in " ".join(result.output.split())


def test_micro_batches_shrink_to_the_free_memory_and_a_plan_that_cannot_names_recompute():
    """Llama-3-8B in bf16 on meta: the micro-batch follows the device's free memory; one long row that
    does not fit even alone is refused with the advice to recompute, which fits."""
    from mergekit_transplant.analysis.paper import index_from_model

    name = "meta-llama/Meta-Llama-3-8B"
    model = plan_mod.meta_model(PUBLISHED[name])
    index = index_from_model(model, name, "bfloat16")

    def planner(lengths, free):
        p = plan_mod.Planner(index, index, score="attribution", lengths=lengths, scored=[64] * len(lengths),
                             dtype="bfloat16", device="cuda", model=model, measure=False)
        p.free = int(free)
        return p

    roomy, tight = planner([512] * 8, 80e9).plan(8), planner([512] * 8, 24e9).plan(8)
    assert roomy.gradient_batch_size > tight.gradient_batch_size >= 1
    assert roomy.fits() and tight.fits() and tight.added_bytes < roomy.added_bytes
    long = planner([4096], 24e9)
    assert long.plan(1).gradient_batch_size == 1 and not long.plan(1).fits()
    assert long.advice(1, 4096, 65).startswith("--recompute fits")
    long.recompute = True
    assert long.plan(1).fits()
