"""Ask mergekit's own planner what a transplant recipe will do, reading configs and headers only.

``StrengthRecorder`` is a ``MergePlanner`` subclass whose ``plan_tensor``
records, for every output tensor, which input tensor each model contributes and
at which strength -- resolved by mergekit's own parameter resolver
(``registration.per_input_parameters``) -- instead of planning a read. That is
what ``check`` reports, what the download hook narrows to, and what the card's
plan table shows, so all three agree with ``mergekit-yaml``.
"""

from __future__ import annotations

from typing import List

from mergekit_transplant.adapter.loader_cache import fresh_loaders
from mergekit_transplant.adapter.registration import register_method
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.recipe import PlannedInput, PlannedTensor, Recipe


def resolve_strengths(recipe: Recipe, *, trust_remote_code: bool = False) -> List[PlannedTensor]:
    """Run mergekit's planner without executing it, recording each tensor's strengths.

    This reads model configs and safetensors headers only. Because it is
    mergekit's own planner and parameter resolver, filters, first-match-wins,
    gradients and slices resolve exactly as in ``mergekit-yaml``.
    """
    return plan_config(recipe.config, trust_remote_code=trust_remote_code)


def plan_config(config, *, trust_remote_code: bool = False) -> List[PlannedTensor]:
    """``resolve_strengths`` for a parsed ``MergeConfiguration`` (what the download hook sees)."""
    register_method()  # the planner looks the method up in mergekit's registry
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    from mergekit_transplant.adapter.registration import per_input_parameters

    options = MergeOptions(trust_remote_code=trust_remote_code, quiet=True)
    LoaderCache().setup(options)
    fresh_loaders()  # keyed by path as written: stale across working directories
    planned: List[PlannedTensor] = []

    class StrengthRecorder(MergePlanner):
        def plan_tensor(self, weight, weights_in, models, cfg_reader, *args, **kwargs):
            try:
                self._record(weight, weights_in, models, cfg_reader)
            except Exception as error:  # our code, not the user's recipe: a bug, never an input error
                raise _RecorderBug() from error

        def _record(self, weight, weights_in, models, cfg_reader):
            base = cfg_reader.base_model
            per_input = per_input_parameters(self, weight, weights_in, models, cfg_reader)
            planned.append(
                PlannedTensor(
                    name=weight.name,
                    optional=weight.optional,
                    inputs=tuple(
                        PlannedInput(
                            model=str(m),
                            tensor=w.name,
                            strength=None if m == base else float(per_input[m]["strength"]),
                        )
                        for m, w in zip(models, weights_in)
                    ),
                    alternatives=tuple(weight.aliases or ()) + tuple(weight.tied_names or ()),
                )
            )

    try:
        arch = get_architecture_info(config, options)
        out_cfg = config.base_model.config(trust_remote_code=trust_remote_code)
        StrengthRecorder(config, arch, options, out_cfg)._plan()
    except TransplantError:
        raise
    except _RecorderBug as bug:
        raise bug.__cause__ from None  # exit 1 with a --debug hint, not "your recipe is wrong"
    except MERGEKIT_REFUSALS as error:  # mergekit's own checks on the recipe and the models it names
        raise TransplantError(f"mergekit cannot plan this recipe: {error}") from None
    return planned


#: what mergekit raises when it refuses a recipe or a model while planning (a missing
#: config, an unknown architecture, a slice outside the model); anything else -- a
#: TypeError, an AttributeError -- is a bug and reaches the CLI as one (exit 1)
MERGEKIT_REFUSALS = (ValueError, RuntimeError, KeyError, IndexError, OSError, AssertionError)


class _RecorderBug(Exception):
    """Raised from our planner subclass: its cause is a bug of the plugin, not of the recipe."""
