"""``unplug sweep``: every score at every keep ratio, in memory, against random keeps, scored by lm-eval.

The model is loaded once and scored once per score (random: once per seed).
Each point enters ``unplugged()`` (the real smaller weights, not a mask),
runs lm-eval on the selection, report and retain tasks through ``HFLM``
wrapping that same model, and leaves it restored bit for bit. Honest
selection is the ``sweep`` command's own rule (``sweep.runner.choose_best``):
the keep ratio of the chosen score with the best selection-split score wins,
ties going to the smaller model; its figure is read on the held-out report
split, which the choice never sees.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation.tables import fmt, table
from mergekit_transplant.sweep.result import band_of, choose_best, oriented
from mergekit_transplant.sweep.runner import OPTIMISTIC_WARNING
from mergekit_transplant.unplug.config import UnplugSweepSettings

SCHEMA = 1
ROLES = ("select", "report", "retain")


@dataclass
class UnplugPoint:
    """One evaluated model: the full base (score ``full``) or an expert at one keep ratio."""

    score: str  # "full" | attribution | activation | wanda | random
    keep: float
    seed: Optional[int]
    kept_size: int
    parameters: int
    task_scores: Dict[str, Optional[float]] = field(default_factory=dict)
    split_scores: Dict[str, Optional[float]] = field(default_factory=dict)  # split label -> mean over its tasks


@dataclass
class UnplugSweepResult:
    settings: Dict[str, Any]
    splits: Dict[str, List[str]]  # role -> task names
    labels: Dict[str, str]  # role -> split label
    metrics: Dict[str, str]  # task -> metric read
    higher_is_better: bool
    full: UnplugPoint
    points: List[UnplugPoint]
    timing: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    schema: int = SCHEMA

    # ------------------------------------------------------------------ reading the points
    def of(self, score: str, keep: Optional[float] = None) -> List[UnplugPoint]:
        return [p for p in self.points if p.score == score and (keep is None or p.keep == keep)]

    @property
    def keeps(self) -> List[float]:
        return sorted({p.keep for p in self.points})

    @property
    def scores(self) -> List[str]:
        return list(dict.fromkeys(p.score for p in self.points))

    def value(self, score: str, keep: float, role: str = "report") -> Optional[float]:
        """The point's split score (for random: the mean over seeds)."""
        label = self.labels.get(role)
        values = [p.split_scores.get(label) for p in self.of(score, keep)]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    def band(self, keep: float, role: str = "report") -> Dict[str, Any]:
        label = self.labels.get(role)
        return band_of([p.split_scores.get(label) for p in self.of("random", keep)])

    def best(self) -> UnplugPoint:
        """The chosen score's best keep ratio on the selection split (ties: the smaller model)."""
        return choose_best(self.of(self.settings["score"]), self.labels["select"], self.higher_is_better,
                           size=lambda p: (p.parameters, p.keep))

    def summary(self) -> Dict[str, Any]:
        best = self.best()
        report = self.labels["report"]
        band = self.band(best.keep)
        score = best.split_scores.get(report)
        full = self.full.split_scores.get(report)
        beats = None
        if band["n"]:
            beats = oriented(score, self.higher_is_better) > max(
                oriented(v, self.higher_is_better) for v in (band["min"], band["max"]))
        retain = self.labels.get("retain")
        return {
            "score": best.score, "keep": best.keep, "kept_size": best.kept_size, "parameters": best.parameters,
            "full_parameters": self.full.parameters,
            "select_score": best.split_scores.get(self.labels["select"]), "report_score": score,
            "full_report_score": full,
            "kept_fraction_of_full": (score / full) if score is not None and full else None,
            "retain_score": best.split_scores.get(retain) if retain else None,
            "full_retain_score": self.full.split_scores.get(retain) if retain else None,
            "random": band, "beats_every_random": beats,
            "optimistic": set(self.splits["select"]) == set(self.splits["report"]),
        }

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["best"] = self.summary()
        data["random_bands"] = [{"keep": k, "split": self.labels[r], **self.band(k, r)}
                                for k in self.keeps for r in ROLES if r in self.labels]
        return data

    def to_json(self) -> str:
        from mergekit_transplant.evaluation.results import json_safe

        return json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: Any, source: str = "unplug-sweep.json") -> "UnplugSweepResult":
        """The result from unplug-sweep.json's text (or object); ``best`` and ``random_bands`` are recomputed."""
        from mergekit_transplant.unplug.report import versioned_object

        data = versioned_object(text, source, (SCHEMA,), "unplug sweep")
        try:
            points = [UnplugPoint(**p) for p in data["points"]]
            return cls(settings=data["settings"], splits=data["splits"], labels=data["labels"],
                       metrics=data["metrics"], higher_is_better=data["higher_is_better"],
                       full=UnplugPoint(**data["full"]), points=points, timing=data.get("timing") or {},
                       warnings=data.get("warnings") or [])
        except (KeyError, TypeError) as error:
            raise TransplantError(f"{source}: malformed unplug sweep ({type(error).__name__}: {error})") from None

    @classmethod
    def load(cls, path: os.PathLike | str) -> "UnplugSweepResult":
        from mergekit_transplant import versioned

        return versioned.load(path, "unplug sweep results", cls.from_json)


