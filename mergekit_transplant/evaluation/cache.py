"""On-disk cache of per-task lm-eval results, so unchanged models are not re-scored.

One JSON file per (model fingerprint, task configuration hash, limit,
few-shot, backend and model arguments, lm-eval version, bootstrap
iterations) under the cache folder (default
``~/.cache/mergekit-transplant/eval``). Entries are written atomically; a
damaged entry is treated as missing. Batch size and device are not part of
the key: they change how fast a model is scored, not (beyond floating-point
noise) its score.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from mergekit_transplant import atomic

DEFAULT_CACHE_DIR = Path("~/.cache/mergekit-transplant/eval")
SCHEMA = 1


def default_cache_dir() -> Path:
    env = os.environ.get("MERGEKIT_TRANSPLANT_EVAL_CACHE")
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def cache_key(**parts: Any) -> str:
    payload = json.dumps({"schema": SCHEMA, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResultCache:
    """Get and put JSON results by key; ``enabled=False`` makes both no-ops."""

    def __init__(self, root: Optional[os.PathLike | str] = None, *, enabled: bool = True):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        if not self.enabled:
            return None
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
            value = entry["result"] if entry.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError):
            value = None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, result: Dict[str, Any], *, describe: Optional[Dict[str, Any]] = None) -> None:
        if not self.enabled:
            return
        entry = {"key": key, "describe": describe or {}, "result": result}
        atomic.write_text(self._path(key), json.dumps(entry, sort_keys=True, default=str))
