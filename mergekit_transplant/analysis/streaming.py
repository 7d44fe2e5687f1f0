"""Read single tensors from a checkpoint on demand, never the whole model.

The ``local`` score needs each module's donor weight only while that module
runs in the target's forward pass, once per batch. Each tensor is read with
plain file reads (the safetensors header gives its byte range) into a
buffer reused for every tensor of that shape: no allocation per batch, and
no memory map whose touched pages would count toward the process's
resident set. Repeated reads of a hot file come from the OS page cache,
which the kernel may drop at will, so the resident set stays at one model
plus a few tensor-sized buffers. Dtypes with no plain view (float8) fall
back to ``safe_open``.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Dict, Optional

from mergekit_transplant.checkpoint import ModelIndex, TensorInfo
from mergekit_transplant.errors import TransplantError

_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def pickled_index(index: ModelIndex, *, allow_pickle: bool) -> Dict[str, object]:
    """For a checkpoint with only pickle weights (``--allow-pickle``): its tensors, memory-mapped.

    ``read_index`` cannot see inside pickle files, so they are opened with
    ``torch.load(mmap=True, weights_only=True)``: tensors stay on disk until
    touched, and ``weights_only`` refuses pickled code. Fills ``index.tensors``
    (names, shapes, dtypes) so candidates and fingerprints work as for
    safetensors, and returns the tensors for ``TensorStreamer``.
    """
    import torch

    from mergekit_transplant.checkpoint import weight_files

    files = [f for f in weight_files(index.root, allow_pickle=allow_pickle) if f.suffix != ".safetensors"]
    codes = {getattr(torch, v): k for k, v in _TORCH_DTYPES.items()}
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


class TensorStreamer(contextlib.AbstractContextManager):
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
        dtype = getattr(torch, _TORCH_DTYPES.get(info.dtype, ""), None)
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
        fh = self._files.get(info.file)
        if fh is None:
            fh = self._files[info.file] = open(info.file, "rb", buffering=0)
        view = memoryview(out.view(-1).view(torch_uint8()).numpy()) if out.numel() else memoryview(b"")
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

    def delta(self, name: str, current):
        """``stored - current`` in float32 on ``current``'s device.

        The stored tensor is first cast to ``current``'s dtype, so a tensor the
        two checkpoints share gives an exact zero even when the model runs in a
        lower precision than it is stored in. The result lives in a scratch
        buffer reused for every tensor of that shape: use it before the next
        call.
        """
        import torch

        info = self.index.tensors.get(name)
        if info is None:
            raise TransplantError(f"model {self.index.ref}: no tensor {name}")
        if tuple(info.shape) != tuple(current.shape):
            raise TransplantError(
                f"{name}: shape {list(info.shape)} in {self.index.ref} but {list(current.shape)} in the loaded model"
            )
        key = (tuple(current.shape), str(current.device))
        out = self._scratch.get(key)
        if out is None:
            out = self._scratch[key] = torch.empty(current.shape, dtype=torch.float32, device=current.device)
        if (info.dtype == "F32" and current.dtype == torch.float32 and current.device.type == "cpu"
                and name not in self._pickled):
            self.bytes_read += info.nbytes
            self._read_into(info, out)  # straight into the scratch buffer: no second copy
        else:
            out.copy_(self.get(name, reuse=True).to(device=current.device, dtype=current.dtype))
        return out.sub_(current)  # in float32: the donor tensor is already cast, the target's is promoted

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
