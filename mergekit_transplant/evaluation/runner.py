"""Run lm-eval on one model and keep, per task, what the metrics need.

A model is either a backend name plus model arguments (``hf``/``vllm``,
loaded by lm-eval itself, so its own parallelism applies) or an lm-eval
``LM`` object wrapping a live model (the sweep). Per task we keep every
metric, its stderr and direction, and per-document values for metrics that
are means of per-document values (checked, not assumed), which give paired
standard errors for merged − target changes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from mergekit_transplant.errors import TransplantError

NON_METRIC_KEYS = {"alias", "name", "sample_len", "sample_count", " ", ""}


@dataclass
class TaskScores:
    """One model's results on one task."""

    task: str
    metrics: Dict[str, float]
    stderr: Dict[str, Optional[float]] = field(default_factory=dict)
    higher_is_better: Dict[str, Optional[bool]] = field(default_factory=dict)
    per_doc: Dict[str, Dict[int, float]] = field(default_factory=dict)
    n: Optional[int] = None

    def metric_names(self) -> List[str]:
        return list(self.metrics)

    def primary(self, wanted: Optional[str] = None) -> str:
        """The headline metric: ``wanted`` (by label or bare name) or the task's first one."""
        if not self.metrics:
            raise TransplantError(
                f"lm-eval task {self.task} reported no metric (a group without an aggregate? "
                "list its subtasks instead)"
            )
        if wanted is None:
            return next(iter(self.metrics))
        if wanted in self.metrics:
            return wanted
        bare = [m for m in self.metrics if m.split(",")[0] == wanted]
        if bare:
            return bare[0]
        raise TransplantError(
            f"metric {wanted!r} is not reported by task {self.task} (it reports: {', '.join(self.metrics)})"
        )

    def direction(self, metric: str) -> bool:
        """higher_is_better for ``metric`` (True when lm-eval does not say)."""
        value = self.higher_is_better.get(metric)
        return True if value is None else bool(value)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "task": self.task, "metrics": self.metrics, "stderr": self.stderr,
            "higher_is_better": self.higher_is_better, "n": self.n,
            "per_doc": {m: {str(k): v for k, v in docs.items()} for m, docs in self.per_doc.items()},
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TaskScores":
        return cls(
            task=data["task"], metrics=dict(data["metrics"]), stderr=dict(data.get("stderr") or {}),
            higher_is_better=dict(data.get("higher_is_better") or {}), n=data.get("n"),
            per_doc={m: {int(k): float(v) for k, v in docs.items()} for m, docs in (data.get("per_doc") or {}).items()},
        )


def metric_label(key: str) -> str:
    """lm-eval's ``"acc,none"`` -> ``"acc"``; other filters stay: ``"exact_match,strict-match"``."""
    name, _, filt = key.partition(",")
    return name if filt in ("", "none") else key


def _number(value: Any) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x  # NaN/inf stay visible; the metrics turn them into null with a reason


def extract(results: Dict[str, Any], task: str) -> TaskScores:
    """TaskScores for ``task`` from a ``simple_evaluate`` result."""
    row = (results.get("results") or {}).get(task)
    if row is None:
        raise TransplantError(f"lm-eval returned no result for task {task}")
    directions = (results.get("higher_is_better") or {}).get(task) or {}
    metrics: Dict[str, float] = {}
    stderr: Dict[str, Optional[float]] = {}
    hib: Dict[str, Optional[bool]] = {}
    for key, value in row.items():
        if key in NON_METRIC_KEYS or "_stderr," in key or "," not in key:
            continue
        number = _number(value)
        if number is None:
            continue
        name, _, filt = key.partition(",")
        label = metric_label(key)
        metrics[label] = number
        stderr[label] = _number(row.get(f"{name}_stderr,{filt}"))
        hib[label] = directions.get(name)
    n_samples = (results.get("n-samples") or {}).get(task) or {}
    scores = TaskScores(task, metrics, stderr, hib, n=n_samples.get("effective"))
    scores.per_doc = _per_doc(results, task, metrics)
    return scores


