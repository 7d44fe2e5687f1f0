"""What a process read from a file, measured in the page cache rather than in its own counters.

Evict a file (``posix_fadvise(DONTNEED)``), run the command, then ask the kernel
which of the file's pages are resident (``mincore`` on a fresh, never-touched
mapping). A page is resident only if something read it from disk since the
eviction: ``read``, ``pread`` or a page fault on a mapping alike, and nothing
else (imports, shared libraries, other files) is counted. That is what makes
the bytes-read tests exact where ``/proc/self/io`` was not (it counts every
file the process touches, and failed 1 run in 3).

The one allowance is the kernel's read-ahead: a read of a few bytes can pull
in up to one read-ahead window (``/sys/dev/block/M:m/queue/read_ahead_kb`` of
the file's block device; 8 MiB on the benchmark machine's virtio disk, 128 KiB
by default) beyond it. ``read_ahead_bytes`` reads that window, so a test's
margin is derived from the machine it runs on instead of being a fixed guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path
from typing import Iterable, Optional

PAGE = mmap.PAGESIZE
#: read-ahead assumed where sysfs does not say (overlay or network file systems): Linux's default
DEFAULT_READ_AHEAD = 128 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def evict(paths: Iterable[os.PathLike]) -> None:
    """Drop the files' clean pages from the page cache (they are written and synced first)."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_pages(path: os.PathLike) -> list:
    """One bool per page of ``path``: is it in the page cache now? (Reads nothing itself.)"""
    size = os.path.getsize(path)
    if size == 0:
        return []
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed", str(path))
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", str(path))
            return [bool(v & 1) for v in vec]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_bytes(path: os.PathLike) -> int:
    return sum(resident_pages(path)) * PAGE


def read_ahead_bytes(path: os.PathLike) -> int:
    """The read-ahead window of the block device holding ``path`` (sysfs), else Linux's default."""
    from benchmarks.common import read_ahead_kb

    kb: Optional[int] = read_ahead_kb(Path(path))
    return kb * 1024 if kb else DEFAULT_READ_AHEAD


def eviction_works(path: os.PathLike) -> bool:
    """Whether this machine's page cache lets us evict ``path`` (not on tmpfs, for one)."""
    with open(path, "rb") as fh:
        fh.read(PAGE)
    evict([path])
    return resident_bytes(path) == 0
