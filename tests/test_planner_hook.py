"""The planner hook and the read hints, in process and in seconds: what mergekit is asked to read.

tests/test_reads.py runs whole merges and counts the reads; these tests run
mergekit's own planner (``MergePlanner._plan``: model configs and safetensors
headers only, no tensor data) with the plugin's hook installed, and look at
the plan it made: which models each output tensor gathers, and which donor
tensors the read hints will prefetch, byte for byte (counted in the page
cache, tests/pagecache.py). Fast enough for ``make mutation`` to run them
against every mutant of the hook and of read planning (docs/testing.md).
"""

from __future__ import annotations

import json
import logging
import struct
import types
from pathlib import Path

import pytest
import yaml
from transformers import LlamaForCausalLM  # noqa: F401  (imported once here, not in every mutant's process)

from mergekit_transplant.adapter import policy, read_hints, registration
from mergekit_transplant.recipe import Selection
from mergekit_transplant.testing import make_model
from tests import pagecache
from tests.mergekit_plans import Recording, loader, plan, transplant_recipe

MLP_DOWN_1 = "model.layers.1.mlp.down_proj.weight"
Q_PROJ_0 = "model.layers.0.self_attn.q_proj.weight"
UP_PROJ_0 = "model.layers.0.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """No tokenizers (building one costs seconds; only the merged-tokenizer test needs them)."""
    root = tmp_path_factory.mktemp("hook")
    return {
        "target": make_model(root / "target", seed=0, tokenizer=False),
        "donor": make_model(root / "donor", seed=1, tokenizer=False),
        "donor2": make_model(root / "donor2", seed=2, tokenizer=False),
    }


@pytest.fixture(scope="module")
def with_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook-tok")
    return {"target": make_model(root / "target", seed=0), "donor": make_model(root / "donor", seed=1)}


def hint_plan(model: Path):
    """What the read hints will prefetch from ``model`` (None: nothing noted for it)."""
    found = read_hints._PLANS.get(loader(model))
    return None if found is None else (sorted(found.names), found.partial)


# --------------------------------------------------------------------------- what each tensor gathers


def test_donors_are_gathered_only_where_their_strength_is_nonzero(models, monkeypatch):
    sels = [Selection(MLP_DOWN_1, str(models["donor"]), 1.0), Selection(Q_PROJ_0, str(models["donor"]), 0.5),
            Selection(UP_PROJ_0, str(models["donor2"]), 1.0)]
    text = transplant_recipe(models["target"], sels)
    hooked = plan(text)
    expected = {name: ["target"] for name in hooked}
    expected.update({MLP_DOWN_1: ["donor", "target"], Q_PROJ_0: ["donor", "target"],
                     UP_PROJ_0: ["donor2", "target"]})
    assert hooked == expected
    # the hints will prefetch exactly those donor tensors; the target is read whole, with no hint
    assert hint_plan(models["donor"]) == (sorted([MLP_DOWN_1, Q_PROJ_0]), True)
    assert hint_plan(models["donor2"]) == ([UP_PROJ_0], True)
    assert hint_plan(models["target"]) is None

    # MERGEKIT_TRANSPLANT_READ_ALL=1, read when the tensor is planned: mergekit's own plan, every model everywhere
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    assert plan(text) == {name: ["donor", "donor2", "target"] for name in hooked}


@pytest.mark.parametrize("value,on", [("", False), ("0", False), ("false", False), (" No ", False),
                                      ("FALSE", False), ("1", True), ("yes", True), ("true", True)])
def test_read_all_switch_values(monkeypatch, value, on):
    monkeypatch.setenv(registration.READ_ALL_ENV, value)
    assert registration.read_all_requested() is on


def test_read_all_unset_means_the_hook_plans(monkeypatch):
    monkeypatch.delenv(registration.READ_ALL_ENV, raising=False)
    assert registration.read_all_requested() is False


def test_a_donor_at_zero_everywhere_is_never_gathered_nor_hinted(models):
    data = yaml.safe_load(transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    data["models"].append({"model": str(models["donor2"]), "parameters": {"strength": 0.0}})
    planned = plan(yaml.safe_dump(data))
    assert all("donor2" not in gathered for gathered in planned.values())
    assert planned[MLP_DOWN_1] == ["donor", "target"]
    assert hint_plan(models["donor2"]) == ([], True)  # noted as partial, nothing to prefetch


def test_a_donor_transplanted_everywhere_is_gathered_everywhere_and_not_prefetched(models):
    """Nothing to drop: mergekit's own plan, and no hint (the whole file is read anyway)."""
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": str(models["target"]),
                           "models": [{"model": str(models["target"])},
                                      {"model": str(models["donor"]), "parameters": {"strength": 0.25}}]})
    planned = plan(text)
    assert planned and all(gathered == ["donor", "target"] for gathered in planned.values())
    names, partial = hint_plan(models["donor"])
    assert partial is False and set(planned) <= set(names)


