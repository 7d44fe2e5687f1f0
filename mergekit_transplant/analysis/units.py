"""Units: what a method scores and selects, chosen by a small strategy.

=========  ======================================  ==================================
unit       name in rankings and recipes            used by
=========  ======================================  ==================================
module     the module's weight tensor name         ``analyze`` (default)
layer      the decoder layer's prefix              ``analyze --granularity layer``
           (``model.layers.5.``)
neuron     ``model.layers.5.mlp:j`` (channel j of  ``unplug`` (task experts)
           the MLP's intermediate activation)
=========  ======================================  ==================================

Every unit is measured by the same pass, ``capture.run_pass``: the same
device handling, batching, forward and backward step, recomputation,
progress and timing, for the target and the donor alike. What depends on the
unit is a ``capture.Probes`` object, which the strategy's ``probes(...)``
returns: where the pass hooks, and how it reduces what the hooks see.

- ``module`` and ``layer``: ``capture.ModuleProbes``, a forward hook on every
  candidate linear module, one value per sample and module (the default of
  ``run_pass``). ``UNITS[kind].group(...)`` then turns the module score table
  into the unit's table, parameter counts and recipe filters: a layer's
  scores are its modules' sums.
- ``neuron``: ``NeuronProbes``, a hook on the input of each MLP's down
  projection (``NeuronUnits.probe_modules``), the one place every neuron's
  activation and gradient pass through; one total per neuron over the
  workload. ``unplug.scores.score_neurons`` runs it.

A new unit kind plugs in here: a strategy with ``probes`` (a ``Probes``
subclass if no existing one measures it) and, for ``analyze``, ``group``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.analysis.candidates import Candidate, layer_units
from mergekit_transplant.analysis.capture import ModuleProbes, Probes
from mergekit_transplant.analysis.scores import ScoreTable, layer_scores
from mergekit_transplant.checkpoint import ModelIndex
from mergekit_transplant.errors import TransplantError


@dataclass
class Units:
    """Scores grouped by unit, with what selection and the recipe need of each unit."""

    kind: str
    table: ScoreTable  # one score column per computed score, one row per unit
    parameters: Dict[str, int]  # unit -> parameters it moves
    tensors: Dict[str, List[str]]  # unit -> recipe filters (tensor names or prefixes)
    info: Optional[Dict[str, dict]] = None  # layer units: layer index, parameters, member modules (report "layers")


class ModuleUnits:
    """Each candidate linear module is a unit (its weight and, when present, its bias move together)."""

    name = "module"

    @staticmethod
    def probes(candidates: Sequence[Candidate], stats: Sequence[str], **options) -> ModuleProbes:
        """What ``run_pass`` hooks and keeps: every candidate module, one value per sample
        (``options``: ``other``, ``own_files``, ``attribution``, ``gain``; see ``capture.ModuleProbes``)."""
        return ModuleProbes(candidates, stats, **options)

    def group(self, candidates: Sequence[Candidate], modules_table: ScoreTable, target: ModelIndex) -> Units:
        return Units(self.name, modules_table, {c.tensor: c.parameters for c in candidates},
                     {c.tensor: list(c.tensors) for c in candidates})


class LayerUnits:
    """Each decoder layer is a unit: its modules' scores summed; the recipe filter is the layer's prefix."""

    name = "layer"
    probes = staticmethod(ModuleUnits.probes)  # a layer is measured as its modules, then grouped

    def group(self, candidates: Sequence[Candidate], modules_table: ScoreTable, target: ModelIndex) -> Units:
        info = layer_units(candidates, target)
        table = layer_scores(modules_table, candidates, info)
        return Units(self.name, table, {p: info[p]["parameters"] for p in table.units},
                     {p: [p] for p in table.units}, info)


class NeuronUnits:
    """Each channel of a decoder layer's MLP intermediate activation is a unit (``unplug``'s experts).

    A neuron owns one row of the gate and up projections and one column of
    the down projection; it is measured where its activation enters the down
    projection (``NeuronProbes``).
    """

    name = "neuron"

    @staticmethod
    def unit(layer: int, neuron: int, mlp_prefix: str = "model.layers.{}.mlp") -> str:
        return f"{mlp_prefix.format(layer)}:{neuron}"

    @staticmethod
    def probes(model, layout, layers: int, intermediate: int, score: str) -> "NeuronProbes":
        """What ``run_pass`` hooks and keeps: each layer's down projection input, one ``score`` total per neuron."""
        return NeuronProbes([down for _mlp, down in NeuronUnits.probe_modules(model, layout, layers)], score,
                            intermediate)

    @staticmethod
    def probe_modules(model, layout, layers: int):
        """``(mlp, down_proj)`` of every decoder layer, by the layout's names (``unplug.layout.MlpLayout``):
        the down projection's input is every neuron's output."""
        modules = dict(model.named_modules())
        out = []
        for i in range(layers):
            mlp = modules.get(layout.mlp_prefix(i))
            down = modules.get(f"{layout.mlp_prefix(i)}.{layout.down}")
            if mlp is None or down is None:
                raise TransplantError(f"the loaded model has no module {layout.mlp_prefix(i)}.{layout.down}")
            out.append((mlp, down))
        return out

    @staticmethod
    def top(values, count: int) -> List[int]:
        """The ``count`` best neurons of one layer, as ascending indices (ties: the lower index first)."""
        order = sorted(range(len(values)), key=lambda j: (-float(values[j]), j))
        return sorted(order[:count])


