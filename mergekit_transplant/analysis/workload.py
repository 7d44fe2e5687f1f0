"""Workloads: the prompts (and optional continuations) the analysis runs on.

Three sources, one shape. A ``.jsonl`` file with a ``"text"`` field per line
and an optional ``"continuation"``; a ``.txt`` file with one prompt per line;
or an lm-eval task, whose evaluation documents become prompts through the
task's own ``doc_to_text`` / ``doc_to_target`` so the analysis sees exactly
what ``lm-eval`` will score. The sha256 recorded in recipes and reports is
the file's bytes (or, for a task, of the prompts built from it), so a recipe
says precisely which data produced it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

from mergekit_transplant.errors import TransplantError

MAX_WORKLOAD_BYTES = 512 * 1024 * 1024
TASK_PREFIX = "lm-eval:"


@dataclass(frozen=True)
class Sample:
    """One prompt; ``continuation`` (when given) is scored teacher-forced."""

    text: str
    continuation: Optional[str] = None


@dataclass
class Workload:
    samples: List[Sample]
    source: str  # file path or "lm-eval:<task>"
    kind: str  # "jsonl" | "txt" | "lm-eval"
    sha256: str
    total: int  # samples before --limit
    notes: List[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples)

    def describe(self) -> dict:
        return {"path": self.source, "kind": self.kind, "sha256": self.sha256, "n": self.n, "total": self.total}


def load_workload(
    path_or_task: Union[str, Path, None] = None,
    *,
    lm_eval_task: Optional[str] = None,
    include_path: Union[str, Path, Sequence[Union[str, Path]], None] = None,
    limit: Optional[int] = None,
    seed: int = 0,
) -> Workload:
    """Read a workload from a ``.jsonl`` / ``.txt`` file or an lm-eval task.

    The task is ``lm_eval_task="NAME"``, or ``path_or_task="lm-eval:NAME"``
    (the form ``Workload.source`` records). ``limit`` keeps a seeded random
    subset of that many samples, in their original order (the same ``seed``
    always keeps the same ones).
    """
    if isinstance(path_or_task, str) and path_or_task.startswith(TASK_PREFIX) and lm_eval_task is None:
        path_or_task, lm_eval_task = None, path_or_task[len(TASK_PREFIX):]
    if (path_or_task is None) == (lm_eval_task is None):
        raise TransplantError("give exactly one workload: a .jsonl/.txt file or an lm-eval task name")
    if limit is not None and limit < 1:
        raise TransplantError(f"--limit must be at least 1, got {limit}")
    if lm_eval_task is not None:
        workload = _from_lm_eval(lm_eval_task, include_path)
    else:
        workload = _from_file(Path(path_or_task))
    if not workload.samples:
        raise TransplantError(f"workload {workload.source}: no prompts in it")
    if limit is not None and limit < workload.n:
        keep = sorted(random.Random(seed).sample(range(workload.n), limit))
        workload.samples = [workload.samples[i] for i in keep]
    return workload


def _from_file(path: Path) -> Workload:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise TransplantError(f"workload {path}: no such file") from None
    if path.is_dir():
        raise TransplantError(f"workload {path}: is a folder, not a .jsonl or .txt file")
    if size > MAX_WORKLOAD_BYTES:
        raise TransplantError(f"workload {path}: larger than {MAX_WORKLOAD_BYTES} bytes")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TransplantError(f"workload {path}: not UTF-8 text (byte {error.start})") from None
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        samples = _parse_jsonl(text, path)
        kind = "jsonl"
    elif suffix == ".txt":
        samples = [Sample(line.strip()) for line in text.splitlines() if line.strip()]
        kind = "txt"
    else:
        raise TransplantError(
            f"workload {path}: unknown format {suffix or '(no suffix)'}; use .jsonl "
            "(a \"text\" field per line) or .txt (one prompt per line), or --lm-eval-task"
        )
    return Workload(samples=samples, source=str(path), kind=kind, sha256=digest, total=len(samples))


def _parse_jsonl(text: str, path: Path) -> List[Sample]:
    samples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TransplantError(f"workload {path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise TransplantError(f"workload {path}, line {number}: expected a JSON object, got {type(row).__name__}")
        prompt = row.get("text")
        if not isinstance(prompt, str):
            what = "missing" if prompt is None else f"a {type(prompt).__name__}, not a string"
            raise TransplantError(f"workload {path}, line {number}: field \"text\" is {what}")
        if not prompt.strip():
            raise TransplantError(f"workload {path}, line {number}: field \"text\" is empty")
        cont = row.get("continuation")
        if cont is not None and not isinstance(cont, str):
            raise TransplantError(
                f"workload {path}, line {number}: field \"continuation\" is a {type(cont).__name__}, not a string"
            )
        samples.append(Sample(prompt, cont or None))
    return samples


def _from_lm_eval(name: str, include_path) -> Workload:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TransplantError("--lm-eval-task needs lm-eval: pip install 'mergekit-transplant[eval]'") from None
    paths = None
    if include_path:
        paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path)]
        for p in paths:
            if not Path(p).exists():
                raise TransplantError(f"--include-path {p}: no such folder")
    # Indexing lm-eval's ~15k built-in tasks takes seconds: look in the user's
    # folders first and fall back to the built-ins only when the task is not there.
    manager = None
    if paths:
        manager = TaskManager(include_path=paths, include_defaults=False)
        if name not in manager.all_tasks:
            manager = None
    if manager is None:
        manager = TaskManager(include_path=paths)
        if name not in manager.all_tasks:
            raise TransplantError(
                f"lm-eval task {name!r} not found"
                + (f" (looked in {', '.join(paths)} and lm-eval's built-in tasks)" if paths else
                   " among lm-eval's built-in tasks; pass --include-path for a local task folder")
            )
    try:
        tasks = manager.load([name])["tasks"]
    except Exception as error:
        raise TransplantError(f"lm-eval task {name!r}: cannot load it ({type(error).__name__}: {error})") from None
    samples: List[Sample] = []
    for task_name in sorted(tasks):
        samples.extend(_task_samples(task_name, tasks[task_name]))
    canonical = json.dumps([[s.text, s.continuation] for s in samples], ensure_ascii=False).encode("utf-8")
    return Workload(
        samples=samples, source=f"{TASK_PREFIX}{name}", kind="lm-eval",
        sha256=hashlib.sha256(canonical).hexdigest(), total=len(samples),
    )


def _task_samples(task_name: str, task) -> List[Sample]:
    """Zero-shot prompts; the continuation is the gold answer as lm-eval scores it."""
    try:
        docs = list(task.eval_docs)
    except Exception as error:
        raise TransplantError(f"lm-eval task {task_name!r}: cannot read its documents ({error})") from None
    delimiter = getattr(task.config, "target_delimiter", " ") or ""
    output_type = getattr(task, "OUTPUT_TYPE", None) or getattr(task.config, "output_type", None)
    samples = []
    for i, doc in enumerate(docs):
        try:
            prompt = task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            if output_type == "multiple_choice":
                choices = task.doc_to_choice(doc)
                if isinstance(target, int):
                    target = choices[target]
                elif isinstance(target, list):
                    target = choices[target[0]] if target and isinstance(target[0], int) else target[0]
        except Exception as error:
            raise TransplantError(
                f"lm-eval task {task_name!r}, document {i}: cannot build its prompt ({type(error).__name__}: {error})"
            ) from None
        if isinstance(target, list):
            target = target[0] if target else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise TransplantError(f"lm-eval task {task_name!r}, document {i}: empty prompt")
        cont = None if target in (None, "") else f"{delimiter}{target}"
        samples.append(Sample(prompt, cont))
    return samples
