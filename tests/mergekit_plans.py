"""mergekit's own planner, run with the plugin's hook installed: what each output tensor gathers.

Shared by tests/test_planner_hook.py and tests/test_reads.py (a helper module,
like tests/pagecache.py: no test module imports another).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from mergekit.architecture import get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.io.tasks import LoaderCache
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner

from mergekit_transplant.adapter import registration
from mergekit_transplant.recipe import render_recipe


def transplant_recipe(target, sels, **extra) -> str:
    data = yaml.safe_load(render_recipe(str(target), sels, header=["written by test_planner_hook"]))
    data.update(extra)
    return yaml.safe_dump(data)


class Recording:
    """A real planner's arguments for each tensor, captured on their way into the (hooked) plan_tensor."""

    def __init__(self):
        self.calls = []


def plan(recipe_text: str, record: Recording = None):
    """mergekit's planner, hook installed, run on ``recipe_text``: {output tensor: [models it gathers]}."""
    import mergekit_transplant

    mergekit_transplant.register()
    assert registration.planner_hook_installed()
    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_text))
    options = MergeOptions(quiet=True)
    LoaderCache().setup(options)
    LoaderCache().loaders.clear()

    class Planner(MergePlanner):
        def plan_tensor(self, weight, weights_in, models, cfg_reader):
            if record is not None:
                record.calls.append((self, weight, list(weights_in), list(models), cfg_reader))
            return super().plan_tensor(weight, weights_in, models, cfg_reader)

    planner = Planner(config, get_architecture_info(config, options), options,
                      (config.base_model or config.models[0].model).config(trust_remote_code=False))
    planner._plan()
    return {weight.name: sorted(Path(str(m.model.path)).name for m in task.model_order)
            for weight, task in planner._tensors}


def loader(model: Path):
    from mergekit.common import ModelReference
    from mergekit.io.tasks import LoaderCache

    return LoaderCache().get(ModelReference.model_validate(str(model)))
