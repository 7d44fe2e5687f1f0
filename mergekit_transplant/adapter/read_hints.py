"""Read exactly the transplanted donor bytes, whatever the disk's read-ahead.

The planner hook (``adapter.registration.install_planner_hook``) keeps mergekit from
asking for donor tensors at strength 0. mergekit still reads the tensors it
does ask for through a memory map, and a page fault on a cold mapping makes
the kernel read a whole read-ahead window *around* the faulting page, then
keep reading ahead while access looks sequential. On a disk with a large
read-ahead (8 MiB on the virtio disk of our benchmark machine; 128 KiB is the
usual default) that pulls in megabytes of untransplanted neighbours per
transplanted tensor, and the first 8 MiB of every donor file just for its
header: for a 27 MiB transplant from a 551 MiB donor, 74 MiB were read.

Two hints remove that, without touching the data path:

- before mergekit reads a kept donor tensor of a donor that is only partly
  transplanted, we read exactly that tensor's byte range with ``pread`` on a
  descriptor advised ``POSIX_FADV_RANDOM`` (no read-ahead); mergekit's mapping
  then finds every page in the page cache and the kernel reads nothing more;
- before mergekit maps a safetensors file to read its header, we read the
  header with ``read``, so the mapping's first fault is a cache hit. This one
  runs for every merge (mergekit indexes the models before the method is
  known); it reads the bytes mergekit is about to read anyway.

The tensor mergekit returns is still the one it loads itself; a hint that
fails (a file we cannot parse, an attribute a future mergekit renamed) is
skipped (``adapter.policy``: one DEBUG line, then mergekit's own read). ``MERGEKIT_TRANSPLANT_READ_ALL=1`` turns the hints off with
the planner hook. docs/merge-reads.md has the measurements.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

from mergekit_transplant.adapter.policy import read_all_requested, step_aside

HINT_MARK = "_transplant_read_hint"
#: bytes per ``pread`` when prefetching a tensor (one large request, no read-ahead)
PREFETCH_CHUNK = 8 * 1024 * 1024


class _Plan:
    """What to prefetch from one donor's loader."""

    __slots__ = ("names", "partial")

    def __init__(self) -> None:
        self.names: Set[str] = set()
        self.partial = False  # some tensor of this donor was dropped (strength 0)


_PLANS: "weakref.WeakKeyDictionary[object, _Plan]" = weakref.WeakKeyDictionary()
_HEADERS: Dict[Tuple[str, int, int], Dict[str, Tuple[int, int]]] = {}
_LOCK = threading.Lock()


def note_donor_reads(loader, names, *, partial: bool) -> None:
    """Record that ``names`` will be read from ``loader`` (a kept, nonzero-strength donor tensor)."""
    with _LOCK:
        plan = _PLANS.get(loader)
        if plan is None:
            plan = _PLANS[loader] = _Plan()
        plan.names.update(names)
        plan.partial = plan.partial or partial


def _enabled() -> bool:
    return not read_all_requested()


def tensor_ranges(path: str) -> Dict[str, Tuple[int, int]]:
    """{tensor: (begin, end)} absolute byte ranges of a safetensors file, read with ``read``."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _LOCK:
        cached = _HEADERS.get(key)
    if cached is not None:
        return cached
    from mergekit_transplant.checkpoint import read_header

    ranges = {name: (info.begin, info.end) for name, info in read_header(Path(path)).items()}
    with _LOCK:
        _HEADERS[key] = ranges
    return ranges


def prefetch_range(path: str, begin: int, end: int) -> int:
    """Bring ``[begin, end)`` of ``path`` into the page cache and nothing around it."""
    fd = os.open(path, os.O_RDONLY)
    done = 0
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        buf = memoryview(bytearray(min(PREFETCH_CHUNK, max(end - begin, 1))))
        pos = begin
        while pos < end:
            n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                break
            pos += n
            done += n
    finally:
        os.close(fd)
    return done


def _shard_path(loader, key: str) -> Optional[str]:
    index = loader.index
    shard = index.tensor_paths.get(key)
    if shard is None or not str(shard).endswith(".safetensors"):
        return None
    return os.path.join(index.base_path, shard)


def _before_get_tensor(loader, key: str) -> None:
    plan = _PLANS.get(loader)
    if plan is None or not plan.partial or key not in plan.names:
        return
    path = _shard_path(loader, key)
    if path is None:
        return
    begin, end = tensor_ranges(path)[key]
    prefetch_range(path, begin, end)


def _hint_tensor(loader, key: str) -> None:
    """Before mergekit reads ``key``: prefetch it exactly, if planned (never fails the read)."""
    try:
        if _enabled():
            _before_get_tensor(loader, key)
    except Exception as error:  # a hint never breaks a read
        step_aside("read hint for a tensor", repr(error))


def _hint_header(file_path) -> None:
    """Before mergekit maps a safetensors file: read its header with ``read`` (never fails the index)."""
    try:
        if _enabled() and str(file_path).lower().endswith(".safetensors"):
            tensor_ranges(str(file_path))  # the header, read with read(): no read-around
    except Exception as error:
        step_aside("header hint", repr(error))


def install_read_hints() -> bool:
    """Wrap mergekit's tensor loader and index reader with the hints above (once)."""
    try:
        from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex
    except ImportError as error:
        step_aside("read hints", error)
        return False
    installed = True

    get_tensor = getattr(LazyTensorLoader, "get_tensor", None)
    if get_tensor is None:
        step_aside("tensor read hint", "LazyTensorLoader.get_tensor is missing")
        installed = False
    elif not getattr(get_tensor, HINT_MARK, False):

        @functools.wraps(get_tensor)
        def hinted_get_tensor(self, key, *args, **kwargs):
            _hint_tensor(self, key)
            return get_tensor(self, key, *args, **kwargs)

        setattr(hinted_get_tensor, HINT_MARK, True)
        LazyTensorLoader.get_tensor = hinted_get_tensor

    from_file = ShardedTensorIndex.__dict__.get("from_file")
    if not isinstance(from_file, classmethod):
        step_aside("header read hint", "ShardedTensorIndex.from_file is not a classmethod")
        installed = False
    elif not getattr(from_file.__func__, HINT_MARK, False):
        original = from_file.__func__

        @functools.wraps(original)
        def hinted_from_file(cls, file_path, *args, **kwargs):
            _hint_header(file_path)
            return original(cls, file_path, *args, **kwargs)

        setattr(hinted_from_file, HINT_MARK, True)
        ShardedTensorIndex.from_file = classmethod(hinted_from_file)
    return installed


def uninstall_read_hints() -> None:
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex

    current = LazyTensorLoader.get_tensor
    if getattr(current, HINT_MARK, False):
        LazyTensorLoader.get_tensor = current.__wrapped__
    from_file = ShardedTensorIndex.__dict__.get("from_file")
    if isinstance(from_file, classmethod) and getattr(from_file.__func__, HINT_MARK, False):
        ShardedTensorIndex.from_file = classmethod(from_file.__func__.__wrapped__)
