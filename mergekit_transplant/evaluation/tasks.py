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


def _quiet_lm_eval() -> None:
    import logging

    for name in ("lm_eval", "lm-eval"):
        logger = logging.getLogger(name)
        if logger.level in (logging.NOTSET, logging.INFO, logging.DEBUG):
            logger.setLevel(logging.WARNING)


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


def find_tasks(names: Sequence[str], include_path=None) -> TaskSet:
    """Resolve task names (tags expanded); TransplantError naming any unknown one."""
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    names = split_names(names)
    if not names:
        raise TransplantError("no lm-eval task given (--tasks)")
    paths = _include_paths(include_path)
    manager = None
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(_known(local, n) for n in names):
            manager = local
    if manager is None:
        manager = TaskManager(include_path=paths or None)
    unknown = [n for n in names if n not in manager.task_index]
    if unknown:
        where = "lm-eval's built-in tasks" + (f" or {', '.join(paths)}" if paths else " (pass --include-path for local task YAMLs)")
        raise TransplantError(f"unknown lm-eval task(s) {', '.join(unknown)}: not found in {where}")
    tasks = TaskSet(manager=manager, names=[])
    tasks.names = tasks.expand(names)
    return tasks
