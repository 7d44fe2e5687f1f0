"""Property tests: no input crashes the recipe parser, and strengths resolve exactly as mergekit's.

1. Arbitrary text, and arbitrary nested dict/list/scalar documents dumped to
   YAML (plain ones and recipe-shaped ones), make ``parse_recipe`` either
   return a Recipe or raise ``TransplantError``, never anything else.
2. For generated filter lists (per-donor and top-level, with or without a
   catch-all), the per-tensor strength the plugin resolves
   (``adapter.planning.resolve_strengths``, what ``check`` shows) equals mergekit's own
   ``evaluate_setting`` and an independent first-match-wins reference.
3. For a few generated filter lists, a real mergekit merge writes exactly
   ``lerp(target, donor, s)`` per tensor.

max_examples are modest so the file runs in well under a minute.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.adapter.planning import resolve_strengths
from mergekit_transplant.recipe import TOP_LEVEL_KEYS, parse_recipe
from mergekit_transplant.testing import load_state, perturbed_copy

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _parses_or_refuses(text: str) -> None:
    try:
        recipe = parse_recipe(text)
    except TransplantError as error:
        assert str(error)  # a message, never empty
        return
    # a recipe that parsed must answer its basic questions without crashing
    assert isinstance(recipe.target, str) and isinstance(recipe.donors, list)
    recipe.filters()


# --------------------------------------------------------------------------- 1. never an uncaught exception


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    _parses_or_refuses(text)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["transplant", "linear", "model.layers.1.", "*", "float32", ""]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(sorted(TOP_LEVEL_KEYS))), children,
                        max_size=4),
    ),
    max_leaves=25,
)


@FAST
@given(documents)
def test_arbitrary_structures_dumped_to_yaml(doc):
    _parses_or_refuses(yaml.safe_dump(doc))


model_names = st.sampled_from(["a", "b", "org/model", "org/model@rev", "./local", "a+lora"])
strength_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=5), st.none(), st.lists(st.floats(-2, 2), max_size=3), st.just(10**400),
)
conditions = st.lists(
    st.one_of(
        st.fixed_dictionaries({"filter": st.one_of(st.text(max_size=10), st.integers()), "value": strength_values}),
        st.fixed_dictionaries({"value": strength_values}),
        strength_values,
    ),
    max_size=4,
)
param_blocks = st.one_of(
    st.none(), st.fixed_dictionaries({"strength": st.one_of(strength_values, conditions)}),
    st.dictionaries(st.sampled_from(["strength", "weight", "allow_extrapolation", "density"]),
                    st.one_of(strength_values, conditions, st.booleans()), max_size=2),
)
recipes = st.fixed_dictionaries(
    {"merge_method": st.sampled_from(["transplant", "transplant", "linear", None]),
     "base_model": st.one_of(model_names, st.none(), st.integers(),
                             st.fixed_dictionaries({"model": st.fixed_dictionaries({"path": model_names})})),
     "models": st.one_of(
         st.lists(st.fixed_dictionaries({"model": model_names, "parameters": param_blocks}), max_size=3),
         st.lists(st.one_of(model_names, st.integers()), max_size=2), st.none())},
    optional={"parameters": param_blocks, "dtype": st.sampled_from(["float32", "bfloat16", "int8", "", None]),
              "slices": st.lists(st.dictionaries(st.sampled_from(["sources", "x"]), st.lists(
                  st.fixed_dictionaries({"model": model_names, "layer_range": st.lists(st.integers(-2, 5), max_size=3)}),
                  max_size=2), max_size=2), max_size=2)},
)


@FAST
@given(recipes)
def test_recipe_shaped_documents(doc):
    _parses_or_refuses(yaml.safe_dump(doc))


# --------------------------------------------------------------------------- 2. resolution equals mergekit's


@pytest.fixture(scope="module")
def tiny_pair(model_factory, tmp_path_factory):
    t = model_factory("prop-t", layers=12, hidden=16, intermediate=32, seed=0, tokenizer=False)
    from mergekit_transplant.testing import linear_weight_names

    d = perturbed_copy(t, tmp_path_factory.mktemp("prop") / "d", linear_weight_names(t), seed=7)
    return t, d, sorted(load_state(t))


FRAGMENTS = [
    "mlp", "self_attn", "q_proj", "down_proj.weight", "model.layers.1", "model.layers.1.", "layers.11.",
    "layers.2.mlp", "norm", "embed_tokens", "lm_head", "weight", ".bias", "model.layers.1.mlp.up_proj.weight",
    "nothing_matches", "*", "o_proj", "input_layernorm",
]
filter_lists = st.lists(
    st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.3])), min_size=0, max_size=5)


def _condition_list(pairs, catch_all):
    out = [{"filter": f, "value": v} for f, v in pairs]
    if catch_all is not None:
        out.append({"value": catch_all})
    return out


def reference_strength(name, per_model, top_level) -> float:
    """First matching condition of the donor's list, then the top-level list, then 0."""
    for conds in (per_model, top_level):
        for c in conds or []:
            f = c.get("filter")
            if f is None or f == "*" or f in name:
                return float(c["value"])
    return 0.0


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(per_model=filter_lists, catch=st.sampled_from([None, 0.0, 0.1]), top=filter_lists,
       top_catch=st.sampled_from([None, 0.0, 0.2]))
