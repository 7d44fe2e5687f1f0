"""An organ's recipe pointed at a target (``organ_recipe_for``); ``flows.apply_organ`` verifies and merges it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import yaml

from mergekit_transplant._version import __version__
from mergekit_transplant.checkpoint import (
    split_revision,
)
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.organ.extract import (
    one_line,
    rewrite_models,
)
from mergekit_transplant.organ.manifest import RECIPE, OrganManifest, read_manifest
from mergekit_transplant.recipe import load_recipe, parse_recipe


def _abs_ref(ref: str) -> str:
    path, rev = split_revision(ref)
    if os.path.exists(path):
        path = str(Path(path).resolve())
    return f"{path}@{rev}" if rev else path


def organ_recipe_for(organ_dir: os.PathLike | str, target: Optional[str] = None) -> Tuple[str, OrganManifest]:
    """The organ's recipe with absolute organ paths and ``target`` as the base model.

    Reads ``ORGAN_DIR/recipe.yml`` (so edited strengths are honoured) when it is
    there; every model it names must be one of the organ's donor folders.
    """
    organ_dir = Path(organ_dir)
    manifest = read_manifest(organ_dir)
    target = target or manifest.target_ref
    by_recipe_ref = {}
    for d in manifest.donors:
        folder = organ_dir if d.folder == "." else organ_dir / d.folder
        by_recipe_ref[d.recipe_ref] = str(folder.resolve())
    source = organ_dir / RECIPE
    if source.is_file():
        recipe = load_recipe(source)
        mapping = by_recipe_ref
    else:
        recipe = parse_recipe(manifest.recipe)
        mapping = {}
        for d in manifest.donors:
            folder = organ_dir if d.folder == "." else organ_dir / d.folder
            mapping[d.ref] = str(folder.resolve())
    unknown = [r for r in recipe.donors if r not in mapping]
    if unknown:
        raise TransplantError(
            f"{source}: model {unknown[0]!r} is not one of this organ's donor folders "
            f"({', '.join(sorted(mapping)) or 'none'})"
        )
    data = rewrite_models(recipe, mapping, target=_abs_ref(target))
    header = f"# Organ {organ_dir.resolve()} applied to {one_line(target)} by mergekit-transplant {__version__}\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000), manifest
