"""``results.json`` of ``eval``: ``EvalReport``, versioned, and the checks every reader applies.

``eval`` writes it; ``card`` reads it (``--eval``). ``EvalReport.from_json``
takes any schema this version knows (1; a file without ``schema``, written
before it was recorded, is read as 1), checks the fields readers rely on
(each task's metric and per-model scores: numbers or null) and names the file
and the first field at fault; other keys are kept.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

from mergekit_transplant import atomic, versioned
from mergekit_transplant.errors import TransplantError

SCHEMA = 1
READABLE_SCHEMAS = (1,)
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


def _check(data: Any, source: str) -> None:
    """The fields readers rely on, in the shapes ``eval`` writes them; other keys are allowed."""
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



def json_safe(value: Any) -> Any:
    """NaN and ±inf become null, so the files are strict JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class EvalReport:
    """``results.json``: per task, each model's score, TIR and Recovery; retention; settings; the models."""

    data: Dict[str, Any]
    schema: int = SCHEMA  # the schema the file was read from

    @property
    def tasks(self) -> Dict[str, Dict[str, Any]]:
        return self.data.get("tasks") or {}

    @property
    def retain(self) -> Dict[str, Dict[str, Any]]:
        return self.data.get("retain") or {}

    @property
    def settings(self) -> Dict[str, Any]:
        settings = self.data.get("settings")
        return settings if isinstance(settings, dict) else {}

    def to_json(self) -> Dict[str, Any]:
        return json_safe({**self.data, "schema": SCHEMA})

    def write(self, path: Union[str, os.PathLike]) -> None:
        atomic.write_text(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    def markdown(self) -> str:
        from mergekit_transplant.evaluation.tables import eval_markdown

        return eval_markdown(self.data)

    @classmethod
    def from_json(cls, data: Any, source: str = "eval results") -> "EvalReport":
        if isinstance(data, EvalReport):
            return data
        data = versioned.parsed(data, source)
        _check(data, source)
        schema = versioned.schema_of(data, READABLE_SCHEMAS, source, "results")
        return cls({k: v for k, v in data.items() if k != "schema"}, schema)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "EvalReport":
        return versioned.load(path, "eval results", cls.from_json)
