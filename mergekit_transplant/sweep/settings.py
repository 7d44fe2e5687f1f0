"""``SweepSettings``: how a sweep runs (points, controls, lm-eval), one dataclass with its options' help.

Apart from the runner so that ``sweep.result`` can build the settings back from
a sweep.json (``SweepResult.from_json``) without importing the runner, which
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation.compare import normalize_limit
from mergekit_transplant.evaluation.runner import PromptOptions
from mergekit_transplant.evaluation.tasks import split_names
from mergekit_transplant.strength import strength_problem
from mergekit_transplant.sweep.controls import control_seeds
from mergekit_transplant.values import floats, ints


def _ints(text: Any) -> List[int]:
    return ints(text, "--k")


def _floats(text: Any) -> List[float]:
    return floats(text, "--strength")


@dataclass
class SweepSettings:
    """How the sweep runs: the points, the controls, and how lm-eval scores them.

    The ``sweep`` command's options are generated from these fields (help text in the metadata,
    ``options.py``); where the ranking comes from, the tasks and the output files are the command's
    own options (``--tasks`` fills both splits)."""

    ks: List[int] = field(default_factory=lambda: [4, 8, 16, 32], metadata={
        "flags": ("--k",), "parse": _ints, "help": "Comma-separated numbers of modules to transplant."})
    strengths: List[float] = field(default_factory=lambda: [1.0], metadata={
        "flags": ("--strength",), "parse": _floats, "help": "Comma-separated strengths in (0, 1]."})
    select_tasks: List[str] = field(default_factory=list)  # cli: --select-split (or --tasks)
    report_tasks: List[str] = field(default_factory=list)  # cli: --report-split (or --tasks)
    include_path: Optional[str] = field(default=None, metadata={"help": "Folder of local lm-eval task YAMLs."})
    random_controls: int = field(default=3, metadata={
        "help": "Random module sets of the same size per (K, strength), seeds SEED..SEED+N-1."})
    seed: int = field(default=0, metadata={"help": "First random-control seed; lm-eval's seed."})
    whole_model: bool = field(default=True, metadata={
        "flags": ("--whole-model/--no-whole-model",), "show_default": False,
        "help": "Score the whole-model interpolation control at each strength (--no-whole-model skips it)."})
    limit: Optional[float] = field(default=None, metadata={"help": "Documents per task (below 1: a fraction)."})
    num_fewshot: Optional[int] = field(default=None, metadata={
        "help": "Few-shot examples (default: each task's own)."})
    batch_size: Any = field(default=8, metadata={"help": "lm-eval batch size, or 'auto'."})
    device: str = field(default="cpu", metadata={"help": "Device the target is loaded on (e.g. cuda, or auto: a GPU when torch sees one, else cpu)."})
    device_map: Optional[str] = field(default=None, metadata={
        "help": "accelerate device map (e.g. auto) for a target larger than one device."})
    dtype: Optional[str] = field(default=None, metadata={
        "help": "Load the target in this dtype (default: the checkpoint's)."})
    metric: Optional[str] = field(default=None, metadata={
        "help": "Metric to sweep (default: each task's first metric)."})
    bootstrap_iters: int = 0  # the sweep compares point scores; stderrs are not used
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    allow_pickle: bool = field(default=False, metadata={
        "help": "Accept models whose only weights are pickle files (pytorch_model.bin), read with torch's "
                "weights-only unpickler. Only for sources you trust."})
    #: extra arguments of lm-eval's HFLM wrapper around the loaded model, e.g. "max_length=2048,add_bos_token=True"
    model_args: Optional[str] = field(default=None, metadata={
        "metavar": "K=V,...",
        "help": "Extra arguments of lm-eval's HFLM around the loaded target, e.g. 'max_length=2048' "
                "(not pretrained/dtype/device: see --dtype, --device)."})
    prompt: PromptOptions = field(default_factory=PromptOptions)  # cli: prompt_options (lm-eval's names)

    def hflm_kwargs(self) -> Dict[str, Any]:
        """``model_args`` parsed as lm-eval does; the model, tokenizer and batch size are the sweep's own."""
        if not self.model_args:
            return {}
        from lm_eval.utils import simple_parse_args_string

        try:
            parsed = simple_parse_args_string(self.model_args)
        except Exception as error:
            raise TransplantError(f"--model-args {self.model_args!r}: expected key=value,key=value ({error})") from None
        taken = sorted(set(parsed) & {"pretrained", "tokenizer", "batch_size", "device", "dtype", "revision"})
        if taken:
            raise TransplantError(f"--model-args must not set {', '.join(taken)}: the sweep loads the target itself "
                                  "(use --device/--dtype/--batch-size)")
        return parsed

    def __post_init__(self):
        if isinstance(self.prompt, dict):  # from asdict / JSON
            self.prompt = PromptOptions(**self.prompt)
        self.hflm_kwargs()  # a malformed --model-args is refused before any model is loaded
        self.select_tasks = split_names(self.select_tasks)
        self.report_tasks = split_names(self.report_tasks)
        if not self.select_tasks or not self.report_tasks:
            raise TransplantError("the sweep needs tasks: --tasks, or --select-split and --report-split")
        self.ks = sorted(set(int(k) for k in self.ks))
        if not self.ks or self.ks[0] < 1:
            raise TransplantError(f"--k values must be positive integers (got {self.ks})")
        self.strengths = sorted(set(float(s) for s in self.strengths))
        bad = [s for s in self.strengths if strength_problem(s, allow_zero=False) is not None]
        if not self.strengths or bad:
            raise TransplantError(f"--strength values must be in (0, 1] (got {bad or self.strengths})")
        control_seeds(self.random_controls)
        self.limit = normalize_limit(self.limit)

    @property
    def single_split(self) -> bool:
        return set(self.select_tasks) == set(self.report_tasks)
