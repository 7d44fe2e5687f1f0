"""Find lm-eval tasks by name, load them once, and hash their configuration.

Building lm-eval's full task index scans ~15k YAML files (seconds on a busy
machine), so when ``--include-path`` already holds every requested task only
that folder is indexed; otherwise the built-in tasks are indexed too. Tags
expand to their member tasks. The configuration hash covers what decides a
task's score: its resolved config, its YAML and helper ``.py`` files, and the
local data files it points to, so editing a task re-scores it and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from mergekit_transplant.errors import TransplantError

#: data files larger than this are hashed by size and mtime instead of content
CONTENT_HASH_LIMIT = 64 * 1024 * 1024


def split_names(value: Optional[str | Sequence[str]]) -> List[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (order kept, no duplicates)."""
    if not value:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    out: List[str] = []
    for part in parts:
        for name in str(part).split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def _include_paths(include_path) -> List[str]:
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    for p in paths:
        if not Path(p).is_dir():
            raise TransplantError(f"--include-path {p}: no such folder")
    return [str(Path(p).resolve()) for p in paths]


@dataclass
class TaskSet:
    """Requested lm-eval tasks: the manager that knows them and their loaded objects."""

    manager: Any
    names: List[str]  # requested names, tags expanded
    _loaded: Dict[str, Any] = field(default_factory=dict)
    _hashes: Dict[str, str] = field(default_factory=dict)

    def expand(self, names: Sequence[str]) -> List[str]:
        """Names with tags replaced by their member tasks (order kept, no duplicates)."""
        out: List[str] = []
        for name in split_names(names):
            entry = self.entry(name)
            members = sorted(entry.tags) if entry is not None and entry.kind.name == "TAG" else [name]
            out.extend(m for m in members if m not in out)
        return out

    def entry(self, name: str):
        return self.manager.task_index.get(name)

    def is_group(self, name: str) -> bool:
        entry = self.entry(name)
        return entry is not None and entry.kind.name == "GROUP"

    def load(self, names: Optional[Iterable[str]] = None) -> List[Any]:
        """Task/Group objects for ``names`` (default all), each built once."""
        out = []
        for name in names if names is not None else self.names:
            if name not in self._loaded:
                try:
                    loaded = self.manager.load([name])
                except TransplantError:
                    raise
                except Exception as error:
                    raise TransplantError(f"lm-eval task {name}: cannot load it ({type(error).__name__}: {error})") from None
                obj = loaded["groups"].get(name) or loaded["tasks"].get(name)
                if obj is None:
                    raise TransplantError(f"lm-eval task {name}: loading it produced no task")
                self._loaded[name] = obj
            out.append(self._loaded[name])
        return out

    def config_hash(self, name: str) -> str:
        """sha256 over the task's config, YAML, helper code and local data files (once per task)."""
        if name not in self._hashes:
            digest = hashlib.sha256()
            self._feed(name, digest, set())
            self._hashes[name] = digest.hexdigest()
        return self._hashes[name]

    def _feed(self, name: str, digest, seen: set) -> None:
        if name in seen:
            return
        seen.add(name)
        entry = self.entry(name)
        digest.update(f"task:{name}\n".encode())
        if entry is None:
            return
        cfg = entry.cfg or {}
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        if entry.yaml_path is not None:
            yaml_path = Path(entry.yaml_path)
            digest.update(yaml_path.read_bytes())
            for helper in sorted(yaml_path.parent.glob("*.py")):
                digest.update(helper.name.encode() + helper.read_bytes())
        base = Path(entry.yaml_path).parent if entry.yaml_path is not None else None
        for path in sorted(set(_local_paths(cfg, base))):
            digest.update(path.encode() + _file_digest(Path(path)).encode())
        if entry.kind.name == "TAG":
            for member in sorted(entry.tags):
                self._feed(member, digest, seen)
        for child in cfg.get("task", []) if entry.kind.name == "GROUP" else []:
            if isinstance(child, str):
                self._feed(child, digest, seen)
            elif isinstance(child, dict):
                child_name = child.get("task") or child.get("group")
                if isinstance(child_name, str):
                    self._feed(child_name, digest, seen)