def _per_doc(results: Dict[str, Any], task: str, metrics: Dict[str, float]) -> Dict[str, Dict[int, float]]:
    """Per-document values of the metrics whose reported score is their mean."""
    samples = (results.get("samples") or {}).get(task) or []
    values: Dict[str, Dict[int, float]] = {}
    for sample in samples:
        filt = sample.get("filter", "none")
        for name in sample.get("metrics") or []:
            label = metric_label(f"{name},{filt}")
            x = _number(sample.get(name))
            if label in metrics and x is not None and "doc_id" in sample:
                values.setdefault(label, {})[int(sample["doc_id"])] = x
    out = {}
    for label, docs in values.items():
        mean = sum(docs.values()) / len(docs) if docs else math.nan
        if docs and math.isclose(mean, metrics[label], rel_tol=1e-9, abs_tol=1e-12):
            out[label] = docs
    return out


#: lm-eval assertions whose cause is known: a fragment of the failing line -> what it means
KNOWN_ASSERTIONS = {
    "continuation_enc": (
        "the model's tokenizer encodes a task's answer to zero tokens. Check what "
        "AutoTokenizer.from_pretrained(MODEL) does with the task's text: transformers picks the tokenizer "
        "class from the config's model_type (e.g. Qwen2Tokenizer rebuilds a byte-level BPE from the "
        "vocabulary), which breaks a tokenizer.json of another kind"
    ),
}


def assertion_message(error: AssertionError, model_name: Optional[str] = None) -> str:
    """Name the lm-eval check that failed (file, line, source) and, when known, why."""
    import linecache
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if "lm_eval" in f.filename.replace("\\", "/")]
    frame = frames[-1] if frames else (traceback.extract_tb(error.__traceback__) or [None])[-1]
    where, source = "", str(error)
    if frame is not None:
        path = frame.filename.replace("\\", "/")
        short = path[path.rfind("lm_eval/"):] if "lm_eval/" in path else path
        where = f" ({short}:{frame.lineno})"
        source = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip() or source
    on = f" on {model_name}" if model_name else ""
    message = f"lm-eval failed{on}: its check `{source}` failed{where}"
    for fragment, meaning in KNOWN_ASSERTIONS.items():
        if fragment in source:
            message += f": {meaning}"
    return message


_ENV_INFO: Dict[str, Any] = {}

#: the logger whose level says how much to show (the CLI's -v/--quiet set it; cli/verbosity.py)
LOGGER = "mergekit_transplant"
_LM_EVAL_LEVEL: Dict[str, int] = {}


def quiet_lm_eval() -> None:
    """lm-eval's log lines below ERROR, and the datasets bars it causes while loading tasks, are its own
    CLI's: show them only when our logger is at INFO (``-v``).

    A level someone else set on the ``lm_eval`` logger, and datasets bars
    someone else turned off, are left alone.
    """
    import logging

    import datasets

    ours = logging.getLogger(LOGGER)
    verbose = ours.isEnabledFor(logging.INFO)
    lm = logging.getLogger("lm_eval")
    if lm.level in (logging.NOTSET, _LM_EVAL_LEVEL.get("set", logging.NOTSET)):
        level = ours.getEffectiveLevel() if verbose else logging.ERROR
        lm.setLevel(level)
        _LM_EVAL_LEVEL["set"] = level
    if not verbose and datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        _LM_EVAL_LEVEL["datasets_bars_off"] = 1
    elif verbose and _LM_EVAL_LEVEL.pop("datasets_bars_off", 0):
        datasets.enable_progress_bars()


def _called_from_lm_eval() -> bool:
    """Whether the innermost caller outside tqdm itself is lm-eval's code."""
    import sys

    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "tqdm":
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "lm_eval"


def _git_hash_quietly():
    """lm-eval's ``get_git_commit_hash`` without git's ``fatal: not a git repository`` on stderr."""
    import os
    import subprocess

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        from lm_eval.loggers.utils import get_commit_from_path

        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def lm_eval_output() -> Iterator[None]:
    """Inside: lm-eval's per-request progress bars hidden unless our logger is at INFO (``-v``).

    lm-eval draws them with ``from tqdm import tqdm`` in modules it imports
    lazily (the model class is loaded during the call) and passes
    ``disable=False`` explicitly, so no tqdm setting reaches them: for the
    duration, tqdm's ``__init__`` disables a bar whose caller is lm-eval's
    code (ours keep theirs). git's "fatal: not a git repository", printed
    when lm-eval records the working folder's commit, is dropped too.
    """
    import logging

    quiet_lm_eval()
    if logging.getLogger(LOGGER).isEnabledFor(logging.INFO):
        yield
        return
    import lm_eval.evaluator as evaluator
    from tqdm.std import tqdm

    raw_init = vars(tqdm)["__init__"]

    def __init__(self, *args, **kwargs):
        if _called_from_lm_eval():
            kwargs["disable"] = True
        raw_init.__get__(self, type(self))(*args, **kwargs)

    git_hash = evaluator.get_git_commit_hash
    tqdm.__init__, evaluator.get_git_commit_hash = __init__, _git_hash_quietly
    try:
        yield
    finally:
        tqdm.__init__, evaluator.get_git_commit_hash = raw_init, git_hash


