"""Which modules may be transplanted: leaf linear layers both models share.

A candidate is a leaf ``nn.Linear`` (fused projections such as phi3's
``qkv_proj`` included) whose weight tensor exists under the same name and
shape in the target's and the donor's checkpoints, so mergekit can read and
write it by exactly that name. Embeddings and the output head are only
candidates when asked for: they are vocabulary-sized and rarely the organ a
task lives in. Norms never are (a handful of parameters, no input to score).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from mergekit_transplant.checkpoint import ModelIndex
from mergekit_transplant.errors import TransplantError

_LAYER = re.compile(r"^(?P<prefix>.*?\.(?P<index>\d+)\.)(?P<kind>.+)$")


@dataclass(frozen=True)
class Candidate:
    module: str  # model.layers.1.mlp.down_proj
    tensor: str  # model.layers.1.mlp.down_proj.weight (the mergekit weight name)
    bias: Optional[str]  # its bias tensor, transplanted with it, or None
    layer: Optional[int]
    kind: str  # mlp.down_proj
    layer_prefix: Optional[str]  # model.layers.1.
    parameters: int
    embedding: bool = False  # nn.Embedding: the "input" is token ids

    @property
    def tensors(self) -> Tuple[str, ...]:
        return (self.tensor,) + ((self.bias,) if self.bias else ())


def describe_module(name: str) -> Tuple[Optional[int], str, Optional[str]]:
    """(layer index, module kind, layer prefix) from a dotted module name."""
    match = _LAYER.match(name)
    if not match:
        return None, name, None
    return int(match["index"]), match["kind"], match["prefix"]


def find_candidates(
    model,
    target: ModelIndex,
    donor: ModelIndex,
    *,
    modules: Optional[Sequence[str]] = None,
    include_embeddings: bool = False,
) -> Tuple[List[Candidate], List[str]]:
    """Candidates in module order, and notes on the linear layers left out."""
    import torch.nn as nn

    skipped: List[str] = []
    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    input_embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    found: List[Candidate] = []
    for name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear)
        is_embedding = isinstance(module, nn.Embedding) and module is input_embed
        if not (is_linear or is_embedding):
            continue
        is_head = module is output_head
        if (is_head or is_embedding) and not include_embeddings:
            continue
        if modules and not any(fnmatch.fnmatchcase(name, pattern) for pattern in modules):
            continue
        tensor = f"{name}.weight"
        problem = _mismatch(tensor, target, donor)
        if problem:
            skipped.append(f"{name}: {problem}")
            continue
        bias = f"{name}.bias" if getattr(module, "bias", None) is not None else None
        if bias and (_mismatch(bias, target, donor)):
            skipped.append(f"{name}: {_mismatch(bias, target, donor)}")
            continue
        layer, kind, prefix = describe_module(name)
        params = target.tensors[tensor].numel + (target.tensors[bias].numel if bias else 0)
        found.append(Candidate(name, tensor, bias, layer, kind, prefix, params, embedding=is_embedding))
    if not found:
        what = f" matching {', '.join(modules)}" if modules else ""
        detail = f" ({skipped[0]})" if skipped else ""
        raise TransplantError(f"no candidate modules{what} shared by target and donor{detail}")
    return found, skipped


def _mismatch(tensor: str, target: ModelIndex, donor: ModelIndex) -> Optional[str]:
    t, d = target.tensors.get(tensor), donor.tensors.get(tensor)
    if t is None:
        return f"{tensor} is not in the target's checkpoint (tied or renamed)"
    if d is None:
        return f"{tensor} is not in the donor's checkpoint"
    if tuple(t.shape) != tuple(d.shape):
        return f"{tensor} has shape {list(t.shape)} in the target but {list(d.shape)} in the donor"
    return None


def layer_units(candidates: Sequence[Candidate], target: ModelIndex) -> Dict[str, dict]:
    """Decoder layers as transplant units: prefix -> {layer, modules, parameters}.

    A unit's parameters are every tensor under its prefix (norms included),
    since a ``model.layers.5.`` filter transplants all of them.
    """
    units: Dict[str, dict] = {}
    for c in candidates:
        if c.layer_prefix is None:
            continue
        unit = units.setdefault(c.layer_prefix, {"layer": c.layer, "modules": []})
        unit["modules"].append(c.module)
    if not units:
        raise TransplantError("--granularity layer: no candidate sits inside a numbered decoder layer")
    for prefix, unit in units.items():
        unit["parameters"] = sum(t.numel for n, t in target.tensors.items() if n.startswith(prefix))
    return units
