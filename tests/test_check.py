"""The pre-flight check: every fault reported from headers alone, before any weight is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit_transplant.cli import main
from mergekit_transplant.preflight import is_clean_match, run_check
from mergekit_transplant.recipe import parse_recipe


def recipe_text(target: Path, donor: Path, strength_lines: str, extra: str = "") -> str:
    return (
        f"merge_method: transplant\nbase_model: {target}\nmodels:\n  - model: {donor}\n"
        f"    parameters:\n      strength:\n{strength_lines}        - value: 0.0\n{extra}"
    )


def pick(filt: str, value: float = 1.0) -> str:
    return f"        - filter: {filt}\n          value: {value}\n"


def check(text: str):
    return run_check(parse_recipe(text))


@pytest.fixture(scope="module")
def pair(model_factory):
    return model_factory("chk-t", layers=12, seed=0), model_factory("chk-d", layers=12, seed=1)


def test_clean_recipe_gives_plan_table(pair):
    t, d = pair
    report = check(recipe_text(t, d, pick("model.layers.3.mlp.down_proj.weight") + pick("model.layers.11.self_attn.", 0.5)))
    assert report.ok, report.errors
    rows = {(r.tensor, r.strength) for r in report.rows}
    assert ("model.layers.3.mlp.down_proj.weight", 1.0) in rows
    assert {r.tensor for r in report.rows if r.strength == 0.5} == {
        f"model.layers.11.self_attn.{p}_proj.weight" for p in "qkvo"}
    table = report.format_table()
    assert "model.layers.3.mlp.down_proj.weight" in table and "share" in table and "total" in table
    down = next(r for r in report.rows if r.tensor.endswith("3.mlp.down_proj.weight"))
    assert down.parameters == 64 * 128 and 0 < down.share < 0.05


def test_filter_matching_nothing_is_named(pair):
    t, d = pair
    report = check(recipe_text(t, d, pick("model.layers.3.mlp.dwn_proj")))
    assert report.errors == [f"filter 'model.layers.3.mlp.dwn_proj' (donor {d}) matches no tensor of the target {t}"]


def test_ambiguous_prefix_suggests_exact_form(pair):
    t, d = pair
    report = check(recipe_text(t, d, pick("model.layers.1")))
    assert len(report.errors) == 1
    msg = report.errors[0]
    assert "ambiguous" in msg and "model.layers.10." in msg and "use model.layers.1." in msg
    assert check(recipe_text(t, d, pick("model.layers.1."))).ok


def test_clean_match_rule():
    assert is_clean_match("model.layers.1.", "model.layers.1.mlp.up_proj.weight")
    assert not is_clean_match("model.layers.1", "model.layers.11.mlp.up_proj.weight")
    assert not is_clean_match("1.mlp.down_proj", "model.layers.21.mlp.down_proj.weight")
    assert is_clean_match("mlp.down_proj.weight", "model.layers.21.mlp.down_proj.weight")


def test_shape_mismatch(model_factory, pair):
    t, _ = pair
    wide = model_factory("chk-wide", layers=12, intermediate=192, seed=2)
    report = check(recipe_text(t, wide, pick("model.layers.2.mlp.up_proj.weight")))
    assert report.errors == [
        f"shape mismatch for model.layers.2.mlp.up_proj.weight: target [128, 64], donor {wide} [192, 64]"]
    # a zero-strength tensor of a different shape is fine: it is never read
    assert check(recipe_text(t, wide, pick("model.layers.2.self_attn.q_proj.weight"))).ok


def test_tensor_missing_from_donor(pair, tmp_path):
    t, d = pair
    import shutil

    holed = tmp_path / "holed"
    shutil.copytree(d, holed)
    state = load_file(holed / "model.safetensors")
    del state["model.layers.4.mlp.up_proj.weight"]
    save_file(state, holed / "model.safetensors", metadata={"format": "pt"})
    report = check(recipe_text(t, holed, pick("model.layers.4.mlp.up_proj.weight")))
    assert report.errors == [f"tensor model.layers.4.mlp.up_proj.weight (strength 1) is missing from donor {holed}"]


def test_architecture_mismatch(model_factory, pair):
    t, _ = pair
    qwen = model_factory("chk-qwen", "qwen2", layers=12, seed=3)
    report = check(recipe_text(t, qwen, pick("model.layers.2.mlp.up_proj.weight")))
    assert report.errors == [
        f"architecture mismatch: target {t} is LlamaForCausalLM, donor {qwen} is Qwen2ForCausalLM"]


def test_vocab_mismatch_when_embeddings_transplanted(model_factory, pair):
    t, _ = pair
    big = model_factory("chk-vocab", layers=12, vocab_size=128, seed=4)
    report = check(recipe_text(t, big, pick("model.embed_tokens.weight")))
    assert len(report.errors) == 1 and report.errors[0].startswith(
        "vocab size mismatch for model.embed_tokens.weight: target 96, donor")
    assert check(recipe_text(t, big, pick("model.layers.0.mlp.up_proj.weight"))).ok


@pytest.mark.parametrize("value,needle", [(".nan", "is not finite"), (-0.25, "outside [0, 1]"), (1.5, "outside [0, 1]")])
def test_strength_out_of_bounds(pair, value, needle):
    from mergekit_transplant.errors import TransplantError

    t, d = pair
    with pytest.raises(TransplantError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_recipe(recipe_text(t, d, pick("model.layers.2.mlp.up_proj.weight", value)))


def test_strength_sum_checked_per_tensor(model_factory, pair):
    t, d = pair
    d2 = model_factory("chk-d2", layers=12, seed=5)
    name = "model.layers.2.mlp.up_proj.weight"
    text = (f"merge_method: transplant\nbase_model: {t}\nmodels:\n"
            f"  - model: {d}\n    parameters:\n      strength:\n{pick(name, 0.7)}        - value: 0.0\n"
            f"  - model: {d2}\n    parameters:\n      strength:\n{pick(name, 0.6)}        - value: 0.0\n")
    report = check(text)
    assert len(report.errors) == 1 and f"{name}: strengths of donors" in report.errors[0] and "sum to 1.3" in report.errors[0]


def test_cli_exit_codes_and_merge_writes_nothing_on_error(pair, tmp_path):
    t, d = pair
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(recipe_text(t, d, pick("model.layers.3.mlp.down_proj.weight")))
    bad.write_text(recipe_text(t, d, pick("model.layers.3.mlp.dwn_proj")))
    runner = CliRunner()
    ok = runner.invoke(main, ["check", str(good)])
    assert ok.exit_code == 0 and "model.layers.3.mlp.down_proj.weight" in ok.output
    fail = runner.invoke(main, ["check", str(bad)])
    assert fail.exit_code == 2 and "matches no tensor" in fail.output and "Traceback" not in fail.output
    merged = runner.invoke(main, ["merge", str(bad), str(tmp_path / "out")])
    assert merged.exit_code == 2 and "nothing was written" in merged.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_check_reads_headers_only_bytes_counted(cold_pair):
    """Counted in the page cache (tests/pagecache.py): after eviction, ``check`` brings in the
    header and at most the disk's read-ahead window after it -- no page of tensor data beyond."""
    from mergekit_transplant.checkpoint import read_index
    from tests import pagecache

    t, d, files = cold_pair
    picked = ["model.layers.3.mlp.down_proj.weight", "model.layers.5.self_attn.o_proj.weight"]
    text = recipe_text(t, d, "".join(pick(n) for n in picked))
    window = pagecache.read_ahead_bytes(files[0])
    header_ends = {f: min(info.begin for info in read_index(str(f.parent)).tensors.values()) for f in files}
    pagecache.evict(files)
    report = check(text)
    assert report.ok and sorted(r.tensor for r in report.rows) == sorted(picked)
    for f in files:
        header_end = header_ends[f]
        limit = header_end + window + pagecache.PAGE
        pages = pagecache.resident_pages(f)
        assert f.stat().st_size > 2 * limit, "the test model is too small for this disk's read-ahead to tell"
        beyond = [i * pagecache.PAGE for i, hit in enumerate(pages) if hit and i * pagecache.PAGE >= limit]
        assert beyond == [], f"{f}: check read tensor data at offsets {beyond[:3]}... (header ends at {header_end})"
        assert sum(pages) * pagecache.PAGE <= limit


def test_check_keeps_its_work_for_the_merge(pair, monkeypatch):
    """The recipe is validated by pydantic once; check_finite reuses the check's donor indexes."""
    from mergekit.config import MergeConfiguration

    from mergekit_transplant import checkpoint, merge

    t, d = pair
    calls = {"validate": 0, "read_index": 0}
    real_validate = MergeConfiguration.model_validate.__func__
    real_read_index = checkpoint.read_index

    def counting_validate(cls, *args, **kwargs):
        calls["validate"] += 1
        return real_validate(cls, *args, **kwargs)

    def counting_read_index(*args, **kwargs):
        calls["read_index"] += 1
        return real_read_index(*args, **kwargs)

    monkeypatch.setattr(MergeConfiguration, "model_validate", classmethod(counting_validate))
    recipe = parse_recipe(recipe_text(t, d, pick("model.layers.3.mlp.down_proj.weight")))
    assert calls["validate"] == 1
    report = run_check(recipe)
    assert report.ok and calls["validate"] == 1  # Recipe.config is cached, not revalidated per access
    assert set(report.indexes) == {str(t), str(d)}
    monkeypatch.setattr(checkpoint, "read_index", counting_read_index)
    merge.check_finite(report)
    assert calls["read_index"] == 0
