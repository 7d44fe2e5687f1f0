"""Task experts (DoE, arXiv 2404.11916): unplug the MLP neurons a task does not use.

One module per concern:

- ``config``: ``UnplugSettings`` / ``UnplugSweepSettings`` (the CLI options are generated from them);
- ``layout``: where each architecture keeps its MLP neurons (``layout_for``), refusing unknown ones;
- ``scores``: attribution, activation, wanda and random scores per neuron (``score_neurons``);
- ``report``: ``UnplugReport``, the versioned ``unplug.json``;
- ``slicing``: writing the smaller stock-transformers model from the checkpoint files;
- ``card``: its Hub model card;
- ``pipeline``: ``unplug(settings)``, the whole command;
- ``runtime``: ``unplugged(model, "unplug.json")``, the expert swapped into a live model and restored;
- ``sweep``: keep ratios × scores against random controls, scored by lm-eval.

>>> from mergekit_transplant.unplug import UnplugSettings, unplug, unplugged
>>> unplug(UnplugSettings(model="base/", workload="task.jsonl", keep=0.35, output="expert/"))
>>> with unplugged(model, "expert/unplug.json"):
...     model.generate(...)
"""

from mergekit_transplant.unplug.config import SCORES, UnplugSettings, UnplugSweepSettings
from mergekit_transplant.unplug.layout import LAYOUTS, MlpLayout, layout_for
from mergekit_transplant.unplug.pipeline import UnplugResult, unplug
from mergekit_transplant.unplug.report import REPORT_FILE, UnplugReport
from mergekit_transplant.unplug.runtime import unplugged
from mergekit_transplant.unplug.scores import NeuronScores, score_neurons

__all__ = [
    "SCORES", "UnplugSettings", "UnplugSweepSettings", "LAYOUTS", "MlpLayout", "layout_for", "UnplugResult",
    "unplug", "REPORT_FILE", "UnplugReport", "unplugged", "NeuronScores", "score_neurons",
]
