"""The pre-flight check's findings, whole: every row, error and warning ``run_check`` reports, exactly.

tests/test_check.py checks each fault through ``check`` as a user meets it;
these tests pin the whole report (every field of every row, the complete
list of errors and warnings) on small real models, so that a changed word,
a dropped finding or a stray extra one fails. In process and fast, for
``make mutation`` (docs/testing.md).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mergekit.architecture import get_architecture_info  # noqa: F401  (loaded once, not per mutant's process)
from mergekit.plan import MergePlanner  # noqa: F401
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, Qwen2ForCausalLM  # noqa: F401

from mergekit_transplant.preflight import PlanRow, run_check, suggest_exact
from mergekit_transplant.recipe import parse_recipe

UP2 = "model.layers.2.mlp.up_proj.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"
EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def zoo(model_factory):
    return {
        "t": model_factory("pf-t", layers=3, seed=0, tokenizer=False),
        "d": model_factory("pf-d", layers=3, seed=1, tokenizer=False),
        "d2": model_factory("pf-d2", layers=3, seed=2, tokenizer=False),
        "tied": model_factory("pf-tied", layers=3, seed=3, tie=True, tokenizer=False),
        "wide": model_factory("pf-wide", layers=3, seed=4, intermediate=192, tokenizer=False),
        "vocab": model_factory("pf-vocab", layers=3, seed=5, vocab_size=128, tokenizer=False),
        "both": model_factory("pf-both", layers=3, seed=6, vocab_size=128, intermediate=192, tokenizer=False),
    }


def recipe(target, *donors, allow=False):
    """``donors``: (model, {filter: strength}) pairs, each with a catch-all 0."""
    lines = [f"merge_method: transplant\nbase_model: {target}\n"]
    if allow:
        lines.append("parameters:\n  allow_extrapolation: true\n")
    lines.append("models:\n")
    for model, picks in donors:
        lines.append(f"  - model: {model}\n    parameters:\n      strength:\n")
        lines += [f"        - filter: {f}\n          value: {v}\n" for f, v in picks.items()]
        lines.append("        - value: 0.0\n")
    return parse_recipe("".join(lines))


def numel(model, name):
    return int(torch.Size(load_file(model / "model.safetensors")[name].shape).numel())


def total(model):
    return sum(t.numel() for t in load_file(model / "model.safetensors").values())


def test_a_clean_plan_reports_every_row_exactly(zoo):
    t, d = zoo["t"], zoo["d"]
    r = recipe(t, (d, {UP2: 1.0, DOWN1: 0.5}))
    report = run_check(r)
    assert report.recipe is r and report.errors == [] and report.warnings == [] and report.ok
    n = total(t)
    assert report.target_parameters == n
    assert sorted(report.rows, key=lambda row: row.tensor) == [
        PlanRow(tensor=DOWN1, donor=str(d), strength=0.5, parameters=numel(t, DOWN1), share=numel(t, DOWN1) / n,
                donor_tensor=DOWN1),
        PlanRow(tensor=UP2, donor=str(d), strength=1.0, parameters=numel(t, UP2), share=numel(t, UP2) / n,
                donor_tensor=UP2)]
    assert report.transplanted_parameters == numel(t, DOWN1) + numel(t, UP2)


def test_a_donor_at_zero_everywhere_is_warned_about(zoo):
    t, d, d2 = zoo["t"], zoo["d"], zoo["d2"]
    report = run_check(recipe(t, (d, {UP2: 1.0}), (d2, {})))
    assert report.errors == []
    assert report.warnings == [f"donor {d2} contributes nothing: every strength resolves to 0"]
    assert [row.donor for row in report.rows] == [str(d)]


def test_no_warning_on_top_of_errors(zoo):
    t, d2, wide = zoo["t"], zoo["d2"], zoo["wide"]
    report = run_check(recipe(t, (wide, {UP2: 1.0}), (d2, {})))
    assert report.errors == [f"shape mismatch for {UP2}: target [128, 64], donor {wide} [192, 64]"]
    assert report.warnings == []


def test_every_shape_mismatch_is_reported_and_the_good_rows_kept(zoo):
    t, wide = zoo["t"], zoo["wide"]
    down0, q0 = "model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    report = run_check(recipe(t, (wide, {UP2: 1.0, down0: 1.0, q0: 0.5})))
    assert sorted(report.errors) == sorted([
        f"shape mismatch for {UP2}: target [128, 64], donor {wide} [192, 64]",
        f"shape mismatch for {down0}: target [64, 128], donor {wide} [64, 192]"])
    assert [(row.tensor, row.strength) for row in report.rows] == [(q0, 0.5)]


def test_vocab_and_shape_mismatches_are_told_apart(zoo):
    t, vocab, both = zoo["t"], zoo["vocab"], zoo["both"]
    report = run_check(recipe(t, (vocab, {EMBED: 1.0})))
    assert report.errors == [
        f"vocab size mismatch for {EMBED}: target 96, donor {vocab} 128; embeddings and lm_head can only be "
        "transplanted between models with the same tokenizer"]
    # a different vocabulary does not make every other shape mismatch a vocabulary one
    report = run_check(recipe(t, (both, {UP2: 1.0})))
    assert report.errors == [f"shape mismatch for {UP2}: target [128, 64], donor {both} [192, 64]"]
    # and an embedding of another width with the same vocabulary is a shape mismatch
    report = run_check(recipe(zoo["t"], (zoo["wide"], {UP2: 0.0})))
    assert report.errors == [] and report.rows == []


def without(model, tensors, out):
    """A copy of ``model`` whose safetensors lack ``tensors``."""
    shutil.copytree(model, out)
    state = load_file(out / "model.safetensors")
    save_file({k: v for k, v in state.items() if k not in tensors}, out / "model.safetensors",
              metadata={"format": "pt"})
    return out


def test_every_missing_donor_tensor_is_reported(zoo, tmp_path):
    t, d = zoo["t"], zoo["d"]
    holed = without(d, {UP2, DOWN1}, tmp_path / "holed")
    q0 = "model.layers.0.self_attn.q_proj.weight"
    report = run_check(recipe(t, (holed, {UP2: 1.0, DOWN1: 0.25, q0: 1.0})))
    assert sorted(report.errors) == sorted([
        f"tensor {UP2} (strength 1) is missing from donor {holed}",
        f"tensor {DOWN1} (strength 0.25) is missing from donor {holed}"])
    assert [row.tensor for row in report.rows] == [q0]


def test_a_tensor_missing_from_the_target_is_an_error_unless_optional(zoo, tmp_path):
    t, d, tied = zoo["t"], zoo["d"], zoo["tied"]
    # a tied target has no lm_head: optional, so not an error; the donor's lm_head is not read
    report = run_check(recipe(tied, (d, {UP2: 1.0})))
    assert report.errors == [] and [row.tensor for row in report.rows] == [UP2]
    holed = without(t, {DOWN1, UP2}, tmp_path / "holed-target")
    q0 = "model.layers.0.self_attn.q_proj.weight"
    report = run_check(recipe(holed, (d, {q0: 1.0})))
    assert sorted(report.errors) == sorted([f"tensor {DOWN1} is missing from the target {holed}",
                                            f"tensor {UP2} is missing from the target {holed}"])
    assert [row.tensor for row in report.rows] == [q0]


def test_strengths_summing_above_one_unless_extrapolation_is_allowed(zoo):
    t, d, d2 = zoo["t"], zoo["d"], zoo["d2"]
    report = run_check(recipe(t, (d, {UP2: 0.7}), (d2, {UP2: 0.6})))
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{UP2}: strengths of donors")
    report = run_check(recipe(t, (d, {UP2: 0.7}), (d2, {UP2: 0.6}), allow=True))
    assert report.errors == [] and sorted(row.strength for row in report.rows) == [0.6, 0.7]


def test_unreadable_models_are_reported_before_anything_else(zoo, tmp_path):
    t = zoo["t"]
    missing = tmp_path / "nowhere"
    report = run_check(recipe(t, (missing, {UP2: 1.0})))
    assert report.errors == [f"model '{missing}': no such folder"] and report.rows == []
    assert report.target_parameters == 0


def test_pickle_checkpoints_need_allow_pickle(zoo, tmp_path):
    t, d = zoo["t"], zoo["d"]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(d / "config.json", pickled / "config.json")
    torch.save(load_file(d / "model.safetensors"), pickled / "pytorch_model.bin")
    r = recipe(t, (pickled, {UP2: 1.0}))
    report = run_check(r)
    assert len(report.errors) == 1 and "pickle" in report.errors[0] and "--allow-pickle" in report.errors[0]
    report = run_check(r, allow_pickle=True)
    assert report.errors == [] and [row.tensor for row in report.rows] == [UP2]


def test_architecture_mismatch_stops_the_check(zoo, model_factory):
    t = zoo["t"]
    qwen = model_factory("pf-qwen", "qwen2", layers=3, seed=7, tokenizer=False)
    report = run_check(recipe(t, (qwen, {UP2: 1.0}), (zoo["wide"], {UP2: 1.0})))
    assert report.errors == [f"architecture mismatch: target {t} is LlamaForCausalLM, donor {qwen} is Qwen2ForCausalLM"]
    assert report.rows == []


def test_check_loads_remote_code_only_when_asked(zoo, tmp_path):
    """Positive control for ``--trust-remote-code`` (the refusal is tested in test_reliability_security)."""
    model = tmp_path / "custom"
    shutil.copytree(zoo["t"], model)
    marker = tmp_path / "remote-code-ran"
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="evil_custom", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_custom'\n")
    r = recipe(model, (model, {UP2: 1.0}))
    report = run_check(r)
    assert len(report.errors) == 1 and "trust_remote_code" in report.errors[0] and not marker.exists()
    run_check(r, trust_remote_code=True)
    assert marker.exists()


@pytest.mark.parametrize("filt,expected", [
    ("model.layers.1", "model.layers.1."),  # a layer prefix: the dotted form
    ("layers.1", "layers.1."),
    ("model.layers.1.", ", ".join(["model.layers.1.input_layernorm.weight", "model.layers.1.mlp.down_proj.weight",
                                   "model.layers.1.mlp.gate_proj.weight"]) + " ..."),
    ("mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight, model.layers.1.mlp.down_proj.weight, "
                             "model.layers.2.mlp.down_proj.weight"),
    ("ayers.2", "an exact tensor name"),  # no clean match: nothing to suggest but the rule
    ("2.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"),  # one clean match: that name
    ("model.layers.2.mlp.up_proj", "model.layers.2.mlp.up_proj."),
    ("", "an exact tensor name"),
    ("lm_head", "lm_head."),
    ("model.norm.weight", "model.norm.weight"),
])
def test_suggestions_for_a_filter(zoo, filt, expected):
    from mergekit_transplant.checkpoint import read_index

    names = sorted(read_index(str(zoo["t"])).all_tensors())
    assert suggest_exact(filt, names) == expected


def test_suggestion_lists_at_most_three_and_says_when_there_are_more():
    names = [f"a.{i}.w" for i in range(3)]
    assert suggest_exact("w", names) == "a.0.w, a.1.w, a.2.w"
    assert suggest_exact("w", names + ["a.3.w"]) == "a.0.w, a.1.w, a.2.w ..."
    assert suggest_exact("a.0", ["a.0.w", "a.0.v"]) == "a.0."
    assert suggest_exact("a.0", ["x.a.0.w"]) == "a.0."
    assert suggest_exact("a.0.w", ["a.0.w"]) == "a.0.w"
    assert suggest_exact("a.0.", ["a.0.w", "a.0.v"]) == "a.0.w, a.0.v"


def test_an_ambiguous_filter_names_what_else_it_hits_and_the_exact_form(model_factory):
    t = model_factory("pf-t12", layers=12, seed=0, tokenizer=False)
    d = model_factory("pf-d12", layers=12, seed=1, tokenizer=False)
    also = sorted(n for n in load_file(t / "model.safetensors") if n.startswith(("model.layers.10.", "model.layers.11.")))
    report = run_check(recipe(t, (d, {"model.layers.1": 1.0})))
    assert report.errors == [f"filter 'model.layers.1' (donor {d}) is ambiguous: it also matches {also[0]} and "
                             f"{len(also) - 1} more; use model.layers.1."]
    report = run_check(recipe(t, (d, {"model.layers.10.mlp.up_pro": 1.0})))
    assert report.errors == [f"filter 'model.layers.10.mlp.up_pro' (donor {d}) is ambiguous: it also matches "
                             "model.layers.10.mlp.up_proj.weight; use an exact tensor name"]
    report = run_check(recipe(t, (d, {"model.layers.1.mlp.dwn_proj": 1.0, "model.layers.2.mlp.dwn": 1.0})))
    assert report.errors == [
        f"filter 'model.layers.1.mlp.dwn_proj' (donor {d}) matches no tensor of the target {t}",
        f"filter 'model.layers.2.mlp.dwn' (donor {d}) matches no tensor of the target {t}"]
    assert run_check(recipe(t, (d, {"model.layers.1.": 1.0}))).ok


def test_an_ambiguous_filter_with_exactly_two_other_matches_says_one_more(model_factory):
    t = model_factory("pf-t2", layers=2, seed=0, tokenizer=False)
    d = model_factory("pf-d2l", layers=2, seed=1, tokenizer=False)
    report = run_check(recipe(t, (d, {"mlp.up_pro": 1.0})))
    assert report.errors == [f"filter 'mlp.up_pro' (donor {d}) is ambiguous: it also matches "
                             "model.layers.0.mlp.up_proj.weight and 1 more; use an exact tensor name"]


def test_a_zero_strength_donor_listed_first_does_not_hide_the_next_one(zoo):
    """Each tensor's inputs are all looked at: a donor at 0 first, then the transplanted one, then the target."""
    t, d, d2 = zoo["t"], zoo["d"], zoo["d2"]
    report = run_check(recipe(t, (d2, {}), (d, {UP2: 1.0})))
    assert [(row.tensor, row.donor) for row in report.rows] == [(UP2, str(d))]
    assert report.warnings == [f"donor {d2} contributes nothing: every strength resolves to 0"]


@pytest.mark.parametrize("filt,name,clean", [
    (".mlp.", "model.layers.0.mlp.up_proj.weight", True),  # a filter's own dots are boundaries
    ("mlp.", "model.layers.0.xmlp.mlp.w", False),  # the first occurrence is mid-word, the second clean
    ("1", "a.1.11.b", False),
    ("11", "a.111.b", False),
    ("11", "a.11.b.11", True),
])
def test_clean_match_checks_every_occurrence(filt, name, clean):
    from mergekit_transplant.preflight import is_clean_match

    assert is_clean_match(filt, name) is clean