def test_an_integer_zero_strength_drops_the_donor_and_a_tiny_one_keeps_it(models):
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": str(models["target"]), "models": [
        {"model": str(models["target"])},
        {"model": str(models["donor"]), "parameters": {"strength": [
            {"filter": MLP_DOWN_1, "value": 1e-12}, {"value": 0}]}}]})
    planned = plan(text)
    assert planned[MLP_DOWN_1] == ["donor", "target"]
    assert all(gathered == ["target"] for name, gathered in planned.items() if name != MLP_DOWN_1)


def test_a_gradient_drops_the_donor_only_where_it_resolves_to_zero(models):
    """strength [0, 1] over two layers: layer 0 at 0 (not read), layer 1 at 1 (read); resolved at each layer's t."""
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": str(models["target"]), "models": [
        {"model": str(models["target"])}, {"model": str(models["donor"]), "parameters": {"strength": [0.0, 1.0]}}]})
    planned = plan(text)
    layer0 = [n for n in planned if n.startswith("model.layers.0.")]
    layer1 = [n for n in planned if n.startswith("model.layers.1.")]
    assert layer0 and layer1
    assert all(planned[n] == ["target"] for n in layer0)
    assert all(planned[n] == ["donor", "target"] for n in layer1)


@pytest.mark.parametrize("strength,zero", [(0, True), (0.0, True), (-0.0, True), (1e-300, False), (1, False),
                                           (False, False), (None, False), ("0", False)])
def test_what_counts_as_zero_strength(strength, zero):
    """Only a real number equal to 0 drops a donor; anything mergekit might pass otherwise keeps it."""
    assert registration._is_zero(strength) is zero


def test_other_merge_methods_are_planned_as_usual(models):
    text = yaml.safe_dump({"merge_method": "linear",
                           "models": [{"model": str(models["target"]), "parameters": {"weight": 1.0}},
                                      {"model": str(models["donor"]), "parameters": {"weight": 0.0}}]})
    planned = plan(text)
    assert planned and all(gathered == ["donor", "target"] for gathered in planned.values())


@pytest.mark.parametrize("tie_target,tie_donor,lm_head_gathers", [
    (True, True, None),  # nobody has lm_head: not written at all
    (True, False, ["d", "t"]),  # only the zero-strength donor has it: kept, or the output would lose it
    (False, True, ["t"]),  # the target has it: the donor is not read for it
    (False, False, ["t"]),
], ids=["both-tied", "target-tied-donor-not", "donor-tied-target-not", "neither-tied"])
def test_optional_lm_head_is_written_exactly_as_mergekit_would(tmp_path, monkeypatch, tie_target, tie_donor,
                                                               lm_head_gathers):
    target = make_model(tmp_path / "t", seed=0, tie=tie_target, tokenizer=False)
    donor = make_model(tmp_path / "d", seed=1, tie=tie_donor, tokenizer=False)
    text = transplant_recipe(target, [Selection(MLP_DOWN_1, str(donor), 1.0)])
    hooked = plan(text)
    assert hooked.get(LM_HEAD) == lm_head_gathers
    assert hooked[MLP_DOWN_1] == ["d", "t"]
    assert hooked[EMBED] == ["t"]
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    assert sorted(plan(text)) == sorted(hooked)  # the same output tensors as mergekit's own plan