def write_sweep_json(result: UnplugSweepResult, path: os.PathLike | str) -> None:
    from mergekit_transplant import atomic

    atomic.write_text(path, result.to_json())


def markdown_table(result: UnplugSweepResult) -> str:
    report, select = result.labels["report"], result.labels["select"]
    named = [s for s in result.scores if s != "random"]
    header = ["keep", "parameters"] + [f"{s} ({report})" for s in named]
    if "random" in result.scores:
        header += ["random mean ± std", "random min–max"]
    if "retain" in result.labels:
        header += [f"{s} retain" for s in named]
    rows = []
    for keep in result.keeps:
        first = (result.of(named[0], keep) if named else result.of("random", keep))[0]
        row = [f"{keep:g}", f"{first.parameters:,}"] + [fmt(result.value(s, keep)) for s in named]
        if "random" in result.scores:
            b = result.band(keep)
            row += [fmt(b["mean"], b["std"]) if b["n"] else "-", f"{fmt(b['min'])}–{fmt(b['max'])}" if b["n"] else "-"]
        if "retain" in result.labels:
            row += [fmt(result.value(s, keep, "retain")) for s in named]
        rows.append(row)
    best = result.summary()
    direction = "higher" if result.higher_is_better else "lower"
    metrics = ", ".join(f"{t}: {m}" for t, m in result.metrics.items())
    full_retain = f", retain {fmt(best['full_retain_score'])}" if best["full_retain_score"] is not None else ""
    lines = [
        table(header, rows), "",
        f"Scores: {metrics} ({direction} is better). Full model ({result.full.parameters:,} parameters): "
        f"{fmt(best['full_report_score'])} on {report}{full_retain}.",
        f"Best keep for {best['score']} (chosen on {select}): {best['keep']:g} ({best['parameters']:,} parameters): "
        f"{fmt(best['report_score'])} on {report}"
        + (f", retain {fmt(best['retain_score'])}" if best["retain_score"] is not None else "") + ".",
    ]
    return "\n".join(lines) + "\n"


class _Evaluator:
    """lm-eval on the live model, with the metric of each task fixed by the first evaluation."""

    def __init__(self, settings: UnplugSweepSettings, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        from mergekit_transplant.evaluation.tasks import find_tasks, split_names

        self.settings = settings
        roles = {"select": settings.select_tasks, "report": settings.report_tasks}
        if settings.retain_tasks:
            roles["retain"] = settings.retain_tasks
        names = [n for v in roles.values() for n in split_names(v)]
        self.tasks = find_tasks(names, settings.include_path)
        self.splits = {role: self.tasks.expand(split_names(v)) for role, v in roles.items()}
        self.task_names = list(dict.fromkeys(n for names in self.splits.values() for n in names))
        self.task_objects = self.tasks.load(self.task_names)
        self.labels = {role: "+".join(names) for role, names in self.splits.items()}
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.eval_batch_size)
        self.metrics: Dict[str, str] = {}
        self.directions: Dict[str, bool] = {}
        self.seconds = 0.0
        self.evaluations = 0

    def score(self, point: UnplugPoint, name: str) -> None:
        from mergekit_transplant.evaluation.runner import extract, run_lm_eval

        s = self.settings
        start = time.perf_counter()
        results = run_lm_eval(self.lm, self.task_objects, task_manager=self.tasks.manager, limit=s.limit,
                              num_fewshot=s.num_fewshot, bootstrap_iters=0, seed=s.seed, model_name=name)
        self.seconds += time.perf_counter() - start
        self.evaluations += 1
        scores = {t: extract(results, t) for t in self.task_names}
        if not self.metrics:
            for t in self.task_names:
                self.metrics[t] = scores[t].primary(s.metric)
                self.directions[t] = scores[t].direction(self.metrics[t])
            chosen = {self.directions[t] for role in ("select", "report") for t in self.splits[role]}
            if len(chosen) > 1:
                raise TransplantError("the selection and report tasks mix higher- and lower-is-better metrics: "
                                      + ", ".join(f"{t} ({self.metrics[t]})" for t in self.task_names))
        for t in self.task_names:
            point.task_scores[t] = scores[t].metrics.get(self.metrics[t])
        for role, names in self.splits.items():
            values = [point.task_scores[t] for t in names]
            point.split_scores[self.labels[role]] = (
                statistics.fmean(values) if all(v is not None for v in values) else None)


