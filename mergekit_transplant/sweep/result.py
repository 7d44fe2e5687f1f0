"""The sweep's selection and reporting rules, apart from the scoring that feeds them.

``SweepResult.best`` picks the best analysis point on the *selection* split
(ties: fewer parameters, then lower strength, then smaller K);
``SweepResult.summary`` reports that point on the held-out *report* split,
next to the target, the donor, the random-control band of the same (K, s)
and whole-model interpolation. These few rules are what make the sweep's
headline figure honest, so they live here, small enough for
``make mutation`` to check every line of them (docs/testing.md).

``SweepResult.to_json``/``from_json`` are sweep.json (schema 2): the settings,
the ranking (order and pool), the splits and every point with its tensors and
task scores, so the file reads back into the same object. The derived views
(``best``, ``random_bands``) are written beside them for people and recomputed
on read. Schema-1 files (no ``schema`` key: one row per point and split) still
load; they never recorded the ranking's pool, the references' task scores or
the tensor names of whole-model points, so those come back empty.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from mergekit_transplant import atomic, versioned
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation import metrics as M
from mergekit_transplant.evaluation.results import json_safe
from mergekit_transplant.sweep.ranking import Ranking
from mergekit_transplant.sweep.settings import SweepSettings

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # 1: no "schema" key, one row per point and split
SWEEP_WHAT = "the sweep.json of `mergekit-transplant sweep`"


def oriented(score: Optional[float], higher_is_better: bool) -> float:
    """A score on a higher-is-better scale; a missing or non-finite one ranks last."""
    if score is None or not math.isfinite(score):
        return -math.inf
    return score if higher_is_better else -score


def choose_best(points: Sequence[Any], select_label: str, higher_is_better: bool, *, size: Callable[[Any], tuple]):
    """The one selection rule of every sweep: the best score on the selection split; ties go to the smaller
    (``size(point)``, compared in order). Points need ``split_scores``; the report split is never read here."""
    if not points:
        raise TransplantError("the sweep scored no point to choose from")
    return min(points, key=lambda p: (-oriented(p.split_scores.get(select_label), higher_is_better), *size(p)))


def band_of(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """n, mean, std, min, max of the finite values (the random-control band)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(values), "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values),
    }


@dataclass
class Point:
    """One weight assignment to score."""

    selection: str  # "analysis" | "random" | "whole-model" | "target" | "donor"
    k: int
    strength: float
    seed: Optional[int]
    units: List[str]
    tensors: List[str] = field(default_factory=list)
    parameters: int = 0
    task_scores: Dict[str, float] = field(default_factory=dict)
    split_scores: Dict[str, float] = field(default_factory=dict)

    def assignment(self) -> Dict[str, float]:
        return {t: self.strength for t in self.tensors}


