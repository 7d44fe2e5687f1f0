"""lm-eval scores of target, donor and merged model: TIR, Recovery, retain-task changes.

Public API:

- ``evaluate_models(target, donor, merged, EvalSettings(...)) -> EvalReport``
  (``.data`` is results.json, ``.markdown()`` the table, ``.write(path)``);
- ``metrics``: ``tir``, ``recovery``, ``change``, ``paired_stderr``;
- ``find_tasks(names, include_path)`` and ``run_lm_eval`` / ``extract`` for
  callers (the sweep) that score live models; ``PromptOptions``: lm-eval's
  chat-template, system-instruction and generation options.
"""

from mergekit_transplant.evaluation.compare import EvalReport, EvalSettings, evaluate_models
from mergekit_transplant.evaluation.metrics import Change, Ratio, change, donor_better, paired_stderr, recovery, tir
from mergekit_transplant.evaluation.runner import PromptOptions, TaskScores, extract, run_lm_eval
from mergekit_transplant.evaluation.tasks import TaskSet, find_tasks, split_names

__all__ = [
    "EvalReport", "EvalSettings", "evaluate_models", "Change", "Ratio", "change", "donor_better",
    "paired_stderr", "recovery", "tir", "TaskScores", "extract", "run_lm_eval", "TaskSet", "find_tasks",
    "split_names", "PromptOptions",
]
