"""Where each architecture keeps its MLP neurons, and how to slice them.

A *neuron* of a gated MLP is channel j of the input to ``down_proj``,
``act(gate_j · x) · (up_j · x)``: row j of ``gate_proj`` and ``up_proj``
(their biases too, when the model has them) and column j of ``down_proj``.
phi3 fuses gate and up into one ``gate_up_proj`` whose first half is the gate
and second half the up projection (``gate, up = out.chunk(2, -1)``), so
neuron j is its rows j and F + j. Removing a neuron removes all of these
together; nothing else in the model depends on it.

Layouts are listed by architecture name. An architecture that is not listed
is refused by name, never sliced by guesswork: a wrong slice would give a
model that loads and runs and computes something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from mergekit_transplant.errors import TransplantError

#: MLPs that are not gated (one up projection, an activation, one down projection)
NOT_GATED = {
    "GPT2LMHeadModel": "c_fc -> act -> c_proj", "PhiForCausalLM": "fc1 -> act -> fc2",
    "OPTForCausalLM": "fc1 -> act -> fc2", "GPTNeoXForCausalLM": "dense_h_to_4h -> act -> dense_4h_to_h",
    "FalconForCausalLM": "dense_h_to_4h -> act -> dense_4h_to_h", "BloomForCausalLM": "dense_h_to_4h -> act -> dense_4h_to_h",
    "GPTJForCausalLM": "fc_in -> act -> fc_out", "Starcoder2ForCausalLM": "c_fc -> act -> c_proj",
    "GPTBigCodeForCausalLM": "c_fc -> act -> c_proj",
}


@dataclass(frozen=True)
class MlpLayout:
    """Module names of one architecture's gated MLP, relative to a decoder layer's MLP."""

    architecture: str
    layers: str = "model.layers"  # prefix of the decoder layers: model.layers.{i}
    mlp: str = "mlp"
    gate: Optional[str] = "gate_proj"  # None when fused
    up: Optional[str] = "up_proj"
    gate_up: Optional[str] = None  # the fused projection (phi3)
    down: str = "down_proj"

    @property
    def fused(self) -> bool:
        return self.gate_up is not None

    def mlp_prefix(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp}"

    def row_modules(self) -> List[str]:
        """Projections whose output rows are neurons (their bias entries too)."""
        return [self.gate_up] if self.fused else [self.gate, self.up]

    def tensor_names(self, layer: int) -> List[str]:
        """Every tensor name a neuron of this layer touches (biases included; they may not exist)."""
        p = self.mlp_prefix(layer)
        names = []
        for m in self.row_modules() + [self.down]:
            names += [f"{p}.{m}.weight", f"{p}.{m}.bias"]
        return names

    def rows_of(self, kept: Sequence[int], intermediate: int, module: str) -> List[int]:
        """Output rows of a row module that belong to the kept neurons."""
        if module == self.gate_up:
            return list(kept) + [intermediate + j for j in kept]
        return list(kept)

    def slice_tensor(self, name: str, tensor, layer: int, kept, intermediate: int):
        """The kept part of one MLP tensor (a new contiguous tensor), or None when ``name`` is not a sliced one.

        ``down_proj.bias`` is per output feature (hidden size), so it is kept whole.
        """
        import torch

        p = self.mlp_prefix(layer)
        index = torch.as_tensor(list(kept), dtype=torch.long)
        for m in self.row_modules():
            if name in (f"{p}.{m}.weight", f"{p}.{m}.bias"):
                rows = torch.as_tensor(self.rows_of(list(kept), intermediate, m), dtype=torch.long)
                return tensor.index_select(0, rows).contiguous()
        if name == f"{p}.{self.down}.weight":
            return tensor.index_select(1, index).contiguous()
        return None


SPLIT = dict(gate="gate_proj", up="up_proj", down="down_proj")
LAYOUTS: Dict[str, MlpLayout] = {
    arch: MlpLayout(arch, **SPLIT)
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "GemmaForCausalLM", "Gemma2ForCausalLM")
}
LAYOUTS["Phi3ForCausalLM"] = MlpLayout("Phi3ForCausalLM", gate=None, up=None, gate_up="gate_up_proj",
                                        down="down_proj")


def layout_for(config: Mapping) -> MlpLayout:
    """The layout of a model from its ``config.json`` (a dict); refuses what it does not know."""
    archs = config.get("architectures") or []
    arch = str(archs[0]) if archs else str(config.get("model_type") or "?")
    if arch in NOT_GATED:
        raise TransplantError(
            f"{arch}: its MLP is not gated ({NOT_GATED[arch]}), so it has no act(gate)·up neurons to unplug; "
            f"unplug supports {', '.join(sorted(LAYOUTS))}"
        )
    if arch not in LAYOUTS:
        raise TransplantError(
            f"{arch}: unplug does not know where this architecture keeps its MLP neurons and will not guess "
            f"(a wrong slice gives a model that runs and computes something else); supported: "
            f"{', '.join(sorted(LAYOUTS))}"
        )
    if config.get("mlp_only_layers") or config.get("num_experts") or config.get("num_local_experts"):
        raise TransplantError(f"{arch}: mixture-of-experts MLPs are not supported by unplug")
    inter = config.get("intermediate_size")
    if not isinstance(inter, int) or inter < 1:
        raise TransplantError(
            f"{arch}: config.json has no single integer intermediate_size (got {inter!r}); unplug needs every "
            "layer's MLP to have the same width"
        )
    return LAYOUTS[arch]


def check_tensors(layout: MlpLayout, tensors: Mapping[str, Sequence[int]], layers: int, intermediate: int,
                  hidden: int, ref: str) -> None:
    """Every layer's MLP tensors exist with the shapes the layout implies (from headers: name -> shape)."""
    for i in range(layers):
        p = layout.mlp_prefix(i)
        expected = {f"{p}.{layout.down}.weight": (hidden, intermediate)}
        if layout.fused:
            expected[f"{p}.{layout.gate_up}.weight"] = (2 * intermediate, hidden)
        else:
            expected[f"{p}.{layout.gate}.weight"] = (intermediate, hidden)
            expected[f"{p}.{layout.up}.weight"] = (intermediate, hidden)
        for name, shape in expected.items():
            got = tensors.get(name)
            if got is None:
                raise TransplantError(f"model {ref}: no tensor {name}, which the {layout.architecture} layout needs")
            if tuple(got) != shape:
                raise TransplantError(
                    f"model {ref}: {name} has shape {list(got)}, but the {layout.architecture} layout with "
                    f"intermediate_size {intermediate} and hidden_size {hidden} implies {list(shape)}"
                )
