"""DoE's "play" loop: serve one task's expert from the base model already in memory, then restore it.

``with unplugged(model, "unplug.json"):`` replaces, in every decoder layer,
the MLP's gate/up (or fused gate_up) and down projections' weights by new,
smaller tensors holding only the kept neurons: real smaller matmuls, so the
speed is the expert's, not a mask's. The original ``Parameter`` objects are
set aside untouched and put back on exit (exceptions included), so the
restored model is the original bit for bit and costs no copy back. Memory
while inside: the base plus the kept slices (keep × the MLP weights).

One expert at a time per model: entering a second while one is active is
refused; after the first exits, any other expert can be entered.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple, Union

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.unplug.layout import layout_for
from mergekit_transplant.unplug.report import UnplugReport
from mergekit_transplant.unplug.scores import mlp_modules

ACTIVE = "_mergekit_transplant_unplugged"


def _plan(model, report: UnplugReport) -> List[Tuple[object, str, object, dict]]:
    """Every swap as ``(module, attribute, new tensor, attributes to set)``, checked before anything changes."""
    import torch

    layout = layout_for({"architectures": [report.architecture], "intermediate_size": report.intermediate_size})
    arch = type(model).__name__
    if arch != report.architecture:
        raise TransplantError(f"the report is for {report.architecture}, but the model is {arch}")
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    if layers is not None and layers != report.num_layers:
        raise TransplantError(f"the report is for {report.num_layers} layers, but the model has {layers}")
    f, k = report.intermediate_size, report.kept_size
    swaps = []
    for layer, (mlp, down) in enumerate(mlp_modules(model, layout, report.num_layers)):
        kept = report.kept[layer]
        if any(p.device.type == "meta" for p in mlp.parameters()):
            raise TransplantError(f"{layout.mlp_prefix(layer)} has offloaded (meta) weights: unplugged() needs the "
                                  "MLP weights in memory (load without a device map that offloads them)")
        for name in layout.row_modules():
            lin = getattr(mlp, name)
            rows_total = 2 * f if layout.fused else f
            if lin.weight.shape[0] != rows_total:
                raise TransplantError(
                    f"{layout.mlp_prefix(layer)}.{name} has {lin.weight.shape[0]} output rows, the report expects "
                    f"{rows_total} (intermediate_size {f}): is this the base model the report was made from?")
            rows = torch.as_tensor(layout.rows_of(kept, f, name), dtype=torch.long, device=lin.weight.device)
            swaps.append((lin, "weight", lin.weight.detach().index_select(0, rows), {"out_features": len(rows)}))
            if getattr(lin, "bias", None) is not None:
                swaps.append((lin, "bias", lin.bias.detach().index_select(0, rows), {}))
        if down.weight.shape[1] != f:
            raise TransplantError(f"{layout.mlp_prefix(layer)}.{layout.down} has {down.weight.shape[1]} inputs, the "
                                  f"report expects {f}: is this the base model the report was made from?")
        cols = torch.as_tensor(kept, dtype=torch.long, device=down.weight.device)
        swaps.append((down, "weight", down.weight.detach().index_select(1, cols), {"in_features": k}))
        if hasattr(mlp, "intermediate_size"):
            swaps.append((mlp, None, None, {"intermediate_size": k}))
    return swaps


@contextlib.contextmanager
def unplugged(model, report: Union[str, "UnplugReport", object]) -> Iterator[object]:
    """Within the block ``model`` is the expert ``report`` (a path to unplug.json, a folder, or a report)."""
    import torch

    if not isinstance(report, UnplugReport):
        report = UnplugReport.load(report)
    if getattr(model, ACTIVE, None) is not None:
        raise TransplantError("an expert is already plugged into this model: exit its unplugged() block first")
    swaps = _plan(model, report)
    undo: List[Tuple[object, str, object]] = []
    try:
        with torch.no_grad():
            for module, attr, tensor, attributes in swaps:
                if attr is not None:
                    undo.append((module, attr, getattr(module, attr)))
                    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))
                for key, value in attributes.items():
                    undo.append((module, key, getattr(module, key)))
                    setattr(module, key, value)
        setattr(model, ACTIVE, report)
        yield model
    finally:
        for module, attr, original in reversed(undo):
            setattr(module, attr, original)  # the original Parameter objects: untouched, so bit for bit
        if getattr(model, ACTIVE, None) is report:
            delattr(model, ACTIVE)
