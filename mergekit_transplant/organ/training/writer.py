"""Writing a trained organ in the existing organ format, so verify / apply / check / card work unchanged.

The folder holds the block's tensors only (in the base model's own dtype), the
base model's ``config.json`` and ``generation_config.json``, ``organ.json``
(``kind: trained`` and the ``TrainRecord``) and ``recipe.yml``: strength 1 for
``model.layers.S.`` … ``model.layers.E.`` with the base model as ``base_model``,
which ``mergekit-yaml`` runs as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from mergekit_transplant import atomic
from mergekit_transplant._version import __version__
from mergekit_transplant.checkpoint import ModelIndex, read_header
from mergekit_transplant.checkpoint.dtypes import MODEL_DTYPE_OF_CODE
from mergekit_transplant.checkpoint.tensor_io import hash_range, sha256_file
from mergekit_transplant.organ.extract import _pinned_revision
from mergekit_transplant.organ.manifest import DONOR_SIDE_FILES, MANIFEST, RECIPE, OrganDonor, OrganManifest, OrganTensor
from mergekit_transplant.organ.training.blocks import Block
from mergekit_transplant.organ.training.record import TrainRecord
from mergekit_transplant.recipe import Selection, render_recipe

#: safetensors dtype names -> torch dtype names
_DTYPES = MODEL_DTYPE_OF_CODE


def organ_recipe(base_ref: str, organ_ref: str, block: Block, record: TrainRecord) -> str:
    corpus = record.corpus
    header = [
        f"Trained organ written by mergekit-transplant {__version__} organ train:",
        f"  {block.describe()} of {base_ref}, trained on {corpus.get('path')} "
        f"(sha256 {corpus.get('sha256')}, {corpus.get('tokens')} tokens) for {record.steps} steps.",
        "Paths resolve from the current folder, like any mergekit recipe. Elsewhere, or into another model:",
        "  mergekit-transplant organ apply ORGAN_DIR OUT [--target T] [--at S]",
    ]
    return render_recipe(base_ref, [Selection(f, organ_ref, 1.0) for f in block.filters], header=header)


def write_trained_organ(out: Path, *, index: ModelIndex, base_ref: str, block: Block,
                        tensors: Dict[str, "torch.Tensor"], record: TrainRecord,  # noqa: F821
                        overwrite: bool) -> OrganManifest:
    """Write the organ folder whole or not at all; returns its manifest."""
    import torch
    from safetensors.torch import save_file

    stored = {}
    for name, value in sorted(tensors.items()):
        dtype = getattr(torch, _DTYPES.get(index.tensors[name].dtype, "float32"))
        stored[name] = value.detach().to("cpu", dtype).contiguous()
    with atomic.replacing_dir(out, overwrite=overwrite) as tmp:
        for side in DONOR_SIDE_FILES:
            src = index.root / side
            if src.is_file():
                (tmp / side).write_bytes(src.read_bytes())
        save_file(stored, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        infos = read_header(tmp / "model.safetensors")
        donor = OrganDonor(
            ref=base_ref, revision=_pinned_revision(base_ref, index), folder=".", recipe_ref=str(out),
            architecture=index.architecture, config_sha256=sha256_file(tmp / "config.json"),
            fingerprint=index.fingerprint(), donor_parameters=index.num_parameters,
            tensors=[OrganTensor(i.name, i.shape, i.dtype, hash_range(i), i.nbytes)
                     for i in sorted(infos.values(), key=lambda i: i.begin)],
        )
        recipe = organ_recipe(base_ref, str(out), block, record)
        manifest = OrganManifest(
            target_ref=base_ref, target_architecture=index.architecture, target_fingerprint=index.fingerprint(),
            target_parameters=index.num_parameters, donors=[donor], recipe=recipe, kind="trained",
            training=record.to_json(),
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / RECIPE).write_text(recipe, encoding="utf-8")
    return manifest
