"""What ``card`` accepts as an analysis report and as eval results, checked before a card is written.

Both files are JSON objects with a ``settings`` section, so passing one for
the other (``--eval report.json``), or a hand-edited file whose score is a
string, would otherwise give a card with an empty or nonsensical section and
exit 0. These checks name the file and the first field at fault. They cover
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

from typing import TYPE_CHECKING, Any, Mapping, Optional

from mergekit_transplant.errors import TransplantError

if TYPE_CHECKING:  # pragma: no cover
    from mergekit_transplant.analysis.report import AnalysisReport

EVAL_WHAT = "the results.json of `mergekit-transplant eval`"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(source: str, what: str, problem: str, hint: Optional[str] = None) -> TransplantError:
    return TransplantError(f"{source}: not {what}: {problem}" + (f" ({hint})" if hint else ""))


def _score(source: str, where: str, row: Mapping[str, Any], key: str, *, required: bool = True) -> None:
    if key not in row:
        if required:
            raise _fail(source, EVAL_WHAT, f"{where} has no {key!r} score")
        return
    value = row[key]
    if value is not None and not _is_number(value):
        raise _fail(source, EVAL_WHAT, f"{where}.{key} is a {_type(value)}, not a number or null")


def check_eval_results(data: Any, source: str) -> dict:
    """``data`` if it has the shape of eval results; TransplantError naming ``source`` and the field otherwise."""
    if not isinstance(data, dict):
        raise _fail(source, EVAL_WHAT, f"expected a JSON object, got {_type(data)}")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        hint = "this looks like an analysis report: pass it with --report" if "ranking" in data else None
        problem = "no 'tasks' section" if tasks is None else f"'tasks' is a {_type(tasks)}, not an object"
        raise _fail(source, EVAL_WHAT, problem, hint)
    if not tasks:
        raise _fail(source, EVAL_WHAT, "'tasks' lists no task")
    for section, roles in (("tasks", ("target", "donor", "merged")), ("retain", ("target", "merged"))):
        rows = data.get(section)
        if section == "retain" and rows is None:
            continue
        if not isinstance(rows, dict):
            raise _fail(source, EVAL_WHAT, f"'{section}' is a {_type(rows)}, not an object")
        for task, row in rows.items():
            where = f"{section}.{task}"
            if not isinstance(row, dict):
                raise _fail(source, EVAL_WHAT, f"{where} is a {_type(row)}, not an object")
            if not isinstance(row.get("metric"), str):
                raise _fail(source, EVAL_WHAT, f"{where} has no 'metric' name")
            for role in roles:
                _score(source, where, row, role)
            for key in ("tir", "recovery", "change", "change_stderr"):
                _score(source, where, row, key, required=False)
            stderr = row.get("stderr")
            if isinstance(stderr, dict):
                for role, value in stderr.items():
                    if value is not None and not _is_number(value):
                        raise _fail(source, EVAL_WHAT, f"{where}.stderr.{role} is a {_type(value)}, not a number")
            elif stderr is not None and not _is_number(stderr):
                raise _fail(source, EVAL_WHAT, f"{where}.stderr is a {_type(stderr)}, not a number or object")
    return data


def check_analysis_report(data: Any, source: str) -> "AnalysisReport":
    """``data`` (a JSON object, or a report) as an ``AnalysisReport``; TransplantError naming ``source`` and the
    field otherwise. The checks are the report's own (``AnalysisReport.from_json``), so card and sweep accept
    the same files."""
    from mergekit_transplant.analysis.report import AnalysisReport

    return AnalysisReport.from_json(data, source)
