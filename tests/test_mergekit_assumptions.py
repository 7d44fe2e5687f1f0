"""What the adapter assumes about mergekit's internals, pinned for the installed mergekit (0.1.5).

Every patch in ``mergekit_transplant/adapter/`` relies on a signature, an
attribute or a behaviour of mergekit that is not a public API. Each one is
asserted here, next to the adapter constant that names it, so that a new
mergekit release fails here first, with the assumption's name, instead of
deep inside a merge. When one fails: the adapter's policy (``adapter.policy``)
already makes the plugin fall back to mergekit's own behaviour; update the
adapter, then this file.
"""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version

import pytest

from mergekit_transplant.adapter import card_hook, download_plan, loader_cache, policy, read_hints, registration

TESTED_WITH = "0.1.5"


def _parameters(function) -> list:
    return list(inspect.signature(inspect.unwrap(function)).parameters)


def test_the_mergekit_these_assumptions_were_checked_against():
    """Not a gate (the assumptions below are): a reminder to re-read this file when it changes."""
    assert version("mergekit").startswith("0.1."), f"mergekit {version('mergekit')}: re-check every assumption below"


# --------------------------------------------------------------------------- registry (registration.register_method)


def test_registry_lists_methods_by_spec_name_and_refuses_duplicates():
    """register_method looks before it registers, because mergekit's register raises on a duplicate name."""
    from mergekit.merge_methods import registry

    registration.register_method()
    names = [m.spec.name for m in registry.registered_methods()]
    assert names.count(registration.METHOD_NAME) == 1
    from mergekit_transplant.method import transplant_method

    with pytest.raises(Exception):
        registry.register(transplant_method())
    registration.register_method()  # idempotent: ours does not raise
    assert [m.spec.name for m in registry.registered_methods()].count(registration.METHOD_NAME) == 1


def test_easy_define_builds_the_method_with_the_contract_we_declare():
    from mergekit.merge_methods import get

    method = get(registration.METHOD_NAME)
    spec = method.spec
    assert spec.name == "transplant" and spec.contract.base.name == "REQUIRED"
    scopes = {p.name: p.scope.name for p in spec.parameters}
    assert scopes == {"strength": "NON_BASE", "allow_extrapolation": "SHARED"}  # what resolve_parameters returns
    assert spec.optional_tensor_policy.name == "PASSTHROUGH_BASE_SINGLETON"


# --------------------------------------------------------------------------- the planner (registration, planning)


def test_plan_tensor_has_the_arguments_the_planner_hook_binds():
    from mergekit.plan import MergePlanner

    original = inspect.unwrap(MergePlanner.plan_tensor)
    assert registration._compatible_signature(original) is not None
    assert _parameters(original)[: len(registration.PLAN_TENSOR_ARGUMENTS) + 1] == [
        "self", *registration.PLAN_TENSOR_ARGUMENTS]


def test_planner_keeps_its_method_and_tokenizer_task_and_plans_with__plan():
    """reads_needed reads ``planner._method.spec`` and ``_tokenizer_task``; StrengthRecorder calls ``_plan()``."""
    from mergekit.plan import MergePlanner

    assert "_method" in inspect.getsource(MergePlanner.__init__)
    assert "_tokenizer_task" in vars(MergePlanner)
    assert callable(vars(MergePlanner)["_plan"])
    assert _parameters(MergePlanner.__init__) == ["self", "config", "arch_info", "options", "out_model_config"]


def test_resolve_parameters_takes_the_keywords_per_input_parameters_passes():
    from mergekit.parameter_resolver import resolve_parameters

    assert _parameters(resolve_parameters) == ["spec", "tensor_name", "inputs", "sources", "base_model", "t"]


def test_config_reader_and_weight_info_have_the_attributes_the_hook_reads():
    from mergekit.architecture import WeightInfo
    from mergekit.config import ConfigReader

    assert {"parameter_sources", "base_model"} <= set(vars(ConfigReader))
    assert "t" in ConfigReader.model_fields
    assert {"name", "aliases", "tied_names", "optional", "vocabulary_axis"} <= set(WeightInfo.model_fields)


