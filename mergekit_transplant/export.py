"""The same merge for plain mergekit: a transplant recipe rewritten with the built-in ``linear`` method.

LazyMergekit, mergekit-gui and mergekit forks run recipes without this plugin.
For them, ``export_stock`` rewrites a transplant recipe so that unmodified
mergekit computes the same tensors.

Why ``linear``: transplant is ``target + Σ sᵢ·(donorᵢ − target)``, which is
``(1 − Σ sᵢ)·target + Σ sᵢ·donorᵢ``: a linear merge with ``normalize: false``
and per-tensor weights. mergekit's linear (0.1.x) accumulates in fp32 (fp64
for fp64 inputs) and casts back to the first input's dtype, as transplant
does, so with the target listed first the dtypes agree. At strengths 0 and 1
the weights are exactly 0 and 1, which gives the same bits (see the limits
below). ``task_arithmetic`` would express the same sum, but it subtracts the
base from every donor before adding it back, so strength 1 is not exact.

How the weights are written: mergekit's own planner resolves every tensor's
strengths (filters, first-match-wins, gradients) exactly as the merge would,
and each tensor with a nonzero strength gets its own exact-name filter, the
longer names first. A filter is a substring match, so every other tensor is
then checked against the written filters; any that a shorter filter would
catch gets its own (target 1, donors 0) filter too. The result resolves to
the intended weights for every tensor, by construction and by a final check.

Refused (naming the tensor): a strength outside [0, 1] or strengths summing
above 1 (``allow_extrapolation``); ``slices``/``modules`` recipes.

What plain mergekit does differently, written at the top of the export: it
reads (and downloads) every donor tensor, not only the transplanted ones; no
pre-flight check runs; its model card replaces the plugin's; no NaN/Inf guard;
``-0.0`` becomes ``+0.0`` (mergekit sums from zeros) and a non-finite value in
one model makes the other's tensor NaN where its weight is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import yaml

from mergekit_transplant._version import __version__
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.adapter.planning import resolve_strengths
from mergekit_transplant.recipe import PlannedTensor, Recipe, load_recipe

#: the header comment of every stock export
LOST = (
    "What plain mergekit does not do that `mergekit-transplant merge` does:",
    "- read planning: mergekit reads (and downloads) every donor tensor, not only the transplanted ones;",
    "- the pre-flight check (filters, shapes, vocabularies, strengths) and the NaN/Inf guard on donor tensors;",
    "- the model card: mergekit writes its own, without the transplant table, scores or Hub links.",
    "Same tensors as the transplant recipe: bit-identical at strengths 0 and 1 (except -0.0 -> +0.0, and NaN",
    "where the other model holds Inf/NaN at weight 0), within ~1 float32 ulp between (docs/recipes.md).",
)


@dataclass
class StockExport:
    """The rewritten recipe and what it sets."""

    text: str
    weighted_tensors: int  # tensors with a nonzero donor strength
    guard_filters: int  # extra filters keeping other tensors on the target
    models: List[str] = field(default_factory=list)


def _weights(pt: PlannedTensor, donors: List[str], recipe: Recipe) -> Tuple[float, ...]:
    strengths = pt.donor_strengths()
    values = [float(strengths.get(d, 0.0)) for d in donors]
    for donor, s in zip(donors, values):
        if not 0.0 <= s <= 1.0:
            raise TransplantError(
                f"tensor {pt.name}: strength {s:g} for donor {donor} is outside [0, 1]; plain mergekit's linear "
                "merge cannot express it exactly (export --stock refuses it)")
    total = sum(values)
    if total > 1.0:
        raise TransplantError(
            f"tensor {pt.name}: strengths of donors {', '.join(d for d, s in zip(donors, values) if s)} sum to "
            f"{total:g} > 1; the target's weight would be negative, which plain mergekit's linear merge does not "
            "express exactly (export --stock refuses it)")
    return (1.0 - total, *values)


def _first_match(name: str, filters: List[Tuple[str, Tuple[float, ...]]], default: Tuple[float, ...]):
    for filt, weights in filters:
        if filt in name:
            return weights
    return default


def export_stock(recipe_path: os.PathLike | str) -> StockExport:
    """Rewrite the transplant recipe at ``recipe_path`` for plain mergekit (``linear``, ``normalize: false``)."""
    recipe = load_recipe(recipe_path)
    data = recipe.data
    if data.get("slices") or data.get("modules"):
        raise TransplantError(
            f"{recipe_path}: export --stock handles `models:` recipes; this one uses "
            f"{'slices' if data.get('slices') else 'modules'}, whose layer mapping it does not rewrite")
    donors = recipe.donors
    target = recipe.target
    planned = resolve_strengths(recipe)
    default = (1.0, *([0.0] * len(donors)))
    wanted: Dict[str, Tuple[float, ...]] = {}
    for pt in planned:
        weights = _weights(pt, donors, recipe)
        if weights != default:
            wanted[pt.name] = weights
    filters = sorted(wanted.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    guards = 0
    names = [pt.name for pt in planned]
    for name in sorted(names, key=lambda n: (-len(n), n)):  # longest first: a guard never catches a longer name
        if name not in wanted and _first_match(name, filters, default) != default:
            filters.append((name, default))
            filters.sort(key=lambda kv: (-len(kv[0]), kv[0]))
            guards += 1
    for name in names:  # the check the construction promises
        got = _first_match(name, filters, default)
        if got != wanted.get(name, default):
            raise TransplantError(f"tensor {name}: the stock filters would resolve to {got}, not "
                                  f"{wanted.get(name, default)}; export --stock cannot express this recipe exactly")
    models = [target, *donors]
    doc: Dict[str, object] = {"merge_method": "linear", "models": []}
    for i, model in enumerate(models):
        weight = [{"filter": f, "value": w[i]} for f, w in filters] + [{"value": default[i]}]
        doc["models"].append({"model": model, "parameters": {"weight": weight}})
    doc["parameters"] = {"normalize": False}
    for key in ("dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template"):
        if data.get(key) is not None:
            doc[key] = data[key]
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
    header = [f"Stock mergekit recipe exported by mergekit-transplant {__version__} from {recipe_path}",
              f"(merge_method: transplant, target {target}). Runs in any mergekit: mergekit-yaml THIS_FILE OUT",
              *LOST]
    text = "".join(f"# {line}\n" for line in header) + body
    return StockExport(text=text, weighted_tensors=len(wanted), guard_filters=guards, models=models)


__all__ = ["StockExport", "export_stock", "LOST"]