def test_a_merged_tokenizer_still_gathers_every_embedding(with_tokenizers):
    """tokenizer_source builds the vocabulary from every model: embeddings are not dropped."""
    models = with_tokenizers
    text = transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)],
                             tokenizer_source="union")
    planned = plan(text)
    assert planned[EMBED] == ["donor", "target"] and planned[LM_HEAD] == ["donor", "target"]
    assert planned[MLP_DOWN_1] == ["donor", "target"]
    assert all(gathered == ["target"] for name, gathered in planned.items() if name not in (EMBED, LM_HEAD, MLP_DOWN_1))


def test_without_a_merged_tokenizer_embeddings_follow_their_strength(models):
    text = transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)])
    planned = plan(text)
    assert planned[EMBED] == ["target"] and planned[LM_HEAD] == ["target"]


def test_a_resolver_that_breaks_makes_the_hook_step_aside_per_tensor(models, monkeypatch):
    import mergekit.parameter_resolver

    text = transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)])
    calls = []
    real = mergekit.parameter_resolver.resolve_parameters

    def resolve_parameters(*args, **kwargs):
        calls.append(kwargs.get("tensor_name"))
        if len(calls) == 1:
            raise RuntimeError("a resolver the hook was not written for")
        return real(*args, **kwargs)

    monkeypatch.setattr(mergekit.parameter_resolver, "resolve_parameters", resolve_parameters)
    planned = plan(text)
    first = calls[0]
    assert planned[first] == ["donor", "target"]  # that one tensor: mergekit's own plan
    assert sum(gathered == ["donor", "target"] for gathered in planned.values()) == 1 + (first != MLP_DOWN_1)


# --------------------------------------------------------------------------- reads_needed on a real planner's arguments


@pytest.fixture
def real_call(models):
    """(planner, weight, weights_in, models, cfg_reader) for MLP_DOWN_1 of a one-tensor transplant."""
    record = Recording()
    plan(transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]), record)
    return {c[1].name: c for c in record.calls}


def test_reads_needed_drops_exactly_the_zero_strength_donor(real_call):
    planner, weight, weights_in, models_, cfg = real_call[UP_PROJ_0]
    kept_w, kept_m = registration.reads_needed(planner, weight, weights_in, models_, cfg)
    assert kept_m == [cfg.base_model] and [w.name for w in kept_w] == [UP_PROJ_0]
    assert registration.reads_needed(planner, *real_call[MLP_DOWN_1][1:]) is None  # nothing to drop


def test_reads_needed_per_input_parameters_are_mergekits(real_call):
    planner, weight, weights_in, models_, cfg = real_call[MLP_DOWN_1]
    per_input = registration.per_input_parameters(planner, weight, weights_in, models_, cfg)
    donor = next(m for m in models_ if m != cfg.base_model)
    assert per_input[donor]["strength"] == 1.0
    assert per_input[cfg.base_model] == {}  # the target gets no per-donor parameter: mergekit knows it is the base
    planner, weight, weights_in, models_, cfg = real_call[UP_PROJ_0]
    assert registration.per_input_parameters(planner, weight, weights_in, models_, cfg)[donor]["strength"] == 0.0


def test_reads_needed_steps_aside_where_it_cannot_tell(real_call):
    planner, weight, weights_in, models_, cfg = real_call[UP_PROJ_0]
    donor = next(m for m in models_ if m != cfg.base_model)
    no_base = cfg.model_copy(update={"config": cfg.config.model_copy(update={"base_model": None})})
    assert registration.reads_needed(planner, weight, weights_in, models_, no_base) is None
    assert registration.reads_needed(planner, weight, weights_in[1:], [donor], cfg) is None  # base not an input
    assert registration.reads_needed(planner, weight, weights_in[:1], models_, cfg) is None  # lengths differ