def test_resolved_strength_equals_mergekit(tiny_pair, per_model, catch, top, top_catch):
    from mergekit.config import ConditionalParameter, evaluate_setting

    t, d, names = tiny_pair
    model_conds = _condition_list(per_model, catch)
    top_conds = _condition_list(top, top_catch)
    mk_model = [ConditionalParameter.model_validate(c) for c in model_conds]
    mk_top = [ConditionalParameter.model_validate(c) for c in top_conds]
    doc = {"merge_method": "transplant", "base_model": str(t),
           "models": [{"model": str(d), "parameters": {"strength": model_conds}}]}
    if top_conds:
        doc["parameters"] = {"strength": top_conds}
    planned = {p.name: p.donor_strengths()[str(d)] for p in resolve_strengths(parse_recipe(yaml.safe_dump(doc)))}
    assert set(planned) >= set(names) - {"lm_head.weight"}  # every tensor mergekit writes
    for name, strength in planned.items():
        assert strength == reference_strength(name, model_conds, top_conds), name
        mk = evaluate_setting(name, mk_model, validate=float) if mk_model else None
        if mk is None and mk_top:
            mk = evaluate_setting(name, mk_top, validate=float)
        assert strength == (0.0 if mk is None else mk), name


# --------------------------------------------------------------------------- 3. a real mergekit run


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(per_model=filter_lists.filter(lambda x: any(v not in (0.0,) for _, v in x)),
       catch=st.sampled_from([None, 0.0, 0.1]))
def test_real_merge_is_lerp_of_resolved_strength(tiny_pair, per_model, catch):
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    import mergekit_transplant

    mergekit_transplant.register()
    t, d, names = tiny_pair
    conds = _condition_list(per_model, catch)
    doc = {"merge_method": "transplant", "base_model": str(t), "dtype": "float32",
           "models": [{"model": str(d), "parameters": {"strength": conds}}]}
    target, donor = load_state(t), load_state(d)
    with tempfile.TemporaryDirectory() as out:
        run_merge(MergeConfiguration.model_validate(doc), out,
                  options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
        merged = load_state(Path(out))
    assert set(merged) == set(target)
    for name, tensor in merged.items():
        s = reference_strength(name, conds, [])
        if s == 0.0:
            expected = target[name]
        elif s == 1.0:
            expected = donor[name]
        else:
            expected = torch.lerp(target[name].float(), donor[name].float(), s).to(target[name].dtype)
        assert torch.equal(tensor, expected), (name, s)
        if 0.0 < s < 1.0 and not torch.equal(target[name], donor[name]):
            assert not torch.equal(tensor, target[name]) and not math.isnan(float(tensor.sum()))
