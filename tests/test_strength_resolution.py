"""Recipe strength resolution: the numbers a recipe may hold, and what each tensor's strengths resolve to.

``check`` and ``merge`` both stand on these: ``_check_strength_values``
refuses a bad number before any model is touched, with one message naming
it; ``resolve_strengths`` runs mergekit's own planner dry and records, per
output tensor, which models feed it at which strength. The references here
are the recipe's own numbers and mergekit's architecture description, never
a second call of the code under test. In process and fast, so
``make mutation`` runs them against every mutant (docs/testing.md).
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mergekit_transplant.adapter.planning import resolve_strengths
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.recipe import (
    PlannedInput,
    PlannedTensor,
    Selection,
    _check_strength_values,
    parse_recipe,
    render_recipe,
)
from mergekit_transplant.testing import make_model

MLP_DOWN_1 = "model.layers.1.mlp.down_proj.weight"
Q_PROJ_0 = "model.layers.0.self_attn.q_proj.weight"
LM_HEAD = "lm_head.weight"
EMBED = "model.embed_tokens.weight"
OUTSIDE = "(set parameters.allow_extrapolation: true to permit it)"


# --------------------------------------------------------------------------- the numbers a recipe may hold


def doc(strength, *, where="model", allow=None):
    """A recipe dict with ``strength`` on the donor's block (or the top-level block)."""
    data = {"merge_method": "transplant", "base_model": "t", "models": [{"model": "t"}, {"model": "d"}]}
    if where == "model":
        data["models"][1]["parameters"] = {"strength": strength}
    else:
        data["parameters"] = {"strength": strength}
    if allow is not None:
        data.setdefault("parameters", {})["allow_extrapolation"] = allow
    return data


@pytest.mark.parametrize("strength,message", [
    (float("nan"), "r.yml: strength nan for d is not finite"),
    (float("inf"), "r.yml: strength inf for d is not finite"),
    (-0.5, f"r.yml: strength -0.5 for d is outside [0, 1] {OUTSIDE}"),
    (1.5, f"r.yml: strength 1.5 for d is outside [0, 1] {OUTSIDE}"),
    (2, f"r.yml: strength 2 for d is outside [0, 1] {OUTSIDE}"),
    (True, "r.yml: strength True for d is not a number"),
    ("0.5", "r.yml: strength '0.5' for d is not a number"),
    (2**53 + 1, "r.yml: strength 900719925474... for d is out of range"),
    ([{"filter": "mlp", "value": 0.5}, {"value": 1.0000001}],
     f"r.yml: strength 1.0000001 for d is outside [0, 1] {OUTSIDE}"),
    ([0.0, [0.5, -1e-9]], f"r.yml: strength -1e-09 for d is outside [0, 1] {OUTSIDE}"),
    ({"filter": "mlp", "value": [0.25, 7]}, f"r.yml: strength 7 for d is outside [0, 1] {OUTSIDE}"),
])
def test_bad_strengths_are_refused_with_one_exact_message(strength, message):
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc(strength), "r.yml")
    assert str(error.value) == message


def test_a_bad_top_level_strength_names_all_models():
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc(-1, where="top"), "r.yml")
    assert str(error.value) == f"r.yml: strength -1 for all models is outside [0, 1] {OUTSIDE}"
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc(float("nan"), where="top"), "r.yml")
    assert str(error.value) == "r.yml: strength nan for all models is not finite"
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc("x", where="top"), "r.yml")
    assert str(error.value) == "r.yml: strength 'x' for all models is not a number"
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc(-(2**60), where="top"), "r.yml")
    assert str(error.value) == "r.yml: strength -11529215046... for all models is out of range"


@pytest.mark.parametrize("strength", [0, 0.0, 1, 1.0, 0.5, [0.0, 1.0], [{"filter": "mlp", "value": 1}, {"value": 0}],
                                      {"value": 0.25}, [None, 0.5], None])
def test_strengths_in_range_pass(strength):
    _check_strength_values(doc(strength), "r.yml")
    _check_strength_values(doc(strength, where="top"), "r.yml")