def test_the_hook_passes_mergekit_the_kept_inputs_by_name(real_call):
    """``_hooked_plan_tensor`` hands the original exactly the kept inputs, whatever way it was called."""
    planner, weight, weights_in, models_, cfg = real_call[UP_PROJ_0]
    seen = []

    def original(self, weight, weights_in, models, cfg_reader):
        seen.append((self, weight, list(weights_in), list(models), cfg_reader))
        return "planned"

    import inspect

    sig = inspect.signature(original)
    out = registration._hooked_plan_tensor(original, sig, planner, (weight, weights_in), {"models": models_,
                                                                                          "cfg_reader": cfg})
    assert out == "planned"
    assert seen == [(planner, weight, [weights_in[models_.index(cfg.base_model)]], [cfg.base_model], cfg)]


# --------------------------------------------------------------------------- the read hints, bytes counted


def independent_ranges(path: Path) -> dict:
    """{tensor: (begin, end)} from the safetensors format itself (u64 header length, JSON, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def test_tensor_ranges_are_the_files_own_offsets(models):
    path = models["donor"] / "model.safetensors"
    assert read_hints.tensor_ranges(str(path)) == independent_ranges(path)


def resident_outside(path: Path, begin: int, end: int) -> int:
    """Pages of ``path`` in the page cache outside ``[begin, end)`` rounded out to whole pages."""
    first, last = begin // pagecache.PAGE, (end + pagecache.PAGE - 1) // pagecache.PAGE
    return sum(r for i, r in enumerate(pagecache.resident_pages(path)) if not first <= i < last)


def require_eviction(path: Path) -> None:
    if not pagecache.eviction_works(path):
        pytest.skip(f"the page cache of {path.parent} cannot be evicted here (tmpfs?), so reads cannot be counted")


def test_prefetch_reads_exactly_the_range_with_read_ahead_off(models):
    path = models["donor"] / "model.safetensors"
    require_eviction(path)
    begin, end = independent_ranges(path)[MLP_DOWN_1]
    pagecache.evict([path])
    assert read_hints.prefetch_range(str(path), begin, end) == end - begin
    pages = pagecache.resident_pages(path)
    assert all(pages[begin // pagecache.PAGE: (end - 1) // pagecache.PAGE + 1])  # all of it
    assert resident_outside(path, begin, end) == 0  # and nothing around it


def test_prefetch_in_chunks_larger_than_one_request(models, monkeypatch):
    path = models["donor"] / "model.safetensors"
    begin, end = independent_ranges(path)[MLP_DOWN_1]
    monkeypatch.setattr(read_hints, "PREFETCH_CHUNK", 4096 + 512)
    assert read_hints.prefetch_range(str(path), begin, end) == end - begin
    assert read_hints.prefetch_range(str(path), end, end) == 0


def test_planned_donor_tensors_are_prefetched_and_nothing_else(models):
    """After planning, mergekit's loader asks for a kept tensor: exactly its bytes come in first."""
    path = models["donor"] / "model.safetensors"
    require_eviction(path)
    plan(transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    begin, end = independent_ranges(path)[MLP_DOWN_1]
    donor_loader = loader(models["donor"])

    pagecache.evict([path])
    read_hints._before_get_tensor(donor_loader, UP_PROJ_0)  # dropped (strength 0): no hint
    assert pagecache.resident_bytes(path) == 0
    read_hints._hint_tensor(donor_loader, MLP_DOWN_1)
    assert resident_outside(path, begin, end) == 0
    assert pagecache.resident_bytes(path) >= end - begin

    target_path = models["target"] / "model.safetensors"
    pagecache.evict([target_path])
    read_hints._hint_tensor(loader(models["target"]), MLP_DOWN_1)  # the target: read by mergekit as usual
    assert pagecache.resident_bytes(target_path) == 0


def test_hints_are_off_with_read_all(models, monkeypatch):
    path = models["donor"] / "model.safetensors"
    require_eviction(path)
    plan(transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    pagecache.evict([path])
    read_hints._hint_tensor(loader(models["donor"]), MLP_DOWN_1)
    assert pagecache.resident_bytes(path) == 0


def test_note_donor_reads_accumulates_names_and_partial():
    class Loader:
        pass

    one = Loader()
    read_hints.note_donor_reads(one, ["a"], partial=False)
    read_hints.note_donor_reads(one, ["b", "a"], partial=True)
    read_hints.note_donor_reads(one, [], partial=False)  # a later full tensor does not undo "partial"
    assert (sorted(read_hints._PLANS[one].names), read_hints._PLANS[one].partial) == (["a", "b"], True)
    other = Loader()
    read_hints.note_donor_reads(other, ["c"], partial=False)
    assert (sorted(read_hints._PLANS[other].names), read_hints._PLANS[other].partial) == (["c"], False)


# --------------------------------------------------------------------------- edges the merges above cannot tell apart


@pytest.fixture
def tied_calls(tmp_path):
    """{case: {tensor: a real planner's arguments}} for the three tied/untied lm_head cases."""
    found = {}
    for case, tie_t, tie_d in (("both-tied", True, True), ("target-tied-donor-not", True, False),
                               ("donor-tied-target-not", False, True)):
        target = make_model(tmp_path / case / "t", seed=0, tie=tie_t, tokenizer=False)
        donor = make_model(tmp_path / case / "d", seed=1, tie=tie_d, tokenizer=False)
        record = Recording()
        plan(transplant_recipe(target, [Selection(MLP_DOWN_1, str(donor), 1.0)]), record)
        found[case] = {c[1].name: c for c in record.calls}
    return found


def test_reads_needed_on_an_optional_lm_head_returns_the_kept_inputs_or_none(tied_calls):
    """Called directly: which inputs survive, not only what mergekit makes of them (it skips a missing lm_head)."""
    planner, weight, weights_in, models_, cfg = tied_calls["both-tied"][LM_HEAD]
    kept_w, kept_m = registration.reads_needed(planner, weight, weights_in, models_, cfg)
    assert kept_m == [cfg.base_model] and [w.name for w in kept_w] == [LM_HEAD]
    # only the dropped donor has it: every input kept, as mergekit would plan it
    assert registration.reads_needed(*tied_calls["target-tied-donor-not"][LM_HEAD]) is None
    planner, weight, weights_in, models_, cfg = tied_calls["donor-tied-target-not"][LM_HEAD]
    kept_w, kept_m = registration.reads_needed(planner, weight, weights_in, models_, cfg)
    assert kept_m == [cfg.base_model]


def test_a_planner_without_a_tokenizer_task_attribute_is_still_planned(real_call):
    """An older or leaner planner object that lacks ``_tokenizer_task``: no merged tokenizer, so drop as usual."""
    planner, weight, weights_in, models_, cfg = real_call[EMBED]
    assert weight.vocabulary_axis is not None
    lean = types.SimpleNamespace(_method=planner._method)
    kept_w, kept_m = registration.reads_needed(lean, weight, weights_in, models_, cfg)
    assert kept_m == [cfg.base_model]


def test_a_call_the_hook_cannot_bind_reaches_the_original_unchanged(real_call):
    planner = object()
    seen = []

    def original(*args, **kwargs):
        seen.append((args, kwargs))
        return "planned"

    import inspect

    def shape(self, weight, weights_in, models, cfg_reader):
        pass

    out = registration._hooked_plan_tensor(original, inspect.signature(shape), planner, ("w",), {"surprise": 1})
    assert out == "planned" and seen == [((planner, "w"), {"surprise": 1})]


def test_keyword_only_arguments_reach_the_original(real_call):
    """A newer mergekit's keyword-only argument survives the hook's rebinding."""
    import inspect

    planner, weight, weights_in, models_, cfg = real_call[UP_PROJ_0]
    seen = []

    def original(self, weight, weights_in, models, cfg_reader, *, extra=None):
        seen.append((len(weights_in), extra))

    registration._hooked_plan_tensor(original, inspect.signature(original), planner,
                                     (weight, weights_in, models_, cfg), {"extra": 7})
    assert seen == [(1, 7)]


def test_why_the_hook_stepped_aside_is_logged_for_debug(models, monkeypatch, caplog):
    def per_input_parameters(*args, **kwargs):
        raise RuntimeError("a resolver the hook was not written for")

    monkeypatch.setattr(registration, "per_input_parameters", per_input_parameters)
    monkeypatch.setattr(policy, "_SAID", set())  # the adapter logs each cause once per process
    with caplog.at_level(logging.DEBUG, logger=policy.LOG.name):
        planned = plan(transplant_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]))
    assert all(gathered == ["donor", "target"] for gathered in planned.values())  # stepped aside everywhere
    messages = [r.getMessage() for r in caplog.records if r.name == policy.LOG.name]
    assert messages == [  # once, though every tensor stepped aside
        "transplant read planning for a tensor: RuntimeError('a resolver the hook was not written for') "
        "(mergekit does this its own way)"]


