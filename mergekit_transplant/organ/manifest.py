"""The organ manifest (``organ.json``): what an organ holds and what it was cut from, checked on read."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from mergekit_transplant._version import __version__
from mergekit_transplant.checkpoint import (
    read_json_object,
    split_revision,
)
from mergekit_transplant import versioned
from mergekit_transplant.errors import TransplantError

MANIFEST = "organ.json"
RECIPE = "recipe.yml"
FORMAT = "mergekit-transplant-organ"
FORMAT_VERSION = 1
#: small donor files copied into the organ so that mergekit and transformers can read it
DONOR_SIDE_FILES = ("config.json", "generation_config.json")
#: copied as well when the recipe builds a tokenizer from its models
TOKENIZER_FILES = (
    "tokenizer_config.json", "tokenizer.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja",
)
_DONOR_FOLDER = re.compile(r"^donor-[1-9][0-9]{0,3}$")
#: how an organ was made: cut from a donor by ``organ extract``, or trained by ``organ train``
KINDS = ("extracted", "trained")


@dataclass(frozen=True)
class OrganTensor:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    sha256: str
    nbytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "sha256": self.sha256, "nbytes": self.nbytes}


@dataclass
class OrganDonor:
    """One donor's share: which model it came from and which tensors it holds."""

    ref: str  # the donor as the source recipe named it
    revision: Optional[str]  # pinned commit when known
    folder: str  # "." or "donor-N", relative to the organ folder
    recipe_ref: str  # how ORGAN_DIR/recipe.yml names this folder
    architecture: str
    config_sha256: str
    fingerprint: dict
    donor_parameters: int
    tensors: List[OrganTensor] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        n = 0
        for t in self.tensors:
            k = 1
            for d in t.shape:
                k *= d
            n += k
        return n

    def to_json(self) -> dict:
        return {
            "ref": self.ref, "revision": self.revision, "folder": self.folder,
            "recipe_ref": self.recipe_ref, "architecture": self.architecture,
            "config_sha256": self.config_sha256, "fingerprint": self.fingerprint,
            "donor_parameters": self.donor_parameters, "parameters": self.parameters,
            "tensors": [t.to_json() for t in self.tensors],
        }


@dataclass
class OrganManifest:
    target_ref: str
    target_architecture: str
    target_fingerprint: dict
    target_parameters: int
    donors: List[OrganDonor]
    recipe: str  # the source recipe, verbatim
    kind: str = "extracted"
    #: ``organ train``'s record (``organ.training.record.TrainRecord.to_json()``); None for extracted organs
    training: Optional[dict] = None

    @property
    def parameters(self) -> int:
        return sum(d.parameters for d in self.donors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for d in self.donors for t in d.tensors)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"mergekit-transplant {__version__}",
            "target": {
                "ref": self.target_ref, "architecture": self.target_architecture,
                "fingerprint": self.target_fingerprint, "parameters": self.target_parameters,
            },
            "donors": [d.to_json() for d in self.donors],
            "parameters": self.parameters,
            "recipe": self.recipe,
            "kind": self.kind,
            **({"training": self.training} if self.training is not None else {}),
        }

    @classmethod
    def from_json(cls, data, where: str) -> "OrganManifest":
        """Parse an untrusted manifest; every field is type-checked."""

        def need(obj, key, kind, ctx):
            value = obj.get(key) if isinstance(obj, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise TransplantError(f"{where}: manifest field {ctx}{key} is missing or malformed")
            return value

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TransplantError(f"{where}: not a mergekit-transplant organ manifest")
        versioned.schema_of(data, (FORMAT_VERSION,), where, "organ format", key="format_version", missing=None)
        target = need(data, "target", dict, "")
        donors = []
        for i, d in enumerate(need(data, "donors", list, "")):
            ctx = f"donors[{i}]."
            folder = need(d, "folder", str, ctx)
            if folder != "." and not _DONOR_FOLDER.match(folder):
                raise TransplantError(f"{where}: manifest field {ctx}folder {folder!r} is not allowed")
            tensors = []
            for j, t in enumerate(need(d, "tensors", list, ctx)):
                tctx = f"{ctx}tensors[{j}]."
                shape = need(t, "shape", list, tctx)
                if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape):
                    raise TransplantError(f"{where}: manifest field {tctx}shape is malformed")
                tensors.append(OrganTensor(
                    name=need(t, "name", str, tctx), shape=tuple(shape), dtype=need(t, "dtype", str, tctx),
                    sha256=need(t, "sha256", str, tctx), nbytes=need(t, "nbytes", int, tctx),
                ))
            revision = d.get("revision")
            donors.append(OrganDonor(
                ref=need(d, "ref", str, ctx), revision=revision if isinstance(revision, str) else None,
                folder=folder, recipe_ref=need(d, "recipe_ref", str, ctx),
                architecture=need(d, "architecture", str, ctx),
                config_sha256=need(d, "config_sha256", str, ctx),
                fingerprint=d.get("fingerprint") if isinstance(d.get("fingerprint"), dict) else {},
                donor_parameters=d.get("donor_parameters") if isinstance(d.get("donor_parameters"), int) else 0,
                tensors=tensors,
            ))
        if not donors:
            raise TransplantError(f"{where}: the manifest lists no donors")
        kind = data.get("kind", "extracted")  # organs written before organ train have no kind
        if kind not in KINDS:
            raise TransplantError(f"{where}: manifest field kind {kind!r} is not one of {', '.join(KINDS)}")
        training = data.get("training")
        if kind == "trained" and not isinstance(training, dict):
            raise TransplantError(f"{where}: manifest field training is missing or malformed")
        folders = [d.folder for d in donors]
        if len(set(folders)) != len(folders) or ("." in folders and len(folders) > 1):
            raise TransplantError(f"{where}: the manifest's donor folders overlap")
        return cls(
            target_ref=need(target, "ref", str, "target."),
            target_architecture=need(target, "architecture", str, "target."),
            target_fingerprint=target.get("fingerprint") if isinstance(target.get("fingerprint"), dict) else {},
            target_parameters=target.get("parameters") if isinstance(target.get("parameters"), int) else 0,
            donors=donors,
            recipe=need(data, "recipe", str, ""),
            kind=kind,
            training=training if kind == "trained" else None,
        )


def read_manifest(organ_dir: os.PathLike | str) -> OrganManifest:
    organ_dir = Path(organ_dir)
    file = organ_dir / MANIFEST
    if not organ_dir.is_dir():
        raise TransplantError(f"organ {organ_dir}: no such folder")
    data = read_json_object(file, "organ manifest", missing=f"{organ_dir}: not an organ (no {MANIFEST})")
    return OrganManifest.from_json(data, str(file))


def find_organ(model_dir: os.PathLike | str) -> Optional[Tuple[OrganManifest, OrganDonor]]:
    """If ``model_dir`` is (a donor folder of) an organ, its manifest and the donor it stands for."""
    path = Path(split_revision(str(model_dir))[0])
    for root, folder in ((path, "."), (path.parent, path.name)):
        if not (root / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(root)
        except TransplantError:
            return None
        for donor in manifest.donors:
            if donor.folder == folder:
                return manifest, donor
    return None


def find_organ_donor(model_dir: os.PathLike | str) -> Optional[OrganDonor]:
    """If ``model_dir`` is (a donor folder of) an organ, the donor it stands for."""
    found = find_organ(model_dir)
    return found[1] if found else None
