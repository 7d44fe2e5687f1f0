"""Sweep K and strength in memory against random-module and whole-model controls.

Public API:

- ``ranking_from_report(path, score=...)`` / ``ranking_from_analysis(target, donor, workload, ...)``
  -> ``Ranking``;
- ``run_sweep(ranking, SweepSettings(...)) -> SweepResult`` (``.to_json()`` is sweep.json and
  ``SweepResult.load(path)`` reads it back; ``.to_dict()`` is the flat view, one row per point and
  split; ``.best()``, ``.summary()``, ``.band(k, s)``);
- ``outputs.write_json / write_recipe / markdown_table``, ``plot.plot_sweep``;
- ``controls.random_units(pool, k, seed)`` (a control is reproducible from its seed);
- ``inplace.LiveTransplant`` (apply / restore bit-exactly on a live model).
"""

from mergekit_transplant.sweep.controls import random_units, whole_model_tensors
from mergekit_transplant.sweep.ranking import Ranking, ranking_from_analysis, ranking_from_dict, ranking_from_report
from mergekit_transplant.sweep.runner import SweepResult, run_sweep
from mergekit_transplant.sweep.settings import SweepSettings

__all__ = [
    "random_units", "whole_model_tensors", "Ranking", "ranking_from_analysis", "ranking_from_dict",
    "ranking_from_report", "SweepResult", "SweepSettings", "run_sweep",
]
