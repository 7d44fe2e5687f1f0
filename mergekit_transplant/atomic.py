"""Atomic writes: a temp file (or folder) beside the destination, then ``os.replace``.

An interrupted run (SIGINT, SIGTERM, a crash) leaves the previous file intact
and, because the temp is removed in ``finally``, no partial output. The CLI
turns SIGTERM into ``KeyboardInterrupt`` so that ``finally`` blocks run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def write_bytes(path: PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def replacing_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it becomes ``path``.

    An existing non-empty ``path`` is only replaced when ``overwrite`` is set
    (callers check and report that first; this is the last line of defence).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if any(path.iterdir()) and not overwrite:
                raise FileExistsError(f"{path} exists and is not empty")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised via subprocess
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so temp files are cleaned up."""
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, _raise_interrupt)