@contextlib.contextmanager
def env_info_once() -> Iterator[None]:
    """Collect lm-eval's environment report once per process, not once per call (not re-entrant).

    ``simple_evaluate`` runs ``pip list`` and friends in subprocesses on every
    call (over a second each); the environment does not change between the
    points of a sweep, so the first report is reused.
    """
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    memo = _ENV_INFO

    def add_env_info(results):
        if not memo:
            before = set(results)
            original(results)
            memo.update({k: results[k] for k in set(results) - before})
        else:
            results.update(memo)

    evaluator.add_env_info = add_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original


@dataclass
class PromptOptions:
    """lm-eval's instruct formatting, under lm-eval's own names (``simple_evaluate``'s arguments).

    What an lm-eval user passes to evaluate an instruct model the way it is
    used; the same options for every model of a comparison, recorded in the
    results and part of the result-cache key.
    """

    #: True, or the name of one of the tokenizer's chat templates
    apply_chat_template: Union[bool, str] = False
    #: few-shot examples as alternating turns; None: lm-eval's default (on with a chat template)
    fewshot_as_multiturn: Optional[bool] = None
    system_instruction: Optional[str] = None
    #: generation arguments for generate_until tasks, e.g. "temperature=0,max_gen_toks=256"
    gen_kwargs: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.apply_chat_template, str) and self.apply_chat_template.lower() in ("", "true"):
            self.apply_chat_template = True
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise TransplantError("--fewshot-as-multiturn needs --apply-chat-template (as in lm-eval)")
        if self.gen_kwargs is not None:
            from lm_eval.utils import simple_parse_args_string

            problem = next((f"{kv.strip()!r} has no '='" for kv in self.gen_kwargs.split(",") if "=" not in kv), None)
            try:
                simple_parse_args_string(self.gen_kwargs)
            except Exception as error:
                problem = str(error)
            if problem:
                raise TransplantError(f"--gen-kwargs {self.gen_kwargs!r}: expected key=value,key=value ({problem})")

    def kwargs(self) -> Dict[str, Any]:
        multiturn = bool(self.apply_chat_template) if self.fewshot_as_multiturn is None else self.fewshot_as_multiturn
        return {"apply_chat_template": self.apply_chat_template, "fewshot_as_multiturn": multiturn,
                "system_instruction": self.system_instruction, "gen_kwargs": self.gen_kwargs}


def run_lm_eval(
    model: Any,
    tasks: Sequence[Any],
    *,
    task_manager=None,
    model_args: Optional[str] = None,
    limit: Optional[float] = None,
    num_fewshot: Optional[int] = None,
    batch_size: Any = None,
    device: Optional[str] = None,
    bootstrap_iters: int = 100000,
    seed: int = 0,
    model_name: Optional[str] = None,
    prompt: Optional[PromptOptions] = None,
) -> Dict[str, Any]:
    """``lm_eval.simple_evaluate`` with the settings every model of a comparison shares.

    ``model_name`` (e.g. ``"donor model /path"``) names the model in errors.
    """
    import lm_eval

    kwargs = dict(
        tasks=list(tasks), task_manager=task_manager, limit=limit, num_fewshot=num_fewshot,
        batch_size=batch_size, device=device, bootstrap_iters=bootstrap_iters, log_samples=True,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if prompt is not None:
        kwargs.update(prompt.kwargs())
    if isinstance(model, str):
        kwargs["model_args"] = model_args or ""
    with env_info_once(), lm_eval_output():
        try:
            results = lm_eval.simple_evaluate(model, **kwargs)
        except TransplantError:
            raise
        except (KeyError, ValueError) as error:
            on = f" on {model_name}" if model_name else ""
            raise TransplantError(f"lm-eval failed{on}: {type(error).__name__}: {error}") from error
        except AssertionError as error:
            raise TransplantError(assertion_message(error, model_name)) from error
    if results is None:  # not rank 0 in a distributed launch
        raise TransplantError("lm-eval returned no results on this process (distributed rank > 0?)")
    return results
