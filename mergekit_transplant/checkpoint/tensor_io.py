"""Single tensors by byte range: read one, stream one in chunks, copy many verbatim into a new folder.

The safetensors header gives every tensor's byte range, so nothing here loads
a model or converts a dtype:

- ``TensorReader``: one tensor at a time into a torch tensor (plain reads,
  optionally into a reused buffer; a memory-mapped pickle the user allowed;
  ``safe_open`` for dtypes with no byte view). ``analysis.streaming`` (the
  ``local`` score) and ``inplace.DonorTensors`` (sweep points) read through it;
- ``range_chunks`` / ``hash_range``: a tensor's bytes in bounded chunks,
  hashed on the way (organ files);
- ``write_tensor_folder``: tensors copied byte for byte into
  ``model.safetensors`` or HF-style shards (organs, sparse Hub donors).

A tensor of a Hub model (``info.hub``) is read with one HTTP range request for
exactly its bytes (``hub_files.iter_range``), by every reader here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence

from mergekit_transplant.checkpoint import ModelIndex, TensorInfo, weight_files
from mergekit_transplant.checkpoint.dtypes import code_of_torch_dtype, torch_dtype_of_code
from mergekit_transplant.errors import TransplantError

CHUNK_BYTES = 16 * 1024 * 1024
#: largest shard ``write_tensor_folder`` writes, in bytes (organ extract's default)
DEFAULT_SHARD_BYTES = 5_000_000_000


def range_chunks(info: TensorInfo):
    """A tensor's bytes from its file, in bounded chunks (never the whole tensor at once).

    A tensor of a Hub model (``info.hub``) is read with one HTTP range request
    for exactly its bytes.
    """
    if info.hub is not None:
        from mergekit_transplant.checkpoint.hub_files import iter_range

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


# --------------------------------------------------------------------------- reading one tensor


def pickled_index(index: ModelIndex, *, allow_pickle: bool) -> Dict[str, object]:
    """For a checkpoint with only pickle weights (``--allow-pickle``): its tensors, memory-mapped.

    ``read_index`` cannot see inside pickle files, so they are opened with
    ``torch.load(mmap=True, weights_only=True)``: tensors stay on disk until
    touched, and ``weights_only`` refuses pickled code. Fills ``index.tensors``
    (names, shapes, dtypes) so candidates and fingerprints work as for
    safetensors, and returns the tensors for ``TensorStreamer``.
    """
    import torch

    files = [f for f in weight_files(index.root, allow_pickle=allow_pickle) if f.suffix != ".safetensors"]
    codes = code_of_torch_dtype()
    state: Dict[str, object] = {}
    for file in files:
        try:
            loaded = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
        except Exception as error:  # not a zip checkpoint, or pickled code
            try:
                loaded = torch.load(str(file), map_location="cpu", weights_only=True)
            except Exception:
                raise TransplantError(f"{file}: cannot read it as a weights-only torch checkpoint ({error})") from None
        if not isinstance(loaded, dict):
            raise TransplantError(f"{file}: not a state dict (a {type(loaded).__name__})")
        for name, tensor in loaded.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            code = codes.get(tensor.dtype, str(tensor.dtype))
            nbytes = tensor.numel() * tensor.element_size()
            index.tensors[name] = TensorInfo(name, tuple(tensor.shape), code, str(file), 0, nbytes)
            state[name] = tensor
    return state


class TensorReader(contextlib.AbstractContextManager):
    """Single tensors of one checkpoint by name, each read from its byte range.

    Each tensor is read with plain file reads into a fresh tensor, or with
    ``reuse`` into a buffer reused for every tensor of that shape and dtype:
    no allocation per read, and no memory map whose touched pages would count
    toward the process's resident set. ``pickled`` holds the tensors of a
    pickle-only checkpoint (``pickled_index``); dtypes with no byte view
    (float8) are read with ``safe_open``.
    """

    def __init__(self, index: ModelIndex, pickled: Optional[Dict[str, object]] = None):
        self.index = index
        self._pickled = pickled or {}
        self._files: Dict[str, BinaryIO] = {}
        self._handles: Dict[str, object] = {}
        self._buffers: Dict[tuple, object] = {}  # (shape, dtype) -> read buffer
        self._scratch: Dict[tuple, object] = {}  # (shape, device) -> float32 delta
        self.bytes_read = 0

    def get(self, name: str, *, reuse: bool = False):
        """The named tensor on the CPU, in its stored dtype.

        With ``reuse`` the tensor is a buffer that the next read of the same
        shape and dtype overwrites: use it before then.
        """
        import torch

        info = self.index.tensors.get(name)
        if info is None:
            raise TransplantError(f"model {self.index.ref}: no tensor {name}")
        self.bytes_read += info.nbytes
        if name in self._pickled:
            return self._pickled[name]
        dtype = torch_dtype_of_code(info.dtype)
        if dtype is None:
            return self._safe_open(info.file).get_tensor(name)
        key = (tuple(info.shape), info.dtype)
        out = self._buffers.get(key) if reuse else None
        if out is None:
            out = torch.empty(info.shape, dtype=dtype)
            if reuse:
                self._buffers[key] = out
        self._read_into(info, out)
        return out

    def _read_into(self, info: TensorInfo, out) -> None:
        view = memoryview(out.view(-1).view(torch_uint8()).numpy()) if out.numel() else memoryview(b"")
        if info.hub is not None:  # a Hub model's tensor: one HTTP range request for exactly its bytes
            done = 0
            for chunk in range_chunks(info):
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            return
        fh = self._files.get(info.file)
        if fh is None:
            fh = self._files[info.file] = open(info.file, "rb", buffering=0)
        fh.seek(info.begin)
        done = 0
        while done < info.nbytes:
            n = fh.readinto(view[done:])
            if not n:
                raise TransplantError(f"{info.file}: ends inside tensor {info.name} (truncated file?)")
            done += n

    def _safe_open(self, file: str):
        from safetensors import safe_open

        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(file, framework="pt", device="cpu")
            self._handles[file] = handle
        return handle

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._handles.clear()
        self._buffers.clear()
        self._scratch.clear()

    def __exit__(self, *exc) -> None:
        self.close()


def torch_uint8():
    import torch

    return torch.uint8


# --------------------------------------------------------------------------- writing verbatim


def _header_bytes(entries: Sequence[TensorInfo]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for info in entries:
        header[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def _write_safetensors(file: Path, entries: Sequence[TensorInfo], progress=None) -> Dict[str, str]:
    """Copy each tensor's bytes from its source file verbatim; return name -> sha256."""
    hashes = {}
    with open(file, "wb") as out:
        out.write(_header_bytes(entries))
        for info in entries:
            h = hashlib.sha256()
            for chunk in range_chunks(info):
                h.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress.update(len(chunk))
            hashes[info.name] = h.hexdigest()
        out.flush()
        os.fsync(out.fileno())
    return hashes


def _shard(entries: Sequence[TensorInfo], max_bytes: int) -> List[List[TensorInfo]]:
    shards: List[List[TensorInfo]] = [[]]
    size = 0
    for info in entries:
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.nbytes
    return shards


def write_tensor_folder(folder: Path, entries: Sequence[TensorInfo], *, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                        progress=None) -> Dict[str, str]:
    """Write ``entries`` as ``model.safetensors`` (or HF-style shards plus index)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = _shard(entries, max_shard_bytes)
    if len(shards) == 1:
        return _write_safetensors(folder / "model.safetensors", shards[0], progress)
    hashes, weight_map = {}, {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        hashes.update(_write_safetensors(folder / name, shard, progress))
        weight_map.update({info.name: name for info in shard})
    index = {"metadata": {"total_size": sum(i.nbytes for i in entries)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return hashes
