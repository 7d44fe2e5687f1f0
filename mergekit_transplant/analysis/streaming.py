"""Read single tensors from a checkpoint on demand, never the whole model.

The ``local`` score needs each module's donor weight only while that module
runs in the target's forward pass. ``safe_open(...).get_tensor`` reads one
tensor (memory-mapped, so repeated reads of a hot file come from the page
cache), which keeps the resident set at one model plus one tensor.
"""

from __future__ import annotations

import contextlib
from typing import Dict

from mergekit_transplant.checkpoint import ModelIndex
from mergekit_transplant.errors import TransplantError


class TensorStreamer(contextlib.AbstractContextManager):
    def __init__(self, index: ModelIndex):
        self.index = index
        self._handles: Dict[str, object] = {}
        self.bytes_read = 0

    def get(self, name: str):
        """The named tensor, on the CPU, in its stored dtype."""
        from safetensors import safe_open

        info = self.index.tensors.get(name)
        if info is None:
            raise TransplantError(f"model {self.index.ref}: no tensor {name}")
        handle = self._handles.get(info.file)
        if handle is None:
            handle = safe_open(info.file, framework="pt", device="cpu")
            self._handles[info.file] = handle
        self.bytes_read += info.nbytes
        return handle.get_tensor(name)

    def delta(self, name: str, current):
        """``stored - current`` in float32 on ``current``'s device.

        The stored tensor is first cast to ``current``'s dtype, so a tensor the
        two checkpoints share gives an exact zero even when the model runs in a
        lower precision than it is stored in.
        """
        other = self.get(name).to(device=current.device, dtype=current.dtype, non_blocking=True)
        if other.shape != current.shape:
            raise TransplantError(
                f"{name}: shape {list(other.shape)} in {self.index.ref} but {list(current.shape)} in the loaded model"
            )
        return other.float() - current.float()

    def close(self) -> None:
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.close()
