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

import statistics
import sys
import time
from typing import Dict, List, Tuple

from mergekit_transplant.checkpoint.environment import check_device
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation.runner import TaskScores, extract, run_lm_eval
from mergekit_transplant.evaluation.tasks import find_tasks
from mergekit_transplant.sweep.controls import control_seeds, expand_units, random_units, whole_model_tensors
from mergekit_transplant.sweep.ranking import Ranking
from mergekit_transplant.sweep.result import Point, SweepResult
from mergekit_transplant.sweep.settings import SweepSettings

SELECTIONS = ("analysis", "random", "whole-model")
OPTIMISTIC_WARNING = (
    "selection and report split are the same task(s): the best point was chosen on the data it is "
    "reported on, so its score is optimistic. Pass --select-split and --report-split with disjoint tasks "
    "for an honest figure."
)


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
        from mergekit_transplant.inplace import DonorTensors, LiveTransplant

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
            ranking.target, device=check_device(settings.device), dtype=settings.dtype, device_map=settings.device_map,
            trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle,
        )
        try:
            self.lm = HFLM(pretrained=self.model, tokenizer=tokenizer, batch_size=settings.batch_size,
                           **settings.hflm_kwargs())
        except TypeError as error:
            raise TransplantError(f"--model-args {settings.model_args!r}: lm-eval's HFLM refused it ({error})") from None
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
                    model_name=f"target {self.ranking.target}", prompt=s.prompt,
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
