"""``organ apply --at S``: an organ's layer block re-inserted at another depth, for the NOT paper's position study.

The organ's files are never changed. A temporary *view* of it is written
instead: the same tensor bytes (copied verbatim, so every sha256 still
matches) under rewritten names, layer ``i`` becoming ``i − first + S``, with
a manifest and a recipe whose filters are renamed the same way. The merge
reads the view like any organ, so verification, ``check``'s shape test and
the model card all apply to the position the block is actually put at.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import List

import yaml

from mergekit_transplant._version import __version__
from mergekit_transplant.checkpoint import TensorInfo, read_header, read_index, weight_files
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.organ.apply import organ_recipe_for
from mergekit_transplant.checkpoint.tensor_io import write_tensor_folder
from mergekit_transplant.organ.extract import one_line
from mergekit_transplant.organ.manifest import DONOR_SIDE_FILES, MANIFEST, RECIPE, OrganTensor, read_manifest
from mergekit_transplant.organ.training.blocks import layer_prefix

_LAYER = re.compile(r"^(.*?\.layers)\.(\d+)\.")


def _layers_of(names: List[str], where: str):
    prefix, _ = layer_prefix(names)
    layers = set()
    for name in names:
        m = _LAYER.match(name)
        if not m or m.group(1) != prefix:
            raise TransplantError(f"--at: {where} holds {name!r}, which is not in a decoder layer; only organs of "
                                  "whole decoder layers can be moved")
        layers.add(int(m.group(2)))
    return prefix, min(layers), max(layers)


def _renamer(prefix: str, offset: int):
    def rename(name: str) -> str:
        m = _LAYER.match(name)
        if not m or m.group(1) != prefix:
            return name
        return f"{prefix}.{int(m.group(2)) + offset}.{name[m.end():]}"
    return rename


def organ_view(organ_dir: os.PathLike | str, view_dir: Path, target: str, at: int) -> str:
    """Write the view of ``organ_dir`` with its block starting at layer ``at``; return the recipe merging it."""
    organ_dir = Path(organ_dir)
    manifest = read_manifest(organ_dir)
    if len(manifest.donors) != 1:
        raise TransplantError(f"--at: {organ_dir} holds {len(manifest.donors)} donors; only single-donor organs "
                              "can be moved")
    donor = manifest.donors[0]
    prefix, first, last = _layers_of([t.name for t in donor.tensors], str(organ_dir))
    _, target_layers = layer_prefix(read_index(target).tensors)
    if at < 0 or at + last - first >= target_layers:
        raise TransplantError(
            f"--at {at}: the organ's {last - first + 1} layer(s) ({first}-{last}) do not fit there; target "
            f"{target} has layers 0-{target_layers - 1}")
    rename = _renamer(prefix, at - first)

    infos: List[TensorInfo] = []
    for file in weight_files(organ_dir):
        infos.extend(sorted(read_header(file).values(), key=lambda i: i.begin))
    moved = [TensorInfo(rename(i.name), i.shape, i.dtype, i.file, i.begin, i.end) for i in infos]
    view_dir.mkdir(parents=True)
    write_tensor_folder(view_dir, moved)
    for side in DONOR_SIDE_FILES:
        if (organ_dir / side).is_file():
            (view_dir / side).write_bytes((organ_dir / side).read_bytes())

    text, _ = organ_recipe_for(organ_dir, target)
    data = yaml.safe_load(text)
    organ_abs = str(organ_dir.resolve())
    for model in data.get("models") or []:
        if model.get("model") == organ_abs:
            model["model"] = str(view_dir)
        strength = (model.get("parameters") or {}).get("strength")
        for cond in strength if isinstance(strength, list) else []:
            if isinstance(cond, dict) and isinstance(cond.get("filter"), str):
                cond["filter"] = rename(cond["filter"])
    header = (f"# Organ {organ_abs} (layers {first}-{last}) applied at layers {at}-{at + last - first} of "
              f"{one_line(target)} by mergekit-transplant {__version__}, through a temporary view with renamed "
              f"tensors.\n# Reproduce: mergekit-transplant organ apply {organ_abs} OUT --target "
              f"{one_line(target)} --at {at}\n")
    recipe = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)

    view = copy.deepcopy(manifest)
    d = view.donors[0]
    d.recipe_ref = str(view_dir)
    d.tensors = [OrganTensor(rename(t.name), t.shape, t.dtype, t.sha256, t.nbytes) for t in d.tensors]
    view.recipe = recipe
    if view.training is not None:
        view.training = {**view.training, "applied_at": {"organ": organ_abs, "from": first, "at": at}}
    (view_dir / MANIFEST).write_text(json.dumps(view.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (view_dir / RECIPE).write_text(recipe, encoding="utf-8")
    return recipe