def test_why_a_read_hint_was_not_recorded_is_logged_for_debug(caplog, monkeypatch):
    from mergekit.io.tasks import LoaderCache

    def broken(self, model):
        raise OSError("no loader")

    monkeypatch.setattr(LoaderCache, "get", broken)
    monkeypatch.setattr(policy, "_SAID", set())
    with caplog.at_level(logging.DEBUG, logger=policy.LOG.name):
        registration._note_donor_reads(["t", "d"], [None, None], [True, False], "t")
    assert [r.getMessage() for r in caplog.records] == [
        "read hints for a tensor: OSError('no loader') (mergekit does this its own way)"]


def test_why_a_read_hint_was_skipped_is_logged_for_debug(caplog, monkeypatch):
    class Broken:
        pass

    broken = Broken()
    read_hints.note_donor_reads(broken, ["w"], partial=True)  # planned, but it has no index to find the file
    monkeypatch.setattr(policy, "_SAID", set())
    with caplog.at_level(logging.DEBUG, logger=policy.LOG.name):
        read_hints._hint_tensor(broken, "w")
    assert [r.getMessage() for r in caplog.records] == [
        "read hint for a tensor: AttributeError(\"'Broken' object has no attribute 'index'\") "
        "(mergekit does this its own way)"]


def test_a_loader_with_no_plan_or_a_full_plan_gets_no_hint(models, caplog):
    path = models["donor"] / "model.safetensors"
    require_eviction(path)
    text = yaml.safe_dump({"merge_method": "transplant", "base_model": str(models["target"]),
                           "models": [{"model": str(models["target"])},
                                      {"model": str(models["donor"]), "parameters": {"strength": 0.25}}]})
    plan(text)
    pagecache.evict([path])
    with caplog.at_level(logging.DEBUG, logger=policy.LOG.name):
        assert read_hints._before_get_tensor(loader(models["donor"]), MLP_DOWN_1) is None
        assert read_hints._before_get_tensor(loader(models["target"]), MLP_DOWN_1) is None  # no plan at all
    assert pagecache.resident_bytes(path) == 0 and caplog.records == []


