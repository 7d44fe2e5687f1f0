"""The sweep: K × strength in memory, scored by lm-eval, against honest controls.

The target is loaded once. Every point (analysis top-K at strength s, a
random K-module control, or whole-model interpolation at s) is applied to
the live model in place, scored by lm-eval through ``HFLM`` wrapping that
same model, and undone bit for bit. No model is written to disk per point.
Identical weight assignments are scored once (e.g. whole-model at s = 1 is
the donor reference).

Honest selection: the best analysis point is chosen on the selection split
and reported on the held-out report split. When both are the same tasks the
reported figure is optimistic and the result says so.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation import metrics as M
from mergekit_transplant.evaluation.compare import normalize_limit
from mergekit_transplant.evaluation.runner import TaskScores, extract, run_lm_eval
from mergekit_transplant.evaluation.tasks import find_tasks, split_names
from mergekit_transplant.sweep.controls import control_seeds, expand_units, random_units, whole_model_tensors
from mergekit_transplant.sweep.ranking import Ranking

SELECTIONS = ("analysis", "random", "whole-model")
OPTIMISTIC_WARNING = (
    "selection and report split are the same task(s): the best point was chosen on the data it is "
    "reported on, so its score is optimistic. Pass --select-split and --report-split with disjoint tasks "
    "for an honest figure."
)


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
class SweepSettings:
    ks: List[int]
    strengths: List[float]
    select_tasks: List[str]
    report_tasks: List[str]
    include_path: Optional[str] = None
    random_controls: int = 3
    seed: int = 0
    whole_model: bool = True
    limit: Optional[float] = None
    num_fewshot: Optional[int] = None
    batch_size: Any = 8
    device: str = "cpu"
    device_map: Optional[str] = None
    dtype: Optional[str] = None
    metric: Optional[str] = None
    bootstrap_iters: int = 0  # the sweep compares point scores; stderrs are not used
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self):
        self.select_tasks = split_names(self.select_tasks)
        self.report_tasks = split_names(self.report_tasks)
        if not self.select_tasks or not self.report_tasks:
            raise TransplantError("the sweep needs tasks: --tasks, or --select-split and --report-split")
        self.ks = sorted(set(int(k) for k in self.ks))
        if not self.ks or self.ks[0] < 1:
            raise TransplantError(f"--k values must be positive integers (got {self.ks})")
        self.strengths = sorted(set(float(s) for s in self.strengths))
        bad = [s for s in self.strengths if not (math.isfinite(s) and 0.0 < s <= 1.0)]
        if not self.strengths or bad:
            raise TransplantError(f"--strength values must be in (0, 1] (got {bad or self.strengths})")
        control_seeds(self.random_controls)
        self.limit = normalize_limit(self.limit)

    @property
    def single_split(self) -> bool:
        return set(self.select_tasks) == set(self.report_tasks)


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


def check_pair(ranking: Ranking, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """Refuse a target/donor pair the sweep cannot transplant between, from headers only.

    Runs before the target is loaded and before any point is scored: the two
    models must have the same architecture, and every tensor of the candidate
    pool (which the analysis points and the random controls draw from) must
    have the same shape in both. A report made for this very pair passes
    (the analysis never ranks mismatched modules); ``--donor`` or
    ``--target`` overriding the report's models is where this catches a
    wrong model.
    """
    from mergekit_transplant.checkpoint import read_index

    target = read_index(ranking.target, allow_pickle=allow_pickle)
    donor = read_index(ranking.donor, allow_pickle=allow_pickle)
    for role, index in (("target", target), ("donor", donor)):
        if "auto_map" in index.config and not trust_remote_code:
            raise TransplantError(
                f"{role} {index.ref}: its config.json maps to custom code (auto_map), which transformers runs "
                "only with trust_remote_code=True; pass --trust-remote-code if you trust this model"
            )
    if target.architecture != donor.architecture:
        raise TransplantError(
            f"architecture mismatch: target {ranking.target} is {target.architecture}, donor {ranking.donor} is "
            f"{donor.architecture}; a transplant needs structurally identical models"
        )
    t_tensors, d_tensors = target.all_tensors(), donor.all_tensors()
    shared = sorted(set(t_tensors) & set(d_tensors))
    mismatched: List[str] = []
    for unit in ranking.pool:
        names = [unit] if unit in t_tensors else [n for n in shared if n.startswith(unit)]
        for name in names:
            if name in d_tensors and tuple(t_tensors[name].shape) != tuple(d_tensors[name].shape):
                mismatched.append(name)
    if mismatched:
        first = mismatched[0]
        raise TransplantError(
            f"shape mismatch in {len(mismatched)} tensor(s) of the candidate pool between target {ranking.target} "
            f"and donor {ranking.donor}, e.g. {first}: {list(t_tensors[first].shape)} in the target, "
            f"{list(d_tensors[first].shape)} in the donor; the sweep needs a donor with the target's shapes "
            "(run analyze on this pair to rank only modules that match)"
        )


class Sweeper:
    """Holds the live target, the donor reader and lm-eval's wrapper; scores points."""

    def __init__(self, ranking: Ranking, settings: SweepSettings):
        from lm_eval.models.huggingface import HFLM

        from mergekit_transplant.loading import load_causal_lm
        from mergekit_transplant.sweep.inplace import DonorTensors, LiveTransplant

        check_pair(ranking, allow_pickle=settings.allow_pickle, trust_remote_code=settings.trust_remote_code)
        self.ranking, self.settings = ranking, settings
        self.tasks = find_tasks(settings.select_tasks + settings.report_tasks, settings.include_path)
        self.splits = {
            "select": self.tasks.expand(settings.select_tasks), "report": self.tasks.expand(settings.report_tasks)
        }
        self.task_names = list(dict.fromkeys(self.splits["select"] + self.splits["report"]))
        self.task_objects = self.tasks.load(self.task_names)
        start = time.perf_counter()
        self.model, tokenizer = load_causal_lm(
            ranking.target, device=settings.device, dtype=settings.dtype, device_map=settings.device_map,
            trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle,
        )
        self.lm = HFLM(pretrained=self.model, tokenizer=tokenizer, batch_size=settings.batch_size)
        self.live = LiveTransplant(self.model, DonorTensors(ranking.donor, allow_pickle=settings.allow_pickle))
        self.load_s = time.perf_counter() - start
        shared = [n for n in self.live.tensors if n in self.live.donor.index.tensors]
        self.available = shared
        self.memo: Dict[Tuple, Dict[str, TaskScores]] = {}
        self.evaluations = 0
        self.eval_s = 0.0

    def prepare(self, point: Point) -> Point:
        if point.units and not point.tensors:
            point.tensors = expand_units(point.units, self.available)
        self.live.check(point.tensors)
        seen, total = set(), 0
        for name in point.tensors:
            tensor = self.live.tensors[name]
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel()
        point.parameters = total
        return point

    def score(self, point: Point) -> Dict[str, TaskScores]:
        key = tuple(sorted((t, s) for t, s in point.assignment().items() if s != 0.0))
        if key not in self.memo:
            s = self.settings
            start = time.perf_counter()
            with self.live.applied(dict(key)):
                results = run_lm_eval(
                    self.lm, self.task_objects, task_manager=self.tasks.manager, limit=s.limit,
                    num_fewshot=s.num_fewshot, bootstrap_iters=s.bootstrap_iters, seed=s.seed,
                    model_name=f"target {self.ranking.target}",
                )
            self.eval_s += time.perf_counter() - start
            self.evaluations += 1
            self.memo[key] = {t: extract(results, t) for t in self.task_names}
        return self.memo[key]


