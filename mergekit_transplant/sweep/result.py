"""The sweep's selection and reporting rules, apart from the scoring that feeds them.

``SweepResult.best`` picks the best analysis point on the *selection* split
(ties: fewer parameters, then lower strength, then smaller K);
``SweepResult.summary`` reports that point on the held-out *report* split,
next to the target, the donor, the random-control band of the same (K, s)
and whole-model interpolation. These few rules are what make the sweep's
headline figure honest, so they live here, small enough for
``make mutation`` to check every line of them (docs/testing.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation import metrics as M
from mergekit_transplant.sweep.ranking import Ranking


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
    settings: Any  # a sweep.runner.SweepSettings (not imported here: runner imports this module)
    ranking: Ranking
    splits: Dict[str, List[str]]  # "select"/"report" -> task names
    split_labels: Dict[str, str]  # "select"/"report" -> label used in rows
    higher_is_better: bool
    metrics: Dict[str, str]  # task -> headline metric
    points: List[Point]
    references: Dict[str, Point]
    timing: Dict[str, float]
    warnings: List[str] = field(default_factory=list)

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

    def to_dict(self) -> Dict[str, Any]:
        settings = asdict(self.settings)
        settings.update({
            "target": self.ranking.target, "donor": self.ranking.donor, "score": self.ranking.score,
            "ranking_source": self.ranking.source, "select_split": self.split_labels["select"],
            "report_split": self.split_labels["report"], "metrics": self.metrics,
            "higher_is_better": self.higher_is_better, "pool_size": len(self.ranking.pool),
        })
        bands = []
        for k in self.settings.ks:
            for s in self.settings.strengths:
                for role in (["report"] if self.settings.single_split else ["select", "report"]):
                    band = self.band(k, s, role)
                    bands.append({"k": k, "strength": s, "split": self.split_labels[role], **band})
        labels = list(dict.fromkeys(self.split_labels.values()))
        return {
            "settings": settings,
            "points": self.rows(),
            "references": {
                name: {label: ref.split_scores[label] for label in labels} for name, ref in self.references.items()
            },
            "random_bands": bands,
            "best": self.summary(),
            "optimistic": self.settings.single_split,
            "warnings": self.warnings,
            "timing": self.timing,
        }