def run_unplug_sweep(settings: UnplugSweepSettings, *, progress: bool = True) -> UnplugSweepResult:
    """Evaluate every (score, keep) expert of ``settings.model`` in memory; see the module docstring."""
    import torch
    from tqdm.auto import tqdm

    from mergekit_transplant.analysis.pipeline import _pad_id
    from mergekit_transplant.unplug.pipeline import (
        base_fingerprint,
        check_keep_fits,
        inspect_base,
        load_scoring_model,
        make_report,
        model_parameters,
        read_workload,
        tokenised,
    )
    from mergekit_transplant.unplug.runtime import unplugged
    from mergekit_transplant.unplug.scores import random_scores, score_neurons

    started = time.perf_counter()
    base = inspect_base(settings.model, allow_pickle=settings.allow_pickle,
                        trust_remote_code=settings.trust_remote_code)
    sizes = {keep: check_keep_fits(keep, base, "--keep value") for keep in settings.keeps}
    workload = read_workload(settings, limit=settings.workload_limit)
    model, tokenizer = load_scoring_model(settings, base)
    evaluator = _Evaluator(settings, model, tokenizer)
    seqs, notes = tokenised(workload, model, tokenizer, settings.max_length)
    fingerprint = base_fingerprint(settings, base)
    torch.manual_seed(settings.seed)
    score_s = time.perf_counter()
    rankings = {}
    for score in settings.scores:
        if score == "random":
            for i in range(settings.random_seeds):
                rankings[("random", settings.seed + i)] = random_scores(
                    base.intermediate_size, base.num_layers, settings.seed + i)
        else:
            rankings[(score, None)] = score_neurons(
                model, base.layout, seqs, score=score, layers=base.num_layers, intermediate=base.intermediate_size,
                batch_size=settings.batch_size, pad_id=_pad_id(tokenizer), progress=progress)
    score_s = time.perf_counter() - score_s
    total_params = base.index.num_parameters
    full = UnplugPoint("full", 1.0, None, base.intermediate_size, total_params)
    plan = []
    for keep in settings.keeps:
        params = model_parameters(base.index, base.layout, base.num_layers, base.intermediate_size, sizes[keep])[1]
        for (score, seed), ranking in rankings.items():
            plan.append((UnplugPoint(score, keep, seed, sizes[keep], params), ranking))
    bar = tqdm(total=len(plan) + 1, desc="unplug sweep", unit="point", file=sys.stderr, disable=not progress)
    try:
        evaluator.score(full, f"full model {settings.model}")
        bar.update(1)
        for point, ranking in plan:
            report = make_report(settings, base, workload, ranking, point.keep, point.kept_size, {}, fingerprint)
            with unplugged(model, report):
                evaluator.score(point, f"{point.score} expert at keep {point.keep:g} of {settings.model}")
            bar.update(1)
    finally:
        bar.close()
    public = asdict(settings)
    public.update(select_split=evaluator.labels["select"], report_split=evaluator.labels["report"],
                  workload_info=workload.describe(), intermediate_size=base.intermediate_size,
                  num_layers=base.num_layers, base_fingerprint=fingerprint)
    result = UnplugSweepResult(
        settings=public, splits=evaluator.splits, labels=evaluator.labels, metrics=evaluator.metrics,
        higher_is_better=next(iter(evaluator.directions.values()), True), full=full,
        points=[p for p, _ in plan], warnings=list(notes),
        timing={"score_s": round(score_s, 3), "eval_s": round(evaluator.seconds, 3),
                "evaluations": evaluator.evaluations, "total_s": round(time.perf_counter() - started, 3)},
    )
    summary = result.summary()
    if summary["optimistic"]:
        result.warnings.append(OPTIMISTIC_WARNING)
    if summary["beats_every_random"] is False:
        result.warnings.append(f"the best {summary['score']} expert (keep {summary['keep']:g}) does not beat every "
                               f"random keep of the same size on {result.labels['report']}")
    return result
