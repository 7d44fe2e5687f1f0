"""Idempotent registration of the ``transplant`` method, and the read-planning hook.

Both functions are safe to call any number of times, in any import order:
mergekit's ``register`` raises on duplicate names, so we look first.
"""

from __future__ import annotations

import functools
import logging

LOG = logging.getLogger(__name__)

METHOD_NAME = "transplant"


def register_method() -> None:
    """Add ``merge_method: transplant`` to mergekit's registry (once)."""
    from mergekit.merge_methods import registry

    if METHOD_NAME in {m.spec.name for m in registry.registered_methods()}:
        return
    from mergekit_transplant.method import transplant_method

    registry.register(transplant_method())


def install_planner_hook() -> None:
    """Make mergekit skip reading donor tensors whose strength is zero.

    mergekit's planner gathers every input model's tensor for every output
    tensor, so a 5% transplant would still read 100% of the donor. We wrap
    ``MergePlanner.plan_tensor``: for ``transplant`` merges only, the strength
    of each donor is resolved with mergekit's own resolver first, and donors at
    strength 0 are dropped from that tensor's inputs before the read is planned.
    The kernel then returns the target's tensor unchanged, so the output is
    bit-identical; only the reads disappear. For other methods, and if a future
    mergekit changes the planner's signature, the original runs untouched.
    """
    from mergekit import plan

    original = plan.MergePlanner.plan_tensor
    if getattr(original, "_transplant_hook", False):
        return

    @functools.wraps(original)
    def plan_tensor(self, weight, weights_in, models, cfg_reader, *args, **kwargs):
        try:
            if self._method.spec.name == METHOD_NAME:
                weights_in, models = _drop_zero_strength_donors(
                    self._method.spec, weight, weights_in, models, cfg_reader
                )
        except Exception as error:  # never let the optimisation break a merge
            LOG.debug("transplant read planning skipped for %s: %s", weight.name, error)
        return original(self, weight, weights_in, models, cfg_reader, *args, **kwargs)

    plan_tensor._transplant_hook = True
    plan.MergePlanner.plan_tensor = plan_tensor


def _drop_zero_strength_donors(spec, weight, weights_in, models, cfg_reader):
    from mergekit.parameter_resolver import resolve_parameters

    base = cfg_reader.base_model
    if base is None or base not in models:
        return weights_in, models
    _shared, per_input = resolve_parameters(
        spec,
        tensor_name=weight.name,
        inputs={model: w.name for model, w in zip(models, weights_in)},
        sources=cfg_reader.parameter_sources,
        base_model=base,
        t=cfg_reader.t,
    )
    kept = [
        (w, m)
        for w, m in zip(weights_in, models)
        if m == base or per_input[m].get("strength", 0.0) != 0.0
    ]
    return [w for w, _ in kept], [m for _, m in kept]
