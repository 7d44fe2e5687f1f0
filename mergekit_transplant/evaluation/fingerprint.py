"""A model's identity for the result cache: what it computes, not where it lives.

Combines ``checkpoint.read_index(ref).fingerprint()`` (config and tensor
table) with a digest of every weight file and of the small files that change
scores (tokenizer, generation config, chat template). Weight files up to
``CONTENT_HASH_LIMIT`` are hashed by content, so a re-saved but identical
model keeps its cache entries; larger files are identified by their
safetensors header, size and mtime, which costs no data reads (pickle files
allowed with ``--allow-pickle``: by size and mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from mergekit_transplant.checkpoint import read_index, resolve_model_dir, weight_files

CONTENT_HASH_LIMIT = 512 * 1024 * 1024
SMALL_FILE_LIMIT = 64 * 1024 * 1024
#: non-weight files that can change a model's scores
SCORE_FILES = (".json", ".model", ".txt", ".jinja", ".tiktoken")
_MEMO: dict = {}


def _weight_digest(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    digest = hashlib.sha256()
    if st.st_size > CONTENT_HASH_LIMIT and path.suffix != ".safetensors":  # a large allowed pickle: no header
        value = f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    elif st.st_size <= CONTENT_HASH_LIMIT:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        value = "sha256:" + digest.hexdigest()
    else:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            digest.update(fh.read(min(n, 100 * 1024 * 1024)))
        value = f"header-sha256:{digest.hexdigest()},size={st.st_size},mtime_ns={st.st_mtime_ns}"
    _MEMO[memo_key] = value
    return value


def model_fingerprint(ref: str, *, allow_pickle: bool = False) -> str:
    """sha256 naming the model's weights, config and tokenizer files."""
    root = resolve_model_dir(ref)
    parts = {"index": read_index(ref, allow_pickle=allow_pickle).fingerprint(), "files": {}}
    weights = {p.resolve() for p in weight_files(root, allow_pickle=allow_pickle)}
    for path in sorted(weights):
        parts["files"][os.path.relpath(path, root.resolve())] = _weight_digest(path)
    for path in sorted(root.iterdir()):
        if path.is_file() and path.resolve() not in weights and path.suffix in SCORE_FILES:
            if path.stat().st_size <= SMALL_FILE_LIMIT:
                parts["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