@dataclass
class SweepResult:
    settings: SweepSettings
    ranking: Ranking
    splits: Dict[str, List[str]]  # "select"/"report" -> task names
    split_labels: Dict[str, str]  # "select"/"report" -> label used in rows
    higher_is_better: bool
    metrics: Dict[str, str]  # task -> headline metric
    points: List[Point]
    references: Dict[str, Point]
    timing: Dict[str, float]
    warnings: List[str] = field(default_factory=list)
    schema: int = SCHEMA  # the schema the result was read from

    # ------------------------------------------------------------------ analysis of the scores
    def oriented(self, score: Optional[float]) -> float:
        return oriented(score, self.higher_is_better)

    def of(self, selection: str, k: Optional[int] = None, strength: Optional[float] = None) -> List[Point]:
        return [
            p for p in self.points
            if p.selection == selection and (k is None or p.k == k) and (strength is None or p.strength == strength)
        ]

    def best(self) -> Point:
        """Best analysis point on the selection split; ties go to the smaller transplant."""
        label = self.split_labels["select"]
        candidates = self.of("analysis")
        if not candidates:
            raise TransplantError("the sweep scored no analysis point")
        return choose_best(candidates, label, self.higher_is_better, size=lambda p: (p.parameters, p.strength, p.k))

    def band(self, k: int, strength: float, split: str = "report") -> Dict[str, Any]:
        return band_of([p.split_scores[self.split_labels[split]] for p in self.of("random", k, strength)])

    def whole_model_score(self, strength: float, split: str = "report") -> Optional[float]:
        points = self.of("whole-model", strength=strength)
        return points[0].split_scores[self.split_labels[split]] if points else None

    def summary(self) -> Dict[str, Any]:
        best = self.best()
        report_label = self.split_labels["report"]
        score = best.split_scores[report_label]
        target = self.references["target"].split_scores[report_label]
        donor = self.references["donor"].split_scores[report_label]
        band = self.band(best.k, best.strength)
        tir = M.tir(target, score, self.higher_is_better)
        rec = M.recovery(target, donor, score)
        beats = None
        if band["n"]:
            beats = self.oriented(score) > max(self.oriented(v) for v in (band["min"], band["max"]))
        return {
            "k": best.k, "strength": best.strength, "units": best.units, "parameters": best.parameters,
            "select_score": best.split_scores[self.split_labels["select"]],
            "report_score": score,
            "target": target, "donor": donor,
            "tir": tir.value, "tir_reason": tir.reason, "recovery": rec.value, "recovery_reason": rec.reason,
            "random_controls": band,
            "beats_every_random_control": beats,
            "whole_model": self.whole_model_score(best.strength),
            "optimistic": self.settings.single_split,
        }

    # ------------------------------------------------------------------ serialisation
    def rows(self) -> List[Dict[str, Any]]:
        labels = list(dict.fromkeys(self.split_labels.values()))
        out = []
        for p in self.points:
            for label in labels:
                out.append({
                    "k": p.k, "strength": p.strength, "selection": p.selection, "seed": p.seed,
                    "score": p.split_scores[label], "split": label, "parameters": p.parameters,
                    "tensors": len(p.tensors), "units": p.units if p.selection != "whole-model" else [],
                    "tasks": {t: p.task_scores[t] for t in self.splits_for(label)},
                })
        return out

    def splits_for(self, label: str) -> List[str]:
        for role, lab in self.split_labels.items():
            if lab == label:
                return self.splits[role]
        return []

    def settings_json(self) -> Dict[str, Any]:
        """The settings as recorded: every ``SweepSettings`` field, and what the run resolved (models, labels,
        metrics, direction, pool size)."""
        settings = asdict(self.settings)
        settings.update({
            "target": self.ranking.target, "donor": self.ranking.donor, "score": self.ranking.score,
            "ranking_source": self.ranking.source, "select_split": self.split_labels["select"],
            "report_split": self.split_labels["report"], "metrics": self.metrics,
            "higher_is_better": self.higher_is_better, "pool_size": len(self.ranking.pool),
        })
        return settings

    def random_bands(self) -> List[Dict[str, Any]]:
        bands = []
        for k in self.settings.ks:
            for s in self.settings.strengths:
                for role in (["report"] if self.settings.single_split else ["select", "report"]):
                    band = self.band(k, s, role)
                    bands.append({"k": k, "strength": s, "split": self.split_labels[role], **band})
        return bands

    def to_dict(self) -> Dict[str, Any]:
        """A flat view for tables and the CSV: one row per point and split label (schema 1's layout)."""
        labels = list(dict.fromkeys(self.split_labels.values()))
        return {
            "settings": self.settings_json(),
            "points": self.rows(),
            "references": {
                name: {label: ref.split_scores[label] for label in labels} for name, ref in self.references.items()
            },
            "random_bands": self.random_bands(),
            "best": self.summary(),
            "optimistic": self.settings.single_split,
            "warnings": self.warnings,
            "timing": self.timing,
        }

    def to_json(self) -> Dict[str, Any]:
        """sweep.json, schema 2: everything ``from_json`` needs to rebuild this object, and the derived views."""
        ranking = self.ranking
        return json_safe({
            "schema": SCHEMA,
            "settings": self.settings_json(),
            "ranking": {"target": ranking.target, "donor": ranking.donor, "score": ranking.score,
                        "source": ranking.source, "order": list(ranking.order), "pool": list(ranking.pool),
                        "parameters": dict(ranking.parameters)},
            "splits": {role: list(names) for role, names in self.splits.items()},
            "points": [asdict(p) for p in self.points],
            "references": {name: asdict(p) for name, p in self.references.items()},
            "random_bands": self.random_bands(),
            "best": self.summary(),
            "optimistic": self.settings.single_split,
            "warnings": list(self.warnings),
            "timing": dict(self.timing),
        })

    def write(self, path: Union[str, os.PathLike]) -> None:
        atomic.write_text(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, data: Any, source: str = "sweep results") -> "SweepResult":
        """A sweep result from sweep.json's object (or text), any readable schema; one-line errors name ``source``."""
        if isinstance(data, SweepResult):
            return data
        data = versioned.parsed(data, source)
        if not isinstance(data, dict):
            raise _fail(source, f"expected a JSON object, got {_type(data)}")
        schema = versioned.schema_of(data, READABLE_SCHEMAS, source, "sweep")
        try:
            return (_from_v2 if schema == 2 else _from_v1)(data, source)
        except TransplantError as error:
            if str(error).startswith(f"{source}: "):
                raise
            raise _fail(source, str(error)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise _fail(source, f"{type(error).__name__}: {error}") from None

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "SweepResult":
        return versioned.load(path, "sweep results", cls.from_json)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(source: str, problem: str) -> TransplantError:
    return TransplantError(f"{source}: not {SWEEP_WHAT}: {problem}")


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}


