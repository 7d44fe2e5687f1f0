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


#: set by the signal handler; a commit (rename into place) is refused once set,
#: even when the KeyboardInterrupt itself was swallowed (a ``__del__``, a
#: library's ``except Exception``) and the run carried on to its end.
_INTERRUPTED = {"signal": None}


def _check_not_interrupted() -> None:
    if _INTERRUPTED["signal"] is not None:
        raise KeyboardInterrupt(f"signal {_INTERRUPTED['signal']} (received earlier)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        # mkstemp makes 0600 files: keep the replaced file's mode, else the umask default
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        _check_not_interrupted()
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
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        _check_not_interrupted()
        if path.exists():
            if any(path.iterdir()) and not overwrite:
                raise FileExistsError(f"{path} exists and is not empty")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised via subprocess
    _INTERRUPTED["signal"] = signum
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_unwind() -> Iterator[None]:
    """``interrupt_on_sigterm`` for the duration of one command, then the previous handlers.

    The CLI runs each command inside this, so that a command run in process
    (tests, notebooks, embedding) neither leaks its handlers nor an
    interrupted flag into the caller's later writes.
    """
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _INTERRUPTED["signal"] = None
    interrupt_on_sigterm()
    try:
        yield
    except Exception as error:
        received = _INTERRUPTED["signal"]
        if received is None or _is_control_flow(error):
            raise
        # A signal arrived and the command then failed with another error: a
        # library wrapped the KeyboardInterrupt, or swallowed it and failed on
        # its own half-done state. Either way the cause is the interrupt, not a
        # bug or the user's input, and the caller must see it as one.
        raise KeyboardInterrupt(f"signal {received} (surfaced as {type(error).__name__}: {error})") from error
    finally:
        _INTERRUPTED["signal"] = None
        with contextlib.suppress(ValueError, TypeError):  # not in the main thread / not a Python handler
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _is_control_flow(error: Exception) -> bool:
    """click's ``Exit`` is how a finished command returns its code; it is not a failure."""
    try:
        from click.exceptions import Exit
    except ImportError:  # pragma: no cover - click is a dependency
        return False
    return isinstance(error, Exit)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C, so temp files are cleaned up.

    SIGINT gets the same handler (when Python's default is in place), so that
    a Ctrl-C swallowed by library code still blocks the final rename.
    """
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _raise_interrupt)
