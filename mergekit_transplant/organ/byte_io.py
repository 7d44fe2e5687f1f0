"""Reading tensor bytes and whole files in bounded chunks, hashed on the way (never a whole tensor in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mergekit_transplant.checkpoint import TensorInfo
from mergekit_transplant.errors import TransplantError

CHUNK_BYTES = 16 * 1024 * 1024


def range_chunks(info: TensorInfo):
    """A tensor's bytes from its file, in bounded chunks (never the whole tensor at once).

    A tensor of a Hub model (``info.hub``) is read with one HTTP range request
    for exactly its bytes.
    """
    if info.hub is not None:
        from mergekit_transplant.hub_files import iter_range

        yield from iter_range(info.hub, info.begin, info.end, what=f"tensor {info.name}")
        return
    with open(info.file, "rb") as fh:
        fh.seek(info.begin)
        left = info.nbytes
        while left:
            chunk = fh.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise TransplantError(f"{info.file}: tensor {info.name!r} is truncated")
            left -= len(chunk)
            yield chunk


def hash_range(info: TensorInfo) -> str:
    h = hashlib.sha256()
    for chunk in range_chunks(info):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()