def _need(data: Dict[str, Any], key: str, kind: type, source: str, where: str = "") -> Any:
    """``data[key]``, which must be a ``kind``; otherwise the one-line error naming the field."""
    value = data.get(key)
    if not isinstance(value, kind):
        found = "missing" if key not in data else f"a {_type(value)}"
        raise _fail(source, f"'{where}{key}' is {found}, not {_KINDS[kind]}")
    return value


def _point(data: Any, source: str, where: str) -> Point:
    if not isinstance(data, dict):
        raise _fail(source, f"{where} is a {_type(data)}, not an object")
    names = {f.name for f in dataclasses.fields(Point)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _fail(source, f"{where} has unknown field(s) {', '.join(unknown)}")
    for key, kind in (("selection", str), ("units", list), ("split_scores", dict)):
        _need(data, key, kind, source, f"{where}.")
    return Point(**data)


def _common(data: Dict[str, Any], source: str) -> Dict[str, Any]:
    """What both schemas record the same way: settings (with the resolved labels, metrics, direction)."""
    recorded = _need(data, "settings", dict, source)
    known = {f.name for f in dataclasses.fields(SweepSettings)}
    settings = SweepSettings(**{k: v for k, v in recorded.items() if k in known})
    labels = {"select": _need(recorded, "select_split", str, source, "settings."),
              "report": _need(recorded, "report_split", str, source, "settings.")}
    return dict(settings=settings, split_labels=labels,
                metrics=_need(recorded, "metrics", dict, source, "settings."),
                higher_is_better=_need(recorded, "higher_is_better", bool, source, "settings."),
                timing=data.get("timing") or {}, warnings=list(data.get("warnings") or []))


def _from_v2(data: Dict[str, Any], source: str) -> "SweepResult":
    common = _common(data, source)
    ranking = _need(data, "ranking", dict, source)
    for key, kind in (("target", str), ("donor", str), ("score", str), ("source", str), ("order", list),
                      ("pool", list), ("parameters", dict)):
        _need(ranking, key, kind, source, "ranking.")
    points = _need(data, "points", list, source)
    references = _need(data, "references", dict, source)
    return SweepResult(
        ranking=Ranking(**{k: ranking[k] for k in ("target", "donor", "score", "order", "pool", "parameters",
                                                      "source")}),
        splits=_need(data, "splits", dict, source),
        points=[_point(p, source, f"points[{i}]") for i, p in enumerate(points)],
        references={name: _point(p, source, f"references.{name}") for name, p in references.items()},
        schema=2, **common)


def _from_v1(data: Dict[str, Any], source: str) -> "SweepResult":
    """Schema 1: one row per (point, split label), in point order; references as {name: {label: score}}."""
    common = _common(data, source)
    recorded, labels = data["settings"], common["split_labels"]
    order = list(dict.fromkeys(labels.values()))
    rows = _need(data, "points", list, source)
    if len(rows) % len(order):
        raise _fail(source, f"{len(rows)} point rows do not split into one per label ({', '.join(order)})")
    splits = {role: [] for role in labels}
    points = []
    for i in range(0, len(rows), len(order)):
        group = rows[i:i + len(order)]
        first = group[0]
        if not isinstance(first, dict) or [r.get("split") if isinstance(r, dict) else None for r in group] != order:
            raise _fail(source, f"points[{i}] does not start a row per label ({', '.join(order)})")
        units = list(_need(first, "units", list, source, f"points[{i}]."))
        named = first["selection"] != "whole-model" and first.get("tensors") == len(units)
        task_scores: Dict[str, Any] = {}
        for row in group:
            task_scores.update(_need(row, "tasks", dict, source, f"points[{i}]."))
            for role, label in labels.items():
                if label == row["split"] and not splits[role]:
                    splits[role] = list(row["tasks"])
        points.append(Point(first["selection"], first["k"], first["strength"], first["seed"], units,
                            units if named else [], first["parameters"], task_scores,
                            {row["split"]: row["score"] for row in group}))
    whole = [p for p in points if p.selection == "whole-model"]
    references = {}
    for name, scores in _need(data, "references", dict, source).items():
        donor = name == "donor" and whole
        references[name] = Point(name, whole[0].k if donor else 0, 1.0 if name == "donor" else 0.0, None, [],
                                 [], whole[0].parameters if donor else 0, {}, dict(scores))
    analysis = [p for p in points if p.selection == "analysis"]
    ranking = Ranking(
        target=_need(recorded, "target", str, source, "settings."), donor=_need(recorded, "donor", str, source,
                                                                                  "settings."),
        score=str(recorded.get("score")), order=max((p.units for p in analysis), key=len, default=[]), pool=[],
        source=str(recorded.get("ranking_source") or ""))
    return SweepResult(ranking=ranking, splits=splits, points=points, references=references, schema=1, **common)