def test_only_safetensors_shards_are_prefetched(models):
    def fake(shard):
        return types.SimpleNamespace(index=types.SimpleNamespace(tensor_paths={"w": shard}, base_path="/m"))

    assert read_hints._shard_path(fake("pytorch_model.bin"), "w") is None
    assert read_hints._shard_path(fake("model-00001.safetensors"), "w") == "/m/model-00001.safetensors"
    assert read_hints._shard_path(fake("model.safetensors"), "missing") is None


def test_prefetch_stops_at_the_end_of_the_file_and_reads_byte_by_byte(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 40)
    assert read_hints.prefetch_range(str(path), 10_000, 10_500) == 240  # the file ends at 10,240
    monkeypatch.setattr(read_hints, "PREFETCH_CHUNK", 1)
    assert read_hints.prefetch_range(str(path), 5, 15) == 10


def test_tensor_ranges_follow_the_file_not_a_stale_cache(tmp_path):
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4)}, path)
    first = read_hints.tensor_ranges(str(path))
    other = tmp_path / "other.safetensors"
    save_file({"b": torch.zeros(8), "c": torch.zeros(2)}, other)
    assert read_hints.tensor_ranges(str(other)) == independent_ranges(other) != first
    save_file({"a": torch.zeros(16), "d": torch.zeros(1)}, path)  # rewritten in place: new size
    assert read_hints.tensor_ranges(str(path)) == independent_ranges(path) != first
