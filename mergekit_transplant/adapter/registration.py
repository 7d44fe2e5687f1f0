"""Idempotent registration of the ``transplant`` method, and the read-planning hook.

``register_method`` and ``install_planner_hook`` are safe to call any number
of times, in any import order: mergekit's ``register`` raises on duplicate
names, so we look first, and the hook marks its wrapper. docs/merge-reads.md
explains the hook; ``adapter.policy`` its one fallback policy.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

from mergekit_transplant.adapter.policy import READ_ALL_ENV, read_all_requested, step_aside

METHOD_NAME = "transplant"
#: attribute marking our wrapper of ``MergePlanner.plan_tensor``
HOOK_MARK = "_transplant_hook"
#: the arguments of ``MergePlanner.plan_tensor`` (mergekit 0.1.x) the hook reads
PLAN_TENSOR_ARGUMENTS = ("weight", "weights_in", "models", "cfg_reader")


def register_method() -> None:
    """Add ``merge_method: transplant`` to mergekit's registry (once)."""
    from mergekit.merge_methods import registry

    if METHOD_NAME in {m.spec.name for m in registry.registered_methods()}:
        return
    from mergekit_transplant.method import transplant_method

    registry.register(transplant_method())


def install_planner_hook() -> bool:
    """Make mergekit skip reading donor tensors whose strength is zero.

    mergekit's planner gathers every input model's tensor for every output
    tensor, so a 5% transplant would still read 100% of the donor (and, with
    ``--cuda``, move all of it to the GPU). We wrap ``MergePlanner.plan_tensor``:
    for ``transplant`` merges only, the strength of each donor is resolved with
    mergekit's own resolver first, and donors at strength 0 are dropped from
    that tensor's inputs before the reads are planned. The kernel then returns
    the target's tensor unchanged, so the output is bit-identical; only the
    reads disappear. This is also what lets a recipe point at an organ folder
    holding only the transplanted tensors.

    The hook is an optimisation, never a requirement: when the planner does not
    look like the one it was written for (another signature, a renamed
    attribute, a resolver that fails), it is not installed, or it steps aside
    for that tensor, and mergekit plans every read as usual. Set
    ``MERGEKIT_TRANSPLANT_READ_ALL=1`` to turn it off. Returns whether the hook
    is installed.
    """
    if read_all_requested():
        return False
    try:
        from mergekit import plan

        original = plan.MergePlanner.plan_tensor
    except (ImportError, AttributeError) as error:
        step_aside("transplant read planning", error)
        return False
    if getattr(original, HOOK_MARK, False):
        _install_read_hints()  # idempotent; they may have been removed on their own
        return True
    signature = _compatible_signature(original)
    if signature is None:
        step_aside("transplant read planning", f"MergePlanner.plan_tensor{_signature_text(original)} is not the "
                   "signature the read planner knows; mergekit will read every donor tensor")
        return False

    @functools.wraps(original)
    def plan_tensor(self, *args, **kwargs):
        return _hooked_plan_tensor(original, signature, self, args, kwargs)

    setattr(plan_tensor, HOOK_MARK, True)
    plan.MergePlanner.plan_tensor = plan_tensor
    _install_read_hints()
    return True


def _hooked_plan_tensor(original, signature: inspect.Signature, planner, args, kwargs):
    """The hook's body: mergekit's ``plan_tensor`` with the zero-strength donors left out.

    At module level, looked up on every call, rather than frozen into the
    wrapper built once at import (``make mutation`` can then reach it).
    """
    try:
        bound = signature.bind(planner, *args, **kwargs)
    except TypeError:  # called in a way we do not understand: stay out of it
        return original(planner, *args, **kwargs)
    if not read_all_requested():
        try:
            needed = reads_needed(planner, **{k: bound.arguments[k] for k in PLAN_TENSOR_ARGUMENTS})
        except Exception as error:  # never let the optimisation break a merge
            step_aside("transplant read planning for a tensor", repr(error))
            needed = None
        if needed is not None:
            bound.arguments["weights_in"], bound.arguments["models"] = needed
    return original(*bound.args, **bound.kwargs)


def _install_read_hints() -> None:
    try:
        from mergekit_transplant.adapter.read_hints import install_read_hints

        install_read_hints()
    except Exception as error:  # an optimisation of an optimisation: never fatal
        step_aside("read hints", repr(error))


