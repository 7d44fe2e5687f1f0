"""Cutting an organ from a recipe: the donor tensors with nonzero strength, copied byte for byte."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from mergekit_transplant import atomic
from mergekit_transplant._version import __version__
from mergekit_transplant.checkpoint import (
    ModelIndex,
    TensorInfo,
    read_index,
    split_revision,
)
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.checkpoint.tensor_io import DEFAULT_SHARD_BYTES, sha256_file, write_tensor_folder
from mergekit_transplant.organ.manifest import (
    DONOR_SIDE_FILES,
    MANIFEST,
    RECIPE,
    TOKENIZER_FILES,
    OrganDonor,
    OrganManifest,
    OrganTensor,
)
from mergekit_transplant.preflight import CheckReport, run_check
from mergekit_transplant.recipe import Recipe, load_recipe

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def refuse_clobbering(out: Path, refs: Iterable[str]) -> None:
    for ref in refs:
        path = Path(split_revision(ref)[0])
        if path.exists() and _same_or_inside(out, path):
            raise TransplantError(f"output {out} overlaps the model folder {ref}; choose another output folder")


def _ensure_free(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TransplantError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TransplantError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


def _pinned_revision(ref: str, index: ModelIndex) -> Optional[str]:
    """The revision in the ref, or the commit of the Hub cache snapshot it resolved to."""
    _path, rev = split_revision(ref)
    if index.commit:  # a Hub model read remotely: the commit its headers came from
        return index.commit
    if rev:
        return rev
    if index.root.parent.name == "snapshots" and _HEX40.match(index.root.name):
        return index.root.name
    return None


def _model_refs(data: dict) -> Iterable[Tuple[dict, str]]:
    """(container, key) of every model reference in a recipe's data."""
    for m in data.get("models") or []:
        if isinstance(m, dict) and "model" in m:
            yield m, "model"
    for s in data.get("slices") or []:
        for src in (s or {}).get("sources") or []:
            if isinstance(src, dict) and "model" in src:
                yield src, "model"
    for mod in (data.get("modules") or {}).values():
        for m in (mod or {}).get("models") or []:
            if isinstance(m, dict) and "model" in m:
                yield m, "model"
        for s in (mod or {}).get("slices") or []:
            for src in (s or {}).get("sources") or []:
                if isinstance(src, dict) and "model" in src:
                    yield src, "model"


def _ref_str(value) -> str:
    from mergekit.common import ModelReference

    return str(ModelReference.model_validate(value))


def rewrite_models(recipe: Recipe, mapping: Dict[str, str], *, target: Optional[str] = None) -> dict:
    """A copy of the recipe's data with model references replaced (by mergekit's parse)."""
    import copy

    data = copy.deepcopy(recipe.data)
    for container, key in _model_refs(data):
        ref = _ref_str(container[key])
        if ref in mapping:
            container[key] = mapping[ref]
    if target is not None:
        data["base_model"] = target
    return data


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def render_organ_recipe(recipe: Recipe, mapping: Dict[str, str], header: Sequence[str]) -> str:
    data = rewrite_models(recipe, mapping)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    return "".join(f"# {one_line(h)}\n" for h in header) + body


@dataclass
class ExtractResult:
    organ_dir: Path
    manifest: OrganManifest
    report: CheckReport


def extract_organ(
    recipe_path: os.PathLike | str,
    organ_dir: os.PathLike | str,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> ExtractResult:
    """Write the organ of ``recipe_path`` into ``organ_dir`` (whole or not at all)."""
    recipe = load_recipe(recipe_path)
    report = run_check(recipe, allow_pickle=allow_pickle)
    if not report.ok:
        raise TransplantError(
            f"{recipe_path} failed the pre-flight check; no organ was written:\n  " + "\n  ".join(report.errors)
        )
    out = Path(organ_dir)
    _ensure_free(out, overwrite)
    refuse_clobbering(out, [recipe.target, *recipe.donors])
    if "@" in str(out) or "+" in str(out):
        raise TransplantError(
            f"organ folder {out}: mergekit reads '@' as a revision and '+' as a LoRA in model paths; "
            "choose a path without them"
        )

    target = read_index(recipe.target, allow_pickle=allow_pickle, remote=True)
    donors = recipe.donors
    single = len(donors) == 1
    folders = {d: "." if single else f"donor-{i}" for i, d in enumerate(donors, 1)}
    recipe_refs = {d: str(out) if single else str(out / folders[d]) for d in donors}

    plans: List[Tuple[str, ModelIndex, List[TensorInfo]]] = []
    for donor in donors:
        index = read_index(donor, allow_pickle=allow_pickle, remote=True)
        names: List[str] = []
        for row in report.rows:
            if row.donor == donor and row.donor_tensor not in names:
                names.append(row.donor_tensor)
        missing = [n for n in names if n not in index.tensors]
        if missing:
            raise TransplantError(
                f"donor {donor}: tensor {missing[0]!r} is not in a safetensors file; organs are cut "
                "from safetensors checkpoints only (convert the donor first)"
            )
        plans.append((donor, index, [index.tensors[n] for n in names]))

    use_tokenizer = bool(recipe.data.get("tokenizer_source") or recipe.data.get("tokenizer"))
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(i.nbytes for _, _, entries in plans for i in entries)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="organ")
    entries_out: List[OrganDonor] = []
    try:
        with atomic.replacing_dir(out, overwrite=overwrite) as tmp:
            for donor, index, entries in plans:
                folder = tmp if folders[donor] == "." else tmp / folders[donor]
                folder.mkdir(parents=True, exist_ok=True)
                side = DONOR_SIDE_FILES + (TOKENIZER_FILES if use_tokenizer else ())
                for name in side:
                    src = index.root / name
                    if src.is_file():
                        (folder / name).write_bytes(src.read_bytes())
                hashes = write_tensor_folder(folder, entries, max_shard_bytes=max_shard_bytes, progress=bar)
                entries_out.append(OrganDonor(
                    ref=donor, revision=_pinned_revision(donor, index), folder=folders[donor],
                    recipe_ref=recipe_refs[donor], architecture=index.architecture,
                    config_sha256=sha256_file(folder / "config.json"), fingerprint=index.fingerprint(),
                    donor_parameters=index.num_parameters,
                    tensors=[OrganTensor(i.name, i.shape, i.dtype, hashes[i.name], i.nbytes) for i in entries],
                ))
            manifest = OrganManifest(
                target_ref=recipe.target, target_architecture=target.architecture,
                target_fingerprint=target.fingerprint(), target_parameters=target.num_parameters,
                donors=entries_out, recipe=recipe.source,
            )
            (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
            header = [
                f"Organ recipe written by mergekit-transplant {__version__} from {recipe_path}.",
                "Donor tensors are read from the organ; paths resolve from the current folder, like any",
                "mergekit recipe. Elsewhere: mergekit-transplant organ apply ORGAN_DIR OUT --target T",
            ]
            (tmp / RECIPE).write_text(render_organ_recipe(recipe, recipe_refs, header), encoding="utf-8")
    finally:
        if bar is not None:
            bar.close()
    return ExtractResult(organ_dir=out, manifest=manifest, report=report)
