"""Activation analysis: find the modules that carry the donor's advantage.

>>> from mergekit_transplant.analysis import analyze, load_workload
>>> result = analyze("target/", "donor/", load_workload("prompts.jsonl"), top_k=4)
>>> result.ranking()[:4]                 # tensor names, best first
>>> open("recipe.yml", "w").write(result.recipe_text)
>>> settings = AnalyzeSettings(target="target/", donor="donor/", workload="prompts.jsonl", top_k=4)
>>> result = analyze(settings)          # the same run; result.report.settings.to_cli() reproduces it

Scores (docs/analysis.md has the details and the reasons for the defaults):
``attribution`` (default: the donor's change to a module's output x the
gradient of the workload's log-probability, on the donor), ``local`` (the
module's own change on the target's inputs, one forward pass, no gradients),
``gain`` (signed: the target's first-order log-likelihood gain if the module
were transplanted) and ``activation`` (the seed paper's |mean activation
difference|). Selection: ``greedy`` (default: measured in the live target,
round by round, pre-filtered by the score) or ``top``. Torch is imported only
when an analysis runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from mergekit_transplant.analysis.pipeline import AnalysisResult, analyze
from mergekit_transplant.analysis.report import AnalysisReport
from mergekit_transplant.analysis.scores import REPORTED, SCORES
from mergekit_transplant.analysis.settings import (
    CAPTURE_MODES, DEFAULT_SCORE, DEFAULT_TOP_K, GRANULARITIES, AnalyzeSettings,
)
from mergekit_transplant.analysis.workload import Sample, Workload, load_workload

__all__ = [
    "AnalysisReport", "AnalysisResult", "AnalyzeSettings", "CAPTURE_MODES", "DEFAULT_SCORE", "DEFAULT_TOP_K", "GRANULARITIES", "REPORTED", "SCORES",
    "Sample", "Workload", "analyze", "load_workload", "write_outputs",
]


def write_outputs(result: AnalysisResult, *, recipe: Union[str, Path, None] = None,
                  report: Union[str, Path, None] = None, plot: Union[str, Path, None] = None) -> None:
    """Write the recipe, report and heatmap that were asked for, each atomically."""
    from mergekit_transplant.analysis.report import dumps
    from mergekit_transplant.atomic import write_text

    if plot is not None:  # the one output that can fail on its name: check it before writing anything
        from mergekit_transplant.analysis.heatmap import check_plot_path

        check_plot_path(plot)
    if recipe is not None:
        write_text(recipe, result.recipe_text)
    if report is not None:
        write_text(report, dumps(result.report))
    if plot is not None:
        from mergekit_transplant.analysis.heatmap import plot_heatmap

        plot_heatmap(result.report, plot)
