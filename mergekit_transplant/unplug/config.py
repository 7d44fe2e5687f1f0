"""Settings of ``unplug`` and ``unplug sweep``: one dataclass each, help text in the field metadata.

The CLI options are generated from these fields (``options.py``), so the
Python API, ``--help`` and the defaults are the same thing. Values are checked
here, before any model is read, so a bad setting fails the same way from
Python and from the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.values import floats

SCORES = ("attribution", "activation", "wanda", "random")
DEFAULT_SWEEP_KEEPS = (0.2, 0.35, 0.5, 0.65)


def _floats(text: str) -> List[float]:
    return floats(text)


def _names(text: str) -> List[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def check_keep(keep: float, option: str = "--keep") -> float:
    try:
        keep = float(keep)
    except (TypeError, ValueError):
        raise TransplantError(f"{option} {keep!r} is not a number") from None
    if not (math.isfinite(keep) and 0.0 < keep <= 1.0):
        raise TransplantError(f"{option} {keep:g} is outside (0, 1]: it is the fraction of each layer's MLP "
                              "neurons to keep")
    return keep


def kept_count(keep: float, intermediate: int) -> int:
    """Neurons every layer keeps: round(keep × intermediate_size) (Python's round, half to even)."""
    return int(round(keep * intermediate))


@dataclass
class ModelSettings:
    """The fields both commands share: the model, the scoring workload and how the scoring pass runs."""

    model: str = field(default="", metadata={"help": "Model to unplug (required): local folder or Hub id "
                                                     "(id@revision)."})
    workload: Optional[str] = field(default=None, metadata={
        "help": ".jsonl (a \"text\" field per line, optional \"continuation\") or .txt (one prompt per line): "
                "what the neurons are scored on."})
    lm_eval_task: Optional[str] = field(default=None, metadata={
        "help": "Score the neurons on this lm-eval task's documents (prompt + gold answer) instead."})
    include_path: Optional[str] = field(default=None, metadata={"help": "Folder of local lm-eval task YAMLs."})
    seed: int = field(default=0, metadata={"help": "Seed of the random score (first seed in a sweep) and of the "
                                                   "workload subset."})
    device: str = field(default="cpu", metadata={"help": "Device the model runs on, e.g. cuda, or auto (a GPU when torch sees one, else cpu)."})
    dtype: Optional[str] = field(default=None, metadata={
        "help": "Load the model in this dtype (float32, bfloat16, float16); a written expert keeps the "
                "checkpoint's dtypes."})
    batch_size: int = field(default=8, metadata={"help": "Workload samples per scoring forward(+backward) pass."})
    max_length: int = field(default=512, metadata={
        "help": "Longest workload sequence in tokens (capped by the model's context); longer ones lose prompt "
                "tokens."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    allow_pickle: bool = field(default=False, metadata={
        "help": "Accept pickle (.bin/.pt) checkpoints (read weights-only). Only for sources you trust."})

    def _check_model_settings(self, *, include_path_for_tasks: bool) -> None:
        if not self.model:
            raise TransplantError("--model is required")
        if self.batch_size < 1:
            raise TransplantError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise TransplantError(f"--max-length must be at least 2, got {self.max_length}")
        if bool(self.workload) == bool(self.lm_eval_task):
            raise TransplantError("give exactly one of --workload FILE or --lm-eval-task NAME")
        if self.include_path and not self.lm_eval_task and not include_path_for_tasks:
            raise TransplantError("--include-path only applies with --lm-eval-task")


@dataclass
class UnplugSettings(ModelSettings):
    """What ``mergekit-transplant unplug`` does: score neurons on a workload, keep the best, write the expert."""

    limit: Optional[int] = field(default=None, metadata={"help": "Use a seeded random subset of this many samples."})
    keep: Optional[float] = field(default=None, metadata={
        "help": "Fraction of each layer's MLP neurons to keep, in (0, 1] (required); every layer keeps "
                "round(keep × intermediate_size)."})
    score: str = field(default="attribution", metadata={
        "choices": SCORES,
        "help": "How neurons are ranked within each layer: attribution Σ|a·∂log p/∂a| (DoE), activation Σ|a|, "
                "wanda Σ|a|·‖W_down[:, j]‖, random (seeded)."})
    output: Optional[str] = field(default=None, metadata={
        "flags": ("-o", "--output"), "help": "Folder to write the expert model to (required; Hub-ready)."})
    report: Optional[str] = field(default=None, metadata={
        "help": "Also write unplug.json here (it is always written inside the output folder)."})
    hub_id: Optional[str] = field(default=None, metadata={
        "help": "Hub id (org/name) of --model for the card's base_model, when --model is a local folder."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty output folder."})

    def __post_init__(self):
        self._check_model_settings(include_path_for_tasks=False)
        if self.keep is None:
            raise TransplantError("--keep is required: the fraction of MLP neurons each layer keeps, in (0, 1]")
        self.keep = check_keep(self.keep)
        if self.score not in SCORES:
            raise TransplantError(f"unknown score {self.score!r}; use one of {', '.join(SCORES)}")
        if self.limit is not None and self.limit < 1:
            raise TransplantError(f"--limit must be at least 1, got {self.limit}")


@dataclass
class UnplugSweepSettings(ModelSettings):
    """What ``mergekit-transplant unplug sweep`` does: every score at every keep ratio, scored by lm-eval."""

    workload_limit: Optional[int] = field(default=None, metadata={
        "help": "Score neurons on a seeded random subset of this many workload samples."})
    keeps: List[float] = field(default_factory=lambda: list(DEFAULT_SWEEP_KEEPS), metadata={
        "flags": ("--keep",), "parse": _floats, "help": "Comma-separated keep ratios in (0, 1]."})
    scores: List[str] = field(default_factory=lambda: list(SCORES), metadata={
        "parse": _names, "help": "Comma-separated scores to compare (random is run with --random-seeds seeds)."})
    score: str = field(default="attribution", metadata={
        "choices": SCORES[:3], "help": "The score whose best keep ratio is chosen and reported."})
    random_seeds: int = field(default=3, metadata={"help": "Seeds of the random control: SEED..SEED+N-1."})
    tasks: Optional[str] = field(default=None, metadata={
        "help": "Comma-separated lm-eval task(s) to choose and report on, where no split option replaces them."})
    select_split: Optional[str] = field(default=None, metadata={
        "help": "lm-eval task(s) the best keep ratio is chosen on (default: --tasks)."})
    report_split: Optional[str] = field(default=None, metadata={
        "help": "Held-out lm-eval task(s) the best keep ratio is reported on (default: --tasks)."})
    retain_tasks: Optional[str] = field(default=None, metadata={
        "help": "Comma-separated lm-eval tasks the expert is not for: what it gave up."})
    metric: Optional[str] = field(default=None, metadata={"help": "Metric to read (default: each task's first)."})
    limit: Optional[float] = field(default=None, metadata={
        "help": "Documents per evaluation task (below 1: a fraction)."})
    num_fewshot: Optional[int] = field(default=None, metadata={"help": "Few-shot examples (default: each task's own)."})
    eval_batch_size: int = field(default=8, metadata={"help": "lm-eval batch size."})
    output: Optional[str] = field(default=None, metadata={"help": "Write unplug-sweep.json here."})
    plot: Optional[str] = field(default=None, metadata={"help": "Write the accuracy-vs-keep plot (PNG/SVG/PDF) here."})

    def __post_init__(self):
        self.keeps = sorted(set(check_keep(k, "--keep value") for k in self.keeps))
        if not self.keeps:
            raise TransplantError("--keep needs at least one ratio")
        unknown = [s for s in [*self.scores, self.score] if s not in SCORES]
        if unknown:
            raise TransplantError(f"unknown score {unknown[0]!r}; use one of {', '.join(SCORES)}")
        self.scores = list(dict.fromkeys(self.scores))
        if self.score not in self.scores:
            self.scores.insert(0, self.score)
        if self.random_seeds < 0:
            raise TransplantError(f"--random-seeds {self.random_seeds} is negative")
        if self.random_seeds == 0 and "random" in self.scores:
            self.scores.remove("random")
        if self.eval_batch_size < 1:
            raise TransplantError(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if self.workload_limit is not None and self.workload_limit < 1:
            raise TransplantError(f"--workload-limit must be at least 1, got {self.workload_limit}")
        self._check_model_settings(include_path_for_tasks=True)  # --include-path also serves the evaluation tasks
        if not ((self.select_split or self.tasks) and (self.report_split or self.tasks)):
            raise TransplantError("no tasks to evaluate on: pass --tasks, or --select-split and --report-split")

    @property
    def select_tasks(self) -> str:
        return self.select_split or self.tasks

    @property
    def report_tasks(self) -> str:
        return self.report_split or self.tasks