def uninstall_planner_hook() -> bool:
    """Restore mergekit's own planner and loader; returns whether a planner hook was removed."""
    from mergekit import plan

    from mergekit_transplant.adapter.read_hints import uninstall_read_hints

    uninstall_read_hints()
    current = plan.MergePlanner.plan_tensor
    if not getattr(current, HOOK_MARK, False):
        return False
    plan.MergePlanner.plan_tensor = current.__wrapped__
    return True


def planner_hook_installed() -> bool:
    from mergekit import plan

    return bool(getattr(plan.MergePlanner.plan_tensor, HOOK_MARK, False))


def _compatible_signature(function) -> Optional[inspect.Signature]:
    """The signature of ``plan_tensor`` if it names the arguments the hook needs."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    names = list(signature.parameters)
    if names[: len(PLAN_TENSOR_ARGUMENTS) + 1] != ["self", *PLAN_TENSOR_ARGUMENTS]:
        return None
    # bound arguments are passed on by keyword or position: both must work
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
           for p in list(signature.parameters.values())[: len(PLAN_TENSOR_ARGUMENTS) + 1]):
        return None
    return signature


def _signature_text(function) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(?)"


def per_input_parameters(planner, weight, weights_in, models, cfg_reader) -> dict:
    """Each input model's parameters for one output tensor, resolved by mergekit itself.

    The same resolution ``merge_method: transplant`` will see, so what the
    planner hook drops and what ``check`` reports agree with the merge.
    """
    from mergekit.parameter_resolver import resolve_parameters

    _shared, per_input = resolve_parameters(
        planner._method.spec,
        tensor_name=weight.name,
        inputs={model: w.name for model, w in zip(models, weights_in)},
        sources=cfg_reader.parameter_sources,
        base_model=cfg_reader.base_model,
        t=cfg_reader.t,
    )
    return per_input


def reads_needed(planner, weight, weights_in, models, cfg_reader):
    """``(weights_in, models)`` without the donors at strength 0, or None to read them all.

    None means "plan as mergekit would": not a transplant merge, nothing to drop,
    or a case where dropping could change the output (see below).
    """
    if planner._method.spec.name != METHOD_NAME:
        return None
    weights_in, models = list(weights_in), list(models)
    base = cfg_reader.base_model
    if base is None or base not in models or len(weights_in) != len(models):
        return None
    if weight.vocabulary_axis is not None and getattr(planner, "_tokenizer_task", None) is not None:
        return None  # a merged tokenizer builds the vocabulary from every model's embeddings
    per_input = per_input_parameters(planner, weight, weights_in, models, cfg_reader)
    keep = [m == base or not _is_zero(per_input[m]["strength"]) for m in models]
    if not all(keep) and weight.optional and not any(
        _present(m, w) for m, w, k in zip(models, weights_in, keep) if k
    ) and any(_present(m, w) for m, w, k in zip(models, weights_in, keep) if not k):
        # mergekit writes an optional tensor when any input has it; the target
        # lacks it (a tied lm_head, say) but a zero-strength donor has it, so
        # dropping that donor would drop the tensor from the output.
        keep = [True] * len(models)
    _note_donor_reads(models, weights_in, keep, base)
    if all(keep):
        return None
    return (
        [w for w, k in zip(weights_in, keep) if k],
        [m for m, k in zip(models, keep) if k],
    )


def _note_donor_reads(models, weights_in, keep, base) -> None:
    """Tell read_hints which donor tensors will be read, and which donors are partial."""
    try:
        from mergekit.io.tasks import LoaderCache

        from mergekit_transplant.adapter.read_hints import note_donor_reads

        for model, w, k in zip(models, weights_in, keep):
            if model == base:
                continue
            names = [w.name, *(w.aliases or ()), *(w.tied_names or ())] if k else []
            note_donor_reads(LoaderCache().get(model), names, partial=not k)
    except Exception as error:  # hints are optional; the planning above stands
        step_aside("read hints for a tensor", repr(error))


def _is_zero(strength) -> bool:
    return isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength == 0.0


def _present(model, weight) -> bool:
    """mergekit's own test for an optional weight: its name or an alias is in the index."""
    from mergekit.io.tasks import LoaderCache

    index = LoaderCache().get(model).index
    return any(name in index.tensor_paths for name in [weight.name, *(weight.aliases or ())])



__all__ = ["READ_ALL_ENV", "install_planner_hook", "per_input_parameters", "read_all_requested", "reads_needed",
           "register_method", "uninstall_planner_hook", "planner_hook_installed"]