def plan_points(ranking: Ranking, settings: SweepSettings, whole_model: List[str]) -> List[Point]:
    """Every point of the sweep, analysis first at each (K, s), then its controls."""
    too_big = [k for k in settings.ks if k > len(ranking.order)]
    if too_big:
        raise TransplantError(
            f"K={too_big[0]} exceeds the {len(ranking.order)} modules ranked by score {ranking.score!r}"
        )
    if any(k > len(ranking.pool) for k in settings.ks):
        raise TransplantError(f"K exceeds the candidate pool of {len(ranking.pool)} modules")
    points: List[Point] = []
    if settings.whole_model:
        for s in settings.strengths:
            points.append(Point("whole-model", len(whole_model), s, None, [], list(whole_model)))
    for k in settings.ks:
        for s in settings.strengths:
            points.append(Point("analysis", k, s, None, ranking.order[:k]))
            for seed in control_seeds(settings.random_controls, settings.seed):
                points.append(Point("random", k, s, seed, random_units(ranking.pool, k, seed)))
    return points


def run_sweep(ranking: Ranking, settings: SweepSettings, *, progress: bool = True) -> SweepResult:
    """Score every point of the sweep on the live target; see the module docstring."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    sweeper = Sweeper(ranking, settings)
    whole = whole_model_tensors(sweeper.live.tensors, sweeper.live.donor.index.tensors)
    expand_units(ranking.pool, sweeper.available)  # every candidate must exist in both models
    references = {
        "target": Point("target", 0, 0.0, None, []),
        "donor": Point("donor", len(whole), 1.0, None, [], list(whole)),
    }
    points = plan_points(ranking, settings, whole)
    labels = {role: "+".join(names) for role, names in sweeper.splits.items()}
    if settings.single_split:
        labels["report"] = labels["select"]
    metric_of: Dict[str, str] = {}
    directions: Dict[str, bool] = {}
    everything = list(references.values()) + points
    for point in tqdm(everything, desc="sweep", unit="point", file=sys.stderr, disable=not progress):
        sweeper.prepare(point)
        scores = sweeper.score(point)
        if not metric_of:  # first point: fix each task's metric and check they agree on direction
            for task in sweeper.task_names:
                metric_of[task] = scores[task].primary(settings.metric)
                directions[task] = scores[task].direction(metric_of[task])
            if len(set(directions.values())) > 1:
                raise TransplantError(
                    "the sweep's tasks mix higher- and lower-is-better metrics: "
                    + ", ".join(f"{t} ({metric_of[t]})" for t in sweeper.task_names)
                )
        for task in sweeper.task_names:
            point.task_scores[task] = scores[task].metrics.get(metric_of[task])
        for role, names in sweeper.splits.items():
            values = [point.task_scores[t] for t in names]
            point.split_scores[labels[role]] = (
                statistics.fmean(values) if all(v is not None for v in values) else None
            )
    result = SweepResult(
        settings=settings, ranking=ranking, splits=sweeper.splits, split_labels=labels,
        higher_is_better=next(iter(directions.values()), True), metrics=metric_of, points=points,
        references=references,
        timing={
            "load_s": round(sweeper.load_s, 3), "eval_s": round(sweeper.eval_s, 3),
            "evaluations": sweeper.evaluations, "points": len(everything),
            "total_s": round(time.perf_counter() - started, 3),
        },
    )
    if settings.single_split:
        result.warnings.append(OPTIMISTIC_WARNING)
    summary = result.summary()
    if summary["beats_every_random_control"] is False:
        result.warnings.append(
            f"the best analysis point (K={summary['k']}, strength={summary['strength']:g}) does not beat every "
            f"random control of the same size on {labels['report']}"
        )
    return result
