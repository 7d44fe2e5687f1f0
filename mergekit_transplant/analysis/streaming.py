"""Read single tensors from a checkpoint on demand, never the whole model (``checkpoint.tensor_io``).

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

from mergekit_transplant.checkpoint.tensor_io import TensorReader, pickled_index
from mergekit_transplant.errors import TransplantError

__all__ = ["TensorStreamer", "pickled_index"]


class TensorStreamer(TensorReader):
    """A ``TensorReader`` that also gives ``stored - current`` for the ``local`` score."""

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
