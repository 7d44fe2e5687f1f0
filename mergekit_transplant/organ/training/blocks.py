"""Which decoder layers form the organ: ``--layers S-E`` or ``auto``, and their tensor names.

``auto`` is our reading of the NOT paper (arXiv 2601.13580): its donor organ is
k = 3 contiguous layers starting at s = ⌊L/3⌋ ("the middle third"); the
abstract adds that early insertion positions did best. We could read the
abstract and a third-party summary of the method section, not the full
experiments, so treat ``auto`` as a starting point and run the position
study (``docs/recipes.md``) on your own model. The block is clipped to fit:
k = min(3, L) and s = min(⌊L/3⌋, L − k).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Tuple

from mergekit_transplant.errors import TransplantError

AUTO_LAYERS = 3
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")
_LAYER = re.compile(r"^(.*?\.layers)\.(\d+)\.")


@dataclass(frozen=True)
class Block:
    """Decoder layers ``start`` … ``end`` (inclusive) of a model with ``num_layers`` layers."""

    start: int
    end: int
    num_layers: int
    prefix: str = "model.layers"  # the decoder layers' tensor-name prefix
    auto: bool = False

    @property
    def count(self) -> int:
        return self.end - self.start + 1

    @property
    def filters(self) -> List[str]:
        """One exact filter per layer, with the trailing dot (``model.layers.1.`` cannot match layer 11)."""
        return [f"{self.prefix}.{i}." for i in range(self.start, self.end + 1)]

    def contains(self, tensor_name: str) -> bool:
        return any(tensor_name.startswith(f) for f in self.filters)

    def moved(self, start: int) -> "Block":
        """The same number of layers starting at ``start`` (for ``organ apply --at``)."""
        return Block(start, start + self.count - 1, self.num_layers, self.prefix, False)

    def rename(self, tensor_name: str, to: "Block") -> str:
        """``tensor_name`` in this block, renamed to the same position in ``to``."""
        m = _LAYER.match(tensor_name)
        if not m or m.group(1) != self.prefix or not self.contains(tensor_name):
            raise TransplantError(f"tensor {tensor_name!r} is not in layers {self.start}-{self.end}")
        layer = int(m.group(2)) - self.start + to.start
        return f"{to.prefix}.{layer}.{tensor_name[m.end():]}"

    def describe(self) -> str:
        how = " (auto: 3 layers from floor(L/3))" if self.auto else ""
        return f"layers {self.start}-{self.end} of {self.num_layers}{how}"

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "count": self.count, "num_layers": self.num_layers,
                "prefix": self.prefix, "auto": self.auto}


def layer_prefix(tensor_names: Iterable[str]) -> Tuple[str, int]:
    """The decoder layers' name prefix (``model.layers``) and how many layers the tensors name."""
    counts = {}
    for name in tensor_names:
        m = _LAYER.match(name)
        if m:
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not counts:
        raise TransplantError("the model has no decoder layers named like 'model.layers.N.' to train")
    prefix = max(counts, key=lambda p: len(counts[p]))
    return prefix, max(counts[prefix]) + 1


def auto_block(num_layers: int) -> Tuple[int, int]:
    k = min(AUTO_LAYERS, num_layers)
    s = min(num_layers // 3, num_layers - k)
    return s, s + k - 1


def parse_layers(text: str, num_layers: int, prefix: str = "model.layers") -> Block:
    """``auto`` or ``S-E`` (inclusive) against a model with ``num_layers`` layers; one-line errors."""
    if str(text).strip().lower() == "auto":
        s, e = auto_block(num_layers)
        return Block(s, e, num_layers, prefix, auto=True)
    m = _RANGE.match(str(text))
    if not m:
        raise TransplantError(f"--layers {text!r}: expected S-E (e.g. 4-6) or auto")
    s, e = int(m.group(1)), int(m.group(2))
    if s > e:
        raise TransplantError(f"--layers {text}: start {s} is after end {e}")
    if s < 0 or e >= num_layers:
        raise TransplantError(f"--layers {text}: out of range, the model has layers 0-{num_layers - 1}")
    return Block(s, e, num_layers, prefix)