# --------------------------------------------------------------------------- loader cache (loader_cache, read_hints)


def test_loader_cache_is_a_singleton_with_loaders_and_the_options_we_restore():
    from mergekit.io.tasks import LoaderCache

    assert LoaderCache() is LoaderCache()
    assert isinstance(LoaderCache().loaders, dict)
    assert callable(LoaderCache.setup) and callable(LoaderCache.get)
    for name in loader_cache.OPTION_ATTRIBUTES:
        assert hasattr(LoaderCache(), name), name


def test_lazy_loader_and_index_have_what_the_read_hints_wrap(tmp_path):
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex

    assert callable(getattr(LazyTensorLoader, "get_tensor", None))
    assert isinstance(ShardedTensorIndex.__dict__.get("from_file"), classmethod)
    assert {"tensor_paths", "base_path"} <= set(ShardedTensorIndex.__annotations__)
    assert "index" in inspect.signature(LazyTensorLoader.__init__).parameters


# --------------------------------------------------------------------------- downloads (download_plan)


def test_local_path_and_run_merge_have_the_signatures_the_download_hook_knows():
    from mergekit import common, merge

    assert tuple(_parameters(common.ModelReference.local_path)) == download_plan.LOCAL_PATH_PARAMETERS
    assert tuple(_parameters(merge.run_merge)[: len(download_plan.RUN_MERGE_PARAMETERS)]) == \
        download_plan.RUN_MERGE_PARAMETERS


# --------------------------------------------------------------------------- the card (card_hook)


def test_generate_card_signature_and_mergekit_merge_binding_it_by_name():
    """mergekit.merge does ``from mergekit.card import generate_card``: the hook must patch both names."""
    import mergekit.card
    import mergekit.merge

    assert tuple(_parameters(mergekit.card.generate_card)) == card_hook.GENERATE_CARD_PARAMETERS
    assert hasattr(mergekit.merge, "generate_card")


def test_merge_options_have_the_fields_flows_and_the_guards_read():
    from mergekit.options import MergeOptions

    fields = set(MergeOptions.model_fields)
    assert {"write_model_card", "device", "cuda", "read_to_gpu", "multi_gpu", "trust_remote_code", "quiet"} <= fields
    assert MergeOptions().write_model_card is True
    assert MergeOptions(write_model_card=True).model_copy(update={"write_model_card": False}).write_model_card is False


# --------------------------------------------------------------------------- the one fallback policy


def test_step_aside_logs_one_debug_line_per_cause(caplog):
    with caplog.at_level(logging.DEBUG, logger="mergekit_transplant.adapter"):
        for _ in range(3):
            policy.step_aside("an assumption test", "cause A")
        policy.step_aside("an assumption test", "cause B")
    lines = [r.getMessage() for r in caplog.records if "an assumption test" in r.getMessage()]
    assert len(lines) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records)


def test_card_hook_steps_aside_when_generate_card_changes(monkeypatch, caplog):
    """A mergekit whose generate_card takes other parameters keeps its own card; nothing raises."""
    import mergekit.card

    def generate_card(config, config_yaml, name=None, extra=None):  # a future mergekit
        return "mergekit's card"

    monkeypatch.setattr(mergekit.card, "generate_card", generate_card)
    with caplog.at_level(logging.DEBUG, logger="mergekit_transplant.adapter"):
        assert card_hook.install_mergekit_card_hook(lambda *a: "ours") is False
    assert mergekit.card.generate_card is generate_card
    assert "not the signature the card hook knows" in caplog.text


def test_read_hints_step_aside_when_the_loader_changes(monkeypatch):
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex

    read_hints.uninstall_read_hints()
    monkeypatch.delattr(LazyTensorLoader, "get_tensor")
    monkeypatch.setattr(ShardedTensorIndex, "from_file", staticmethod(lambda path: None))
    assert read_hints.install_read_hints() is False
    monkeypatch.undo()
    assert read_hints.install_read_hints() is True
