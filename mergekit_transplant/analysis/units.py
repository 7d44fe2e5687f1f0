"""Units: what a method scores and selects, chosen by a small strategy.

Capture always measures linear modules (``capture.run_pass``: one probe per
candidate module, the other checkpoint streamed a tensor at a time). A *unit*
is what those measurements are grouped into, ranked and selected as:

=========  ======================================  ==================================
unit       name in rankings and recipes            used by
=========  ======================================  ==================================
module     the module's weight tensor name         ``analyze`` (default)
layer      the decoder layer's prefix              ``analyze --granularity layer``
           (``model.layers.5.``)
neuron     ``model.layers.5.mlp:j`` (channel j of  ``unplug`` (task experts)
           the MLP's intermediate activation)
=========  ======================================  ==================================

``UNITS[name].group(...)`` turns the module score table into the unit's
table, parameter counts and recipe filters; a new unit kind plugs in here.
Neurons are measured at the input of the MLP's down projection
(``NeuronUnits.probe_modules``), the one place every neuron's activation and
gradient pass through; ``unplug.scores`` hooks there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.analysis.candidates import Candidate, layer_units
from mergekit_transplant.analysis.scores import ScoreTable, layer_scores
from mergekit_transplant.checkpoint import ModelIndex


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

    def group(self, candidates: Sequence[Candidate], modules_table: ScoreTable, target: ModelIndex) -> Units:
        return Units(self.name, modules_table, {c.tensor: c.parameters for c in candidates},
                     {c.tensor: list(c.tensors) for c in candidates})


class LayerUnits:
    """Each decoder layer is a unit: its modules' scores summed; the recipe filter is the layer's prefix."""

    name = "layer"

    def group(self, candidates: Sequence[Candidate], modules_table: ScoreTable, target: ModelIndex) -> Units:
        info = layer_units(candidates, target)
        table = layer_scores(modules_table, candidates, info)
        return Units(self.name, table, {p: info[p]["parameters"] for p in table.units},
                     {p: [p] for p in table.units}, info)


class NeuronUnits:
    """Each channel of a decoder layer's MLP intermediate activation is a unit (``unplug``'s experts).

    A neuron owns one row of the gate and up projections and one column of
    the down projection; it is measured where its activation enters the down
    projection.
    """

    name = "neuron"

    @staticmethod
    def unit(layer: int, neuron: int, mlp_prefix: str = "model.layers.{}.mlp") -> str:
        return f"{mlp_prefix.format(layer)}:{neuron}"

    @staticmethod
    def probe_modules(model, layout, layers: int):
        """``(mlp, down_proj)`` of every decoder layer, by the layout's names (``unplug.layout.MlpLayout``):
        the down projection's input is every neuron's output."""
        from mergekit_transplant.errors import TransplantError

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


UNITS = {"module": ModuleUnits(), "layer": LayerUnits(), "neuron": NeuronUnits()}
ANALYZE_UNITS = ("module", "layer")  # the granularities analyze selects (neurons are unplug's)


__all__ = ["ANALYZE_UNITS", "LayerUnits", "ModuleUnits", "NeuronUnits", "UNITS", "Units"]