@pytest.mark.parametrize("strength", [1.5, -0.5, [2.0, -3.0], 2**53, -(2**53)])
def test_allow_extrapolation_permits_any_finite_strength_only(strength):
    _check_strength_values(doc(strength, allow=True), "r.yml")
    with pytest.raises(TransplantError):
        _check_strength_values(doc(strength, allow=False), "r.yml")
    with pytest.raises(TransplantError) as error:
        _check_strength_values(doc(float("inf"), allow=True), "r.yml")
    assert str(error.value) == "r.yml: strength inf for d is not finite"


def test_slices_and_their_sources_are_checked_too():
    data = {"merge_method": "transplant", "base_model": "t", "slices": [{
        "parameters": {"strength": 0.5},
        "sources": [{"model": "t", "layer_range": [0, 2]},
                    {"model": "d", "layer_range": [0, 2], "parameters": {"strength": 3}}]}]}
    with pytest.raises(TransplantError) as error:
        _check_strength_values(data, "r.yml")
    assert str(error.value) == f"r.yml: strength 3 for d is outside [0, 1] {OUTSIDE}"
    data["slices"][0]["sources"][1]["parameters"]["strength"] = 1
    data["slices"][0]["parameters"]["strength"] = -2
    with pytest.raises(TransplantError) as error:
        _check_strength_values(data, "r.yml")
    assert str(error.value) == f"r.yml: strength -2 for all models is outside [0, 1] {OUTSIDE}"


def test_parse_recipe_runs_the_strength_check_with_the_files_name(tmp_path):
    text = yaml.safe_dump(doc(1.5))
    with pytest.raises(TransplantError) as error:
        parse_recipe(text, tmp_path / "r.yml")
    assert str(error.value) == f"{tmp_path / 'r.yml'}: strength 1.5 for d is outside [0, 1] {OUTSIDE}"
    with pytest.raises(TransplantError) as error:
        parse_recipe(text)
    assert str(error.value) == f"recipe: strength 1.5 for d is outside [0, 1] {OUTSIDE}"


# --------------------------------------------------------------------------- what each tensor resolves to


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolve")
    return {"target": make_model(root / "target", seed=0, tokenizer=False),
            "donor": make_model(root / "donor", seed=1, tokenizer=False),
            "tied": make_model(root / "tied", seed=2, tokenizer=False, tie=True)}


