"""The analysis report (``AnalysisReport``, JSON) and the console table of top modules.

The report is the complete record of a run: settings, both models'
fingerprints, every candidate's scores with a per-sample summary, each
score's ranking, the selection, and timing. Everything but ``timing`` is a
pure function of the inputs, and keys are sorted, so two runs on the same
inputs give files that differ only there (``sweep`` relies on this).

``AnalysisReport`` is what ``sweep``, ``card`` and the other consumers read:
``from_json`` takes any schema this version knows (1: before ``settings``
recorded ``also``, ``allow_pickle`` and ``command``; 2: now), checks the fields
consumers rely on, keeps unknown keys, and refuses a newer schema by name. Its
settings are an ``AnalyzeSettings``, so the command that reproduces a report is
``report.settings.to_cli()``. For code written against the plain dict, the
report also reads like one (``report["ranking"]``), in the JSON layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from mergekit_transplant import versioned
from mergekit_transplant.analysis.candidates import Candidate
from mergekit_transplant.analysis.scores import ScoreTable, consistency_k, summarize
from mergekit_transplant.analysis.selection import Picked
from mergekit_transplant.analysis.settings import AnalyzeSettings
from mergekit_transplant.checkpoint import ModelIndex
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.recipe import Selection

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # a file without "schema" (written by hand) is read as 1
REPORT_WHAT = "the report.json of `mergekit-transplant analyze`"
# the sections besides settings, typed below; other top-level keys are kept in ``extra``
_SECTIONS = ("models", "candidates", "ranking", "selection", "selected", "skipped_modules", "warnings", "timing",
             "layers", "generations", "greedy", "controls", "plan")
_SETTINGS_KEYS = ("scores_computed", "workload", "command")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(source: str, problem: str, hint: Optional[str] = None) -> TransplantError:
    return TransplantError(f"{source}: not {REPORT_WHAT}: {problem}" + (f" ({hint})" if hint else ""))


@dataclass
class AnalysisReport:
    """One ``analyze`` run: typed settings, and every section of report.json.

    ``settings`` is what ran (resolved: the selection rule and K actually
    used); ``settings_extra`` keeps keys of a file's settings this version does
    not know, and ``extra`` its unknown sections, so a file read and written
    again keeps them.
    """

    settings: AnalyzeSettings
    ranking: Dict[str, List[str]]
    scores_computed: List[str] = field(default_factory=list)
    workload: Dict[str, Any] = field(default_factory=dict)  # Workload.describe(): path, kind, sha256, n, total
    command: Optional[str] = None  # the command line that reproduces the run (settings.to_cli())
    models: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    candidates: List[Dict[str, Any]] = field(default_factory=list)
    selection: List[Dict[str, Any]] = field(default_factory=list)
    selected: Dict[str, Any] = field(default_factory=dict)
    skipped_modules: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    timing: Dict[str, Any] = field(default_factory=dict)
    layers: Optional[List[Dict[str, Any]]] = None  # --granularity layer: the layer units
    generations: Optional[Dict[str, List[str]]] = None  # --capture generate: what each model generated
    greedy: Optional[Dict[str, Any]] = None  # --select greedy: the rounds
    controls: Optional[Dict[str, Any]] = None  # the random-unit comparison
    plan: Optional[Dict[str, Any]] = None  # the memory plan
    settings_extra: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION  # the schema the report was read from

    @property
    def score(self) -> str:
        return self.settings.score

    @property
    def units(self) -> List[str]:
        """The selected units (tensor names, or layer prefixes)."""
        return list(self.selected.get("units") or [])

    def reproduce(self, **replace: Any) -> str:
        """The command that reproduces the run: the recorded one, else ``settings.to_cli(**replace)``."""
        if self.command and not replace:
            return self.command
        return self.settings.to_cli(**replace)

    def settings_json(self) -> Dict[str, Any]:
        out = {**self.settings.record(), **self.settings_extra, "scores_computed": list(self.scores_computed),
               "workload": self.workload}
        if self.command is not None:
            out["command"] = self.command
        return out

    def to_json(self) -> Dict[str, Any]:
        """The report as a JSON object, in the current schema."""
        out: Dict[str, Any] = {**self.extra, "schema": SCHEMA_VERSION, "settings": self.settings_json()}
        for name in _SECTIONS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "analysis report") -> "AnalysisReport":
        """A report from its JSON object (or text), any readable schema; one-line errors name ``source``."""
        if isinstance(data, AnalysisReport):
            return data
        data = versioned.parsed(data, source)
        _check(data, source)
        schema = versioned.schema_of(data, READABLE_SCHEMAS, source, "report")
        recorded = dict(data["settings"])
        known = {f.name for f in dataclasses.fields(AnalyzeSettings) if f.metadata.get("record", True)}
        command = recorded.get("command")
        if isinstance(command, list) and all(isinstance(c, str) for c in command):
            command = shlex.join(command)
        return cls(
            settings=AnalyzeSettings.from_record(recorded),
            scores_computed=[str(s) for s in recorded.get("scores_computed") or []],
            workload=recorded["workload"] if isinstance(recorded.get("workload"), dict) else {},
            command=command if isinstance(command, str) else None,
            settings_extra={k: v for k, v in recorded.items() if k not in known and k not in _SETTINGS_KEYS},
            extra={k: v for k, v in data.items() if k not in _SECTIONS and k not in ("schema", "settings")},
            schema=schema,
            **{name: data[name] for name in _SECTIONS if data.get(name) is not None},
        )

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "AnalysisReport":
        return versioned.load(path, "report", cls.from_json)

    # read like the JSON object, for code written against the plain dict
    def __getitem__(self, key: str) -> Any:
        if key == "settings":
            return self.settings_json()
        if key == "schema":
            return SCHEMA_VERSION
        if key in _SECTIONS and getattr(self, key) is not None:
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _SECTIONS:
            setattr(self, key, value)
        elif key in ("settings", "schema"):
            raise TypeError(f"set report.{key} as an attribute")
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> Iterator[str]:
        return iter(self.to_json())


def _check(data: Any, source: str) -> None:
    """The fields consumers read, in the shapes ``analyze`` writes them; other keys are allowed."""
    if not isinstance(data, dict):
        raise _fail(source, f"expected a JSON object, got {_type(data)}")
    hint = "this looks like eval results: pass it with --eval" if "tasks" in data else None
    if not isinstance(data.get("settings"), dict):
        raise _fail(source, "no 'settings' section", hint)
    ranking = data.get("ranking")
    if not isinstance(ranking, dict) or not ranking:
        raise _fail(source, "no 'ranking' section", hint)
    for score, order in ranking.items():
        if not isinstance(order, list) or not all(isinstance(u, str) for u in order):
            raise _fail(source, f"ranking.{score} is not a list of module names")
    for key in ("candidates", "selection"):
        items = data.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise _fail(source, f"'{key}' is a {_type(items)}, not a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("tensor"), str):
                raise _fail(source, f"{key}[{i}] has no 'tensor' name")
            scores = item.get("scores")
            if scores is None:
                continue
            if not isinstance(scores, dict):
                raise _fail(source, f"{key}[{i}].scores is a {_type(scores)}, not an object")
            for name, value in scores.items():
                if value is not None and not _is_number(value):
                    raise _fail(source, f"{key}[{i}].scores.{name} is a {_type(value)}, not a number")


def build_report(*, settings: AnalyzeSettings, workload: Dict[str, Any], command: Optional[str],
                 target_index: ModelIndex, donor_index: ModelIndex,
                 candidates: Sequence[Candidate], modules_table: ScoreTable, table: ScoreTable,
                 units_info: Optional[Dict[str, dict]], picked: Picked, chosen: Sequence[Selection],
                 computed: Sequence[str], skipped: Sequence[str], warnings: Sequence[str],
                 timing: Dict[str, float], generations: Dict[str, List[str]]) -> AnalysisReport:
    top_k = settings.top_k
    k_modules = consistency_k(len(picked.units) if units_info is None else 0, top_k, len(modules_table.units))
    module_summaries = {s: summarize(modules_table, s, k_modules) for s in computed}
    entries = []
    for i, c in enumerate(candidates):
        entry = {
            "tensor": c.tensor, "module": c.module, "layer": c.layer, "kind": c.kind,
            "parameters": c.parameters, "tensors": list(c.tensors),
            "scores": {s: modules_table.scores[s][i] for s in computed},
            "per_sample": {s: module_summaries[s][c.tensor] for s in computed},
        }
        for key, values in sorted(modules_table.extra.items()):
            entry.setdefault("mean_abs_output", {})[key.rsplit("_", 1)[-1]] = values[i]
        entries.append(entry)
    report = AnalysisReport(
        settings=settings, scores_computed=list(computed), workload=workload, command=command,
        models={
            "target": {"ref": target_index.ref, "architecture": target_index.architecture,
                       "parameters": target_index.num_parameters, **target_index.fingerprint()},
            "donor": {"ref": donor_index.ref, "architecture": donor_index.architecture,
                      "parameters": donor_index.num_parameters, **donor_index.fingerprint()},
        },
        candidates=entries,
        ranking={s: table.ranking(s) for s in computed},
        selection=[{"tensor": s.tensor, "donor": s.donor, "strength": s.strength, "score": s.score}
                   for s in chosen],
        selected={
            "units": list(picked.units), "parameters": picked.parameters,
            "share": picked.parameters / max(target_index.num_parameters, 1),
        },
        skipped_modules=list(skipped),
        warnings=list(warnings),
        timing={k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items()},
    )
    if units_info is not None:
        k_layers = consistency_k(len(picked.units), top_k, len(table.units))
        summaries = {s: summarize(table, s, k_layers) for s in computed}
        report.layers = [
            {"prefix": p, "layer": units_info[p]["layer"], "parameters": units_info[p]["parameters"],
             "modules": list(units_info[p]["modules"]),
             "scores": {s: table.scores[s][j] for s in computed},
             "per_sample": {s: summaries[s][p] for s in computed}}
            for j, p in enumerate(table.units)
        ]
    if generations:
        report.generations = generations
    return report


def dumps(report: Union[AnalysisReport, dict]) -> str:
    if isinstance(report, AnalysisReport):
        report = report.to_json()
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def format_table(report: dict, rows: int = 15) -> str:
    """The top units by the chosen score, with every computed score beside it."""
    settings = report["settings"]
    score = settings["score"]
    computed = settings["scores_computed"]
    layered = "layers" in report
    items = report["layers"] if layered else report["candidates"]
    key = "prefix" if layered else "tensor"
    by_name = {item[key]: item for item in items}
    selected = set(report["selected"]["units"])
    ranking = report["ranking"][score][:rows]
    head = ["#", "layer" if layered else "module", "params"] + computed + [f"top-k({score})", "sel"]
    body = []
    for rank, unit in enumerate(ranking, start=1):
        item = by_name[unit]
        name = unit if layered else item["module"]
        body.append([str(rank), name, f"{item['parameters']:,}"]
                    + [f"{item['scores'][s]:.4g}" for s in computed]
                    + [f"{item['per_sample'][score]['top_k_fraction']:.2f}", "*" if unit in selected else ""])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    align = ["<" if i == 1 else ">" for i in range(len(head))]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    total = len(report["ranking"][score])
    sel = report["selected"]
    lines.append(f"{len(sel['units'])} of {total} {'layers' if layered else 'modules'} selected: "
                 f"{sel['parameters']:,} parameters ({100 * sel['share']:.3f}% of the target)")
    return "\n".join(lines)


def format_greedy(report: dict) -> str:
    """Greedy's rounds: what each chose, its measured gain, the runners-up, and the held-out gain so far."""
    g = report["greedy"]
    lines = [f"greedy: {g['samples']} samples measured, {g['held_out_samples']} held out; "
             f"{g['evaluations']} candidate evaluations; {g['message']}",
             "round  chosen (gain, nats/sample)  held-out so far  runners-up"]
    for i, r in enumerate(g["rounds"], start=1):
        held = "-" if r["held_out"] is None else f"{r['held_out']:+.4g}"
        runners = ", ".join(f"{u} {v:+.4g}" for u, v in r["runners_up"])
        lines.append(f"{i:>5}  {r['unit']} ({r['gain']:+.4g})  {held}  {runners}")
    return "\n".join(lines)