class NeuronProbes(Probes):
    """Neuron units in ``capture.run_pass``: a hook on the input a of each layer's down projection.

    Channel j of a is neuron j's activation. At the scored positions, each
    neuron's values are summed over the whole workload (there is no value per
    sample): ``activation`` Σ|a_j|, ``wanda`` Σ|a_j| · ‖W_down[:, j]‖ (the
    norm applied at the end), ``attribution`` Σ|a_j · ∂ log p / ∂a_j| (DoE;
    a backward pass per batch, the term computed in a hook on a when its
    gradient arrives). A batch's sums are added on the pass's device in
    float32 and copied to the CPU once per batch; ``finish()[score]`` is one
    ``[layers, intermediate]`` float64 tensor. With ``recompute``, a layer's
    first (graph-less) call counts ``activation`` and its recomputed call
    ``attribution``, as ``capture.Probe`` does.
    """

    SCORES = ("attribution", "activation", "wanda")

    def __init__(self, down_projs: Sequence[object], score: str, intermediate: int):
        if score not in self.SCORES:
            raise TransplantError(f"neuron probes measure {', '.join(self.SCORES)}, not {score!r}")
        self.downs = list(down_projs)
        self.score = score
        self.intermediate = intermediate
        self.gradients = score == "attribution"
        self.positions = 0  # scored positions summed over
        self.totals = None  # [layers, intermediate] float64, on the CPU
        self._batch = None  # [layers, intermediate] float32, this batch's sums on the pass's device

    def attach(self, model, ctx, n_samples: int) -> list:
        import torch

        self.totals = torch.zeros(len(self.downs), self.intermediate, dtype=torch.float64)
        self._batch = torch.zeros(len(self.downs), self.intermediate, dtype=torch.float32, device=ctx.device)
        self.positions = 0
        return [down.register_forward_pre_hook(self._hook(i, ctx)) for i, down in enumerate(self.downs)]

    def _hook(self, layer: int, ctx):
        def hook(module, args):
            a = args[0]
            rows, cols, _weights, _ids, _mask = ctx.index(a.device)
            replaying = ctx.replay is not None and ctx.replay.active
            if not self.gradients:
                if not replaying:
                    picked = a.detach()[rows, cols].float()  # [P, intermediate]
                    self._batch[layer] += picked.abs().sum(0).to(self._batch.device)
                return None
            if not a.requires_grad:
                if ctx.replay is not None and not replaying:
                    return None  # a recomputed layer's first call: its gradient comes through the second
                raise TransplantError("attribution needs gradients through the MLPs, but none flowed here")
            picked = a.detach()[rows, cols].float()

            def on_grad(grad):
                g_rows, g_cols, _w, _i, _m = ctx.index(grad.device)
                g = grad[g_rows, g_cols].float()
                self._batch[layer] += (picked * g).abs().sum(0).to(self._batch.device)

            a.register_hook(on_grad)
            return None

        return hook

    def collect(self, ctx, batch) -> None:
        import torch

        self.totals += self._batch.to("cpu", torch.float64)
        self._batch.zero_()
        self.positions += int(batch.rows.numel())

    def finish(self, desc: str, sources: Sequence[tuple]) -> dict:
        import torch

        if self.score == "wanda":
            for total, down in zip(self.totals, self.downs):
                total *= down.weight.detach().float().norm(dim=0).to("cpu", torch.float64)
        bad = [i for i, s in enumerate(self.totals) if not bool(torch.isfinite(s).all())]
        if bad:
            raise TransplantError(f"non-finite {self.score} scores in layer {bad[0]} (an overflow?): "
                                  "try --dtype float32")
        return {self.score: self.totals}


UNITS = {"module": ModuleUnits(), "layer": LayerUnits(), "neuron": NeuronUnits()}
ANALYZE_UNITS = ("module", "layer")  # the granularities analyze selects (neurons are unplug's)


__all__ = ["ANALYZE_UNITS", "LayerUnits", "ModuleUnits", "NeuronProbes", "NeuronUnits", "UNITS", "Units"]
