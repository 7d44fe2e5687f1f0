"""What ``card`` accepts as an analysis report and as eval results, checked before a card is written.

Both files are JSON objects with a ``settings`` section, so passing one for
the other (``--eval report.json``), or a hand-edited file whose score is a
string, would otherwise give a card with an empty or nonsensical section and
exit 0. These checks (the readers' own: ``AnalysisReport.from_json``,
``EvalReport.from_json``) name the file and the first field at fault. They cover
the fields the card reads, in the shapes ``analyze --report-out`` and ``eval
--output`` write them; other keys are allowed (and ignored).

- eval results: ``{"tasks": {TASK: {"metric": str, "target": num|null,
  "donor": num|null, "merged": num|null, ...}}, "retain": {TASK: {"metric",
  "target", "merged", ...}}}`` (``retain`` optional), at least one task;
- analysis report: ``{"settings": {...}, "ranking": {SCORE: [unit, ...]},
  "candidates": [{"tensor": str, "scores": {SCORE: num|null}}, ...],
  "selection": [{"tensor": str, ...}]}`` (``candidates`` and ``selection``
  optional).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mergekit_transplant.analysis.report import AnalysisReport
    from mergekit_transplant.evaluation.results import EvalReport
    from mergekit_transplant.sweep.result import SweepResult


def check_eval_results(data: Any, source: str) -> "EvalReport":
    """``data`` (a JSON object, or a report) as an ``EvalReport``; TransplantError naming ``source`` and the
    field otherwise (``EvalReport.from_json``'s checks)."""
    from mergekit_transplant.evaluation.results import EvalReport

    return EvalReport.from_json(data, source)


def check_analysis_report(data: Any, source: str) -> "AnalysisReport":
    """``data`` (a JSON object, or a report) as an ``AnalysisReport``; TransplantError naming ``source`` and the
    field otherwise. The checks are the report's own (``AnalysisReport.from_json``), so card and sweep accept
    the same files."""
    from mergekit_transplant.analysis.report import AnalysisReport

    return AnalysisReport.from_json(data, source)


def check_sweep_results(data: Any, source: str) -> "SweepResult":
    """``data`` (a sweep.json object, or a result) as a ``SweepResult``; TransplantError naming ``source`` and the
    field otherwise (``SweepResult.from_json``'s checks)."""
    from mergekit_transplant.sweep.result import SweepResult

    return SweepResult.from_json(data, source)