def mergekits_weights(model) -> dict:
    """{name: WeightInfo} as mergekit's architecture description lists them (the reference)."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(
        {"merge_method": "transplant", "base_model": str(model), "models": [{"model": str(model)}]})
    arch = get_architecture_info(config, MergeOptions())
    return {w.name: w for w in arch.all_weights(config.base_model.config(trust_remote_code=False))}


def test_each_tensor_resolves_to_the_recipes_strengths(models):
    target, donor = str(models["target"]), str(models["donor"])
    sels = [Selection(MLP_DOWN_1, donor, 1.0), Selection(Q_PROJ_0, donor, 0.25)]
    planned = resolve_strengths(parse_recipe(render_recipe(target, sels)))
    weights = mergekits_weights(models["target"])
    assert [p.name for p in planned] == list(weights)  # every output tensor, in mergekit's order
    expected = {MLP_DOWN_1: 1.0, Q_PROJ_0: 0.25}
    for p in planned:
        w = weights[p.name]
        assert (p.name, p.optional, p.alternatives) == (
            w.name, w.optional, tuple(w.aliases or ()) + tuple(w.tied_names or ()))
        assert sorted(p.inputs, key=lambda i: i.model != target) == [  # in mergekit's order; target first here
            PlannedInput(model=target, tensor=w.name, strength=None),
            PlannedInput(model=donor, tensor=w.name, strength=expected.get(w.name, 0.0))]
        assert len(p.inputs) == 2
        assert p.donor_strengths() == {donor: expected.get(w.name, 0.0)}
    # the reference is not vacuous: lm_head is optional and may be read as the tied embedding
    assert planned[-1].name == LM_HEAD and planned[-1].optional and EMBED in planned[-1].alternatives


def test_a_gradient_resolves_per_layer(models):
    target, donor = str(models["target"]), str(models["donor"])
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": target,
                           "models": [{"model": target}, {"model": donor, "parameters": {"strength": [0.0, 1.0]}}]})
    strengths = {p.name: p.donor_strengths()[donor] for p in resolve_strengths(parse_recipe(text))}
    assert strengths[Q_PROJ_0] == 0.0 and strengths[MLP_DOWN_1] == 1.0


def test_donor_strengths_leave_out_the_target_and_read_none_as_zero():
    planned = PlannedTensor(name="w", optional=False, inputs=(
        PlannedInput("t", "w", None), PlannedInput("d", "w", 0.5), PlannedInput("e", "w", 0.0)))
    assert planned.donor_strengths() == {"d": 0.5, "e": 0.0}
    assert all(type(v) is float for v in planned.donor_strengths().values())
    assert PlannedTensor("w", False, (PlannedInput("t", "w", None), PlannedInput("d", "w", 1))).donor_strengths() \
        == {"d": 1.0}


def remote_model(models, tmp_path):
    """A copy of the target whose config asks for custom code that creates a marker file when imported."""
    import shutil

    model = tmp_path / "custom"
    shutil.copytree(models["target"], model)
    marker = tmp_path / "remote-code-ran"
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="evil_custom", architectures=["EvilForCausalLM"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_custom'\n")
    return model, marker


def test_resolution_reads_no_remote_code_unless_asked(models, tmp_path):
    """A model asking for custom code: refused as an input error, and the code never runs."""
    from mergekit_transplant.adapter.planning import plan_config

    model, marker = remote_model(models, tmp_path)
    recipe = parse_recipe(render_recipe(str(model), [Selection(MLP_DOWN_1, str(model), 1.0)]))
    with pytest.raises(TransplantError) as error:
        resolve_strengths(recipe)
    assert str(error.value).startswith("mergekit cannot plan this recipe: ")
    assert "trust_remote_code" in str(error.value) and not marker.exists()
    with pytest.raises(TransplantError):
        resolve_strengths(recipe, trust_remote_code=False)
    with pytest.raises(TransplantError):  # the download hook's entry point: the same default
        plan_config(recipe.config)
    assert not marker.exists()


def test_trust_remote_code_reaches_mergekit(models, tmp_path):
    """Positive control: asked to, resolution loads the model's own code (the payload is real)."""
    model, marker = remote_model(models, tmp_path)
    recipe = parse_recipe(render_recipe(str(model), [Selection(MLP_DOWN_1, str(model), 1.0)]))
    try:
        resolve_strengths(recipe, trust_remote_code=True)
    except TransplantError as error:  # mergekit may still not know the architecture; it got past the config
        assert "trust_remote_code" not in str(error)
    assert marker.exists()


def test_a_bug_in_resolution_is_not_blamed_on_the_recipe(models, monkeypatch):
    """A TypeError inside our planner subclass reaches the caller as itself (exit 1), not as an input error."""
    from mergekit_transplant.adapter import registration

    def broken(*args, **kwargs):
        raise TypeError("a bug in the plugin")

    monkeypatch.setattr(registration, "per_input_parameters", broken)
    recipe = parse_recipe(render_recipe(str(models["target"]), [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    with pytest.raises(TypeError, match="a bug in the plugin"):
        resolve_strengths(recipe)


def test_mergekits_refusal_is_an_input_error(models, tmp_path):
    """A donor with a config mergekit cannot read: one input error naming mergekit's reason."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    recipe = parse_recipe(render_recipe(str(broken), [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    with pytest.raises(TransplantError) as error:
        resolve_strengths(recipe)
    assert str(error.value).startswith("mergekit cannot plan this recipe: ")


def test_resolution_is_quiet(models, capsys):
    recipe = parse_recipe(render_recipe(str(models["target"]), [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    resolve_strengths(recipe)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_strengths_are_floats(models):
    target, donor = str(models["target"]), str(models["donor"])
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": target,
                           "models": [{"model": target}, {"model": donor, "parameters": {"strength": 1}}]})
    planned = resolve_strengths(parse_recipe(text))
    assert all(type(p.inputs[1].strength) is float and p.inputs[1].strength == 1.0 for p in planned)
    assert all(not math.isnan(p.inputs[1].strength) for p in planned)