def _local_paths(cfg: Any, base: Optional[Path] = None) -> Iterable[str]:
    """The local files or folders a task reads its data from (dataset_path, dataset_kwargs).

    Relative paths are tried against the working directory and against the
    YAML's own folder (where a ``custom_dataset`` loader may resolve them).
    """
    if not isinstance(cfg, dict):
        return
    candidates = [cfg.get("dataset_path")]
    stack = [cfg.get("dataset_kwargs")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            candidates.append(item)
    for value in candidates:
        if isinstance(value, str) and len(value) < 4096 and value not in (".", ".."):
            path = os.path.expanduser(value)
            if os.path.isabs(path) or os.sep in path:
                tries = [path] if os.path.isabs(path) or base is None else [path, str(base / path)]
                for candidate in tries:
                    if os.path.exists(candidate):
                        yield os.path.abspath(candidate)


def _file_digest(path: Path) -> str:
    if path.is_dir():
        parts = []
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                parts.append(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    st = path.stat()
    if st.st_size > CONTENT_HASH_LIMIT:
        return f"size={st.st_size},mtime={st.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _known(manager, name: str, seen: Optional[set] = None) -> bool:
    """``name`` and (for groups) all its children are in the manager's index."""
    seen = seen if seen is not None else set()
    if name in seen:
        return True
    seen.add(name)
    entry = manager.task_index.get(name)
    if entry is None:
        return False
    if entry.kind.name == "GROUP":
        for child in (entry.cfg or {}).get("task", []):
            if isinstance(child, str) and not _known(manager, child, seen):
                return False
    return True


def _yaml_problem(error: BaseException) -> str:
    """``line 3, column 1: expected ..., but found ...`` for a YAML error; the first line of anything else."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = "; ".join(str(x) for x in (error.context, error.problem) if x)
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"


def unreadable_yamls(paths: Sequence[str]) -> List[tuple]:
    """``(file, problem, syntax)`` for each task YAML under ``paths`` that lm-eval's index skips.

    lm-eval skips a YAML it cannot read without a word (the task is then just
    "unknown"), so the files are read here the way its index reads them.
    ``syntax`` is True for a file that is not valid YAML at all, False for
    one that parses but is not a task, group or tag config (include
    templates are like that on purpose).
    """
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        from lm_eval.tasks._index import TaskIndex

        kind_of = TaskIndex._kind_of
    except (ImportError, AttributeError):  # another lm-eval layout: report syntax errors only
        kind_of = None
    out = []
    for root in paths:
        for path in sorted(Path(root).glob("**/*.yaml")):
            try:
                cfg = load_yaml(path, resolve_func=False, recursive=True)
            except yaml.YAMLError as error:
                out.append((path, _yaml_problem(error), True))
                continue
            except Exception as error:  # not a mapping, a missing include, an include cycle
                out.append((path, _yaml_problem(error), False))
                continue
            if kind_of is not None:
                try:
                    kind_of(cfg)
                except Exception as error:
                    out.append((path, _yaml_problem(error), False))
    return out


def _check_unreadable(unknown: Sequence[str], paths: Sequence[str]) -> str:
    """Raise for an unknown task that a malformed YAML names; else a note on malformed files (or "")."""
    import re

    bad = unreadable_yamls(paths)
    for name in unknown:
        for path, problem, _syntax in bad:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            if path.stem == name or re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text):
                raise TransplantError(
                    f"lm-eval task {name}: {path} names it but is malformed ({problem}), so lm-eval skips it"
                )
    broken = [(path, problem) for path, problem, syntax in bad if syntax]
    if not broken:
        return ""
    listed = "; ".join(f"{path} ({problem})" for path, problem in broken[:3])
    return f". Note: {len(broken)} YAML file(s) there are malformed and skipped by lm-eval: {listed}"


def find_tasks(names: Sequence[str], include_path=None) -> TaskSet:
    """Resolve task names (tags expanded); TransplantError naming any unknown one.

    A requested name that a malformed YAML under ``include_path`` names is
    reported as that file's problem (line, column, what is wrong), not as an
    unknown task.
    """
    from lm_eval.tasks import TaskManager

    from mergekit_transplant.evaluation.runner import quiet_lm_eval

    quiet_lm_eval()
    names = split_names(names)
    if not names:
        raise TransplantError("no lm-eval task given (--tasks)")
    paths = _include_paths(include_path)
    manager = None
    note = ""
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        missing = [n for n in names if not _known(local, n)]
        if not missing:
            manager = local
        else:
            note = _check_unreadable(missing, paths)
    if manager is None:
        manager = TaskManager(include_path=paths or None)
    unknown = [n for n in names if n not in manager.task_index]
    if unknown:
        where = "lm-eval's built-in tasks" + (f" or {', '.join(paths)}" if paths else " (pass --include-path for local task YAMLs)")
        raise TransplantError(f"unknown lm-eval task(s) {', '.join(unknown)}: not found in {where}{note}")
    tasks = TaskSet(manager=manager, names=[])
    tasks.names = tasks.expand(names)
    return tasks
