"""``AnalyzeSettings``: every setting of ``analyze`` in one dataclass, help text in the field metadata.

The click options of ``mergekit-transplant analyze`` are generated from these
fields (``options.py``); ``analyze()`` takes the same object (or the same
names as keyword arguments), the report records it, and ``to_cli()`` turns it
back into the command line that reproduces the run (recipe header, model
card). The score names come from ``analysis.scores.SCORES`` and the selection
settings from ``greedy.SelectConfig``, so nothing here is a second copy.

Fields with ``record: False`` are where outputs go and how the console looks;
they do not change the result and are not recorded in the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import click

from mergekit_transplant.analysis.greedy import SelectConfig
from mergekit_transplant.analysis.scores import SCORES
from mergekit_transplant.analysis.units import ANALYZE_UNITS

CAPTURE_MODES = ("teacher-forced", "generate")
GRANULARITIES = ANALYZE_UNITS  # analysis.units: the unit kinds analyze selects
DEFAULT_SCORE = "local"  # docs/analysis.md: the winner of the held-out protocol (benchmarks/selection.py)
DEFAULT_TOP_K = 4

_SELECT = {f.name: f for f in dataclasses.fields(SelectConfig)}


def _select_field(name: str):
    """The ``SelectConfig`` field, re-declared here with the same default and metadata (one source of help)."""
    f = _SELECT[name]
    return field(default=f.default, metadata=f.metadata)


def _output(help: str, **meta) -> Any:
    return field(default=None, metadata={"help": help, "record": False, "type": click.Path(dir_okay=False),
                                         **meta})


def workload_fields(described: Any) -> Dict[str, str]:
    """``workload`` or ``lm_eval_task`` from a ``Workload.describe()`` record."""
    if not isinstance(described, dict) or not described.get("path"):
        return {}
    path = str(described["path"])
    if described.get("kind") in ("lm-eval", "lm_eval", "lm-eval-task", "task"):
        return {"lm_eval_task": path[len("lm-eval:"):] if path.startswith("lm-eval:") else path}
    return {"workload": path}


@dataclass
class AnalyzeSettings:
    """What ``analyze`` scores, on which workload, how it selects, and where it writes."""

    target: str = field(metadata={"help": "Target model: local folder or Hub id (id@revision)."})
    donor: str = field(metadata={"help": "Donor model: local folder or Hub id (id@revision)."})
    workload: Optional[str] = field(default=None, metadata={
        "type": click.Path(dir_okay=False),
        "help": ".jsonl (a \"text\" field per line, optional \"continuation\") or .txt (one prompt per line)."})
    lm_eval_task: Optional[str] = field(default=None, metadata={
        "help": "Build the workload from this lm-eval task's evaluation documents instead."})
    include_path: List[str] = field(default_factory=list, metadata={
        "multiple": True, "type": click.Path(file_okay=False),
        "help": "Folder of extra lm-eval task YAMLs (repeatable)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use a seeded random subset of this many samples."})
    seed: int = field(default=0, metadata={
        "help": "Seed for --limit's subset, greedy's held-out part and the random controls."})
    score: str = field(default=DEFAULT_SCORE, metadata={
        "choices": SCORES, "pin": True, "help": "Score that ranks modules (and, with --select greedy, pre-filters them)."})
    also: List[str] = field(default_factory=list, metadata={
        "multiple": True, "choices": SCORES, "help": "Compute this score too, for the report (repeatable)."})
    capture: str = field(default="teacher-forced", metadata={
        "choices": CAPTURE_MODES,
        "help": "teacher-forced: both models read the same tokens; generate: each decodes greedily and "
                "statistics are taken at its generated positions."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens to generate (--capture generate)."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Select the K best units."})
    param_budget: Optional[float] = field(default=None, metadata={
        "help": "Select the best units that fit in this fraction of the target's parameters."})
    select: Optional[str] = _select_field("select")
    prefilter: Optional[int] = _select_field("prefilter")
    min_gain: float = _select_field("min_gain")
    holdout_fraction: float = _select_field("holdout_fraction")
    controls: int = _select_field("controls")
    strength: float = field(default=1.0, metadata={"help": "Strength of selected units, in (0, 1]."})
    strength_mode: str = field(default="constant", metadata={
        "choices": ("constant", "proportional"),
        "help": "proportional: strength scales with the score, the best unit gets --strength."})
    modules: List[str] = field(default_factory=list, metadata={
        "multiple": True, "metavar": "GLOB",
        "help": "Only modules whose name matches this fnmatch pattern, e.g. '*mlp*' (repeatable)."})
    include_embeddings: bool = field(default=False, metadata={
        "help": "Make the input embeddings and output head candidates too."})
    granularity: str = field(default="module", metadata={
        "choices": GRANULARITIES,
        "help": "layer: score and select whole decoder layers (recipe filters like model.layers.5.)."})
    device: str = field(default="cpu", metadata={"help": "Device to run on, e.g. cuda, cuda:1, or auto (a GPU when torch sees one, else cpu)."})
    dtype: Optional[str] = field(default=None, metadata={
        "help": "Load models in this dtype (float32, bfloat16, float16); default: as stored."})
    device_map: Optional[str] = field(default=None, metadata={
        "help": "accelerate device map, e.g. auto, for models larger than one device."})
    batch_size: int = field(default=8, metadata={"help": "Workload samples per forward (and backward) pass."})
    max_length: int = field(default=512, metadata={
        "help": "Longest sequence in tokens (capped by the model's context); longer ones are truncated."})
    padding_side: str = field(default="right", metadata={
        "choices": ("right", "left"), "help": "Side a batch's shorter sequences are padded on."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    allow_pickle: bool = field(default=False, metadata={
        "help": "Accept pickle (.bin/.pt) checkpoints (read weights-only, memory-mapped)."})
    gradient_batch_size: Optional[int] = field(default=None, metadata={
        "type": click.IntRange(min=1), "metavar": "ROWS",
        "help": "attribution, gain: rows per forward + backward micro-batch (at most --batch-size). Default: "
                "the most rows whose saved activations (every layer's, until the backward pass) fit in 3/4 "
                "of the weights' size and in the device's free memory, from the memory plan; with "
                "--recompute, --batch-size."})
    recompute: bool = field(default=False, metadata={
        "flags": ("--recompute/--no-recompute",),
        "help": "attribution, gain: recompute each decoder layer in the backward pass and run whole batches "
                "(memory bounded by one layer, but one more forward pass) instead of micro-batches that keep "
                "every layer's activations."})
    force: bool = field(default=False, metadata={
        "record": False, "help": "Run even when the memory plan exceeds the device's free memory."})
    # outputs and console: where the results go, not what they are
    output: Optional[str] = _output("The recipe to write: the command's main artefact (required unless --plan).",
                                    flags=("-o", "--output"))
    report_out: Optional[str] = _output("Also write the full analysis report (JSON) here.",
                                        aliases=("--report",))
    plot: Optional[str] = _output("Also write a layers x module heatmap (PNG) here.")
    plan_only: bool = field(default=False, metadata={
        "flags": ("--plan",), "record": False,
        "help": "Print the memory plan (estimated peak memory, itemised) and stop; nothing is loaded."})
    rows: int = field(default=15, metadata={"record": False, "help": "Rows of the console table."})

    def __post_init__(self) -> None:
        for name in ("also", "modules", "include_path"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, [])
            elif isinstance(value, str):
                setattr(self, name, [value])
            else:
                setattr(self, name, list(value))

    @property
    def choosing(self) -> SelectConfig:
        """The selection settings as ``greedy.SelectConfig`` (validated there)."""
        return SelectConfig(**{name: getattr(self, name) for name in _SELECT})

    def resolved(self) -> "AnalyzeSettings":
        """The defaults that depend on other settings, made explicit (what a run actually used)."""
        select = self.select
        if select is None:  # greedy selects modules, with constant strength
            from mergekit_transplant.analysis.greedy import DEFAULT_SELECT

            select = "top" if self.granularity == "layer" or self.strength_mode != "constant" else DEFAULT_SELECT
        top_k = DEFAULT_TOP_K if self.top_k is None and self.param_budget is None else self.top_k
        return dataclasses.replace(self, select=select, top_k=top_k)

    def record(self) -> Dict[str, Any]:
        """The report's ``settings`` (schema 1 layout): the settings that shape the result, resolved.

        Settings that do not apply to the run are recorded as null (``max_new_tokens`` without
        ``generate``, greedy's settings with ``--select top``); the workload is recorded by
        ``Workload.describe()`` in the report, not by its path.
        """
        greedy = self.select == "greedy"
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("record", True) or f.name in ("workload", "lm_eval_task", "include_path"):
                continue
            out[f.name] = getattr(self, f.name)
        out.update(
            modules=list(self.modules) or None,
            max_new_tokens=self.max_new_tokens if self.capture == "generate" else None,
            prefilter=self.prefilter if greedy else None,
            min_gain=self.min_gain if greedy else None,
            holdout_fraction=self.holdout_fraction if greedy else None,
        )
        return out

    @classmethod
    def from_record(cls, settings: Dict[str, Any]) -> "AnalyzeSettings":
        """Settings back from a report's ``settings`` (any schema): unknown keys are ignored, nulls and
        missing keys take the default, the workload comes back from its description."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        values: Dict[str, Any] = {}
        for key, value in settings.items():
            if key in names and value is not None and names[key].metadata.get("record", True):
                values[key] = value
        values.update(workload_fields(settings.get("workload")))
        computed = settings.get("scores_computed") or []
        score = values.get("score")
        values["also"] = [s for s in computed if s in SCORES and s != score
                          and not (s == "activation" and score != "activation")]
        values.setdefault("target", "")
        values.setdefault("donor", "")
        return cls(**values)

    def with_workload(self, described: Dict[str, Any]) -> "AnalyzeSettings":
        """These settings naming the workload that ran (a ``Workload`` object given to ``analyze()``)."""
        if self.workload or self.lm_eval_task:
            return self
        return dataclasses.replace(self, **workload_fields(described))

    def to_cli(self, **replace: Any) -> str:
        """The command line that reproduces this run (``replace`` overrides fields first, e.g. Hub ids)."""
        from mergekit_transplant.options import to_cli

        settings = dataclasses.replace(self, **replace) if replace else self
        return to_cli(settings, ["mergekit-transplant", "analyze"], exclude=("rows", "plan_only"))


__all__ = ["AnalyzeSettings", "CAPTURE_MODES", "DEFAULT_SCORE", "DEFAULT_TOP_K", "GRANULARITIES"]
