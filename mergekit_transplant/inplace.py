"""Transplant into a live model and take it back out, bit for bit.

Each sweep point sets ``W ← lerp(W_target, W_donor, s)`` on a few tensors of
the already-loaded target, evaluates, and restores. The target's original
tensors are copied (to CPU) before they are touched and copied back after,
so restoration is exact whatever the arithmetic; ``method.blend`` makes the
endpoints exact too (s = 1 is the donor's tensor, s = 0 leaves the target's),
exactly as ``merge_method: transplant`` computes them. Donor tensors are read
one at a time from the donor's safetensors files (``safe_open``, or a
memory-mapped pickle the user allowed), only the ones a point needs; the
donor model is never loaded. ``analysis`` (greedy selection) and ``sweep``
both use it, so it sits below them.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Mapping

from mergekit_transplant.checkpoint import read_index
from mergekit_transplant.checkpoint.tensor_io import TensorReader, pickled_index
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.method import blend


class DonorTensors:
    """Read single donor tensors by name (``checkpoint.tensor_io.TensorReader``).

    A donor whose only weights are pickle files (``allow_pickle``) is opened
    with ``torch.load(mmap=True, weights_only=True)``: its tensors stay on
    disk until a point reads them, and pickled code is refused.
    """

    def __init__(self, ref: str, *, allow_pickle: bool = False):
        self.ref = ref
        self.index = read_index(ref, allow_pickle=allow_pickle)
        pickled: Dict[str, object] = {}
        if self.index.pickled and not self.index.tensors:
            pickled = pickled_index(self.index, allow_pickle=True)  # also fills index.tensors
        self._reader = TensorReader(self.index, pickled)

    def get(self, name: str):
        """A fresh CPU tensor (the caller may keep it), in its stored dtype."""
        if name not in self.index.tensors:
            raise TransplantError(f"donor {self.ref} has no tensor {name}")
        return self._reader.get(name)

    def close(self) -> None:
        self._reader.close()
        self._reader._pickled.clear()


class LiveTransplant:
    """Apply strengths to a loaded model's tensors in place; undo exactly on exit."""

    def __init__(self, model, donor: DonorTensors):
        self.model = model
        self.donor = donor
        self.tensors = dict(model.named_parameters(remove_duplicate=False))
        self.tensors.update(dict(model.named_buffers(remove_duplicate=False)))

    def check(self, names) -> None:
        """Every name exists in the model and the donor with the same shape."""
        for name in names:
            live = self.tensors.get(name)
            if live is None:
                raise TransplantError(f"the target model has no tensor {name} (as loaded by transformers)")
            info = self.donor.index.tensors.get(name)
            if info is None:
                raise TransplantError(f"donor {self.donor.ref} has no tensor {name}")
            if tuple(info.shape) != tuple(live.shape):
                raise TransplantError(
                    f"{name}: donor shape {list(info.shape)} differs from the target's {list(live.shape)}"
                )

    @contextlib.contextmanager
    def applied(self, strengths: Mapping[str, float]) -> Iterator[None]:
        """Within the block the model holds lerp(target, donor, s) for each named tensor."""
        import torch

        saved: Dict[str, "torch.Tensor"] = {}
        storages = set()
        try:
            with torch.no_grad():
                for name, s in strengths.items():
                    live = self.tensors[name]
                    if s == 0.0 or live.data_ptr() in storages:
                        continue  # tied weights: the first name already set the shared storage
                    storages.add(live.data_ptr())
                    saved[name] = live.detach().to("cpu", copy=True)
                    donor = self.donor.get(name).to(live.device)
                    live.copy_(blend(live.detach(), [(donor, float(s))]))
            yield
        finally:
            with torch.no_grad():
                for name, original in reversed(list(saved.items())):
                    self.tensors[name].copy_(original)
