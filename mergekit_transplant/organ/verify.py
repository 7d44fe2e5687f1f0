"""Verifying an organ: every tensor's bytes against the manifest's sha256, and the target it was cut for."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from mergekit_transplant.checkpoint import (
    TensorInfo,
    read_header,
    read_index,
    split_revision,
    weight_files,
)
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.checkpoint.tensor_io import hash_range, sha256_file
from mergekit_transplant.organ.manifest import (
    MANIFEST,
    RECIPE,
    OrganDonor,
    OrganManifest,
    find_organ_donor,
    read_manifest,
)
from mergekit_transplant.recipe import Recipe


@dataclass
class VerifyReport:
    organ_dir: Path
    manifest: Optional[OrganManifest] = None
    target: Optional[str] = None
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    checked_tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            raise TransplantError(
                f"organ {self.organ_dir} failed verification:\n  " + "\n  ".join(self.errors)
            )


def _verify_donor(organ_dir: Path, donor: OrganDonor, report: VerifyReport) -> None:
    folder = organ_dir if donor.folder == "." else organ_dir / donor.folder
    where = f"{organ_dir}" if donor.folder == "." else f"{organ_dir}/{donor.folder}"
    config = folder / "config.json"
    if not config.is_file():
        report.errors.append(f"{where}: config.json is missing")
        return
    if sha256_file(config) != donor.config_sha256:
        report.errors.append(f"{where}: config.json was modified (sha256 differs from the manifest)")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
        arch = str(archs[0])
    except (ValueError, UnicodeDecodeError, AttributeError, IndexError, TypeError):
        report.errors.append(f"{where}: config.json is malformed")
        return
    if arch != donor.architecture:
        report.errors.append(f"{where}: config.json says {arch}, the manifest says {donor.architecture}")
    try:
        files = weight_files(folder)
        found: Dict[str, TensorInfo] = {}
        for file in files:
            found.update(read_header(file))
    except TransplantError as error:
        report.errors.append(str(error))
        return
    listed = {t.name: t for t in donor.tensors}
    extra = sorted(set(found) - set(listed))
    if extra:
        report.errors.append(
            f"{where}: holds {len(extra)} tensor(s) not listed in the manifest, e.g. {extra[0]!r}"
        )
    for t in donor.tensors:
        info = found.get(t.name)
        if info is None:
            report.errors.append(f"{where}: tensor {t.name!r} is missing")
            continue
        if tuple(info.shape) != tuple(t.shape) or info.dtype != t.dtype:
            report.errors.append(
                f"{where}: tensor {t.name!r} is {info.dtype}{list(info.shape)}, "
                f"the manifest says {t.dtype}{list(t.shape)}"
            )
            continue
        if hash_range(info) != t.sha256:
            report.errors.append(f"{where}: tensor {t.name!r} was modified (sha256 differs from the manifest)")
            continue
        report.checked_tensors += 1


def _verify_target(manifest: OrganManifest, target: str, report: VerifyReport) -> None:
    try:
        index = read_index(target, remote=True)
    except TransplantError as error:
        report.errors.append(f"target: {error}")
        return
    if index.architecture != manifest.target_architecture:
        report.errors.append(
            f"target {target} is {index.architecture}; this organ was made for "
            f"{manifest.target_architecture} ({manifest.target_ref})"
        )
        return
    for donor in manifest.donors:
        if donor.architecture != index.architecture:
            report.errors.append(
                f"donor {donor.ref} is {donor.architecture}, target {target} is {index.architecture}"
            )
        for t in donor.tensors:
            info = index.tensors.get(t.name)
            if info is None:
                report.errors.append(f"target {target} has no tensor {t.name!r} for the organ to replace")
            elif tuple(info.shape) != tuple(t.shape):
                report.errors.append(
                    f"shape mismatch for {t.name}: target {target} {list(info.shape)}, organ {list(t.shape)}"
                )
    fp = index.fingerprint()
    expected = manifest.target_fingerprint
    if expected.get("tensor_index_sha256") and fp["tensor_index_sha256"] != expected["tensor_index_sha256"]:
        report.warnings.append(
            f"target {target}'s tensor layout (names, shapes or dtypes) differs from {manifest.target_ref}, "
            "the model this organ was analysed against"
        )
    elif expected.get("config_sha256") and fp["config_sha256"] != expected["config_sha256"]:
        report.warnings.append(
            f"target {target}'s config.json differs from that of {manifest.target_ref}, "
            "the model this organ was analysed against"
        )


def verify_organ(organ_dir: os.PathLike | str, *, target: Optional[str] = None) -> VerifyReport:
    """Check every file against the manifest (hashes, shapes, dtypes) and, given a target, the fit.

    Without ``target`` the manifest's target is checked when it is a local folder
    that exists; a Hub id is never downloaded for this.
    """
    organ_dir = Path(organ_dir)
    report = VerifyReport(organ_dir=organ_dir)
    manifest = read_manifest(organ_dir)
    report.manifest = manifest
    for donor in manifest.donors:
        _verify_donor(organ_dir, donor, report)
    if not (organ_dir / RECIPE).is_file():
        report.warnings.append(f"{organ_dir}: {RECIPE} is missing (organ apply rebuilds it from the manifest)")
    if target is None and Path(split_revision(manifest.target_ref)[0]).is_dir():
        target = manifest.target_ref
    if target is not None:
        report.target = target
        _verify_target(manifest, target, report)
    return report


def verify_recipe_organs(recipe: Recipe) -> List[VerifyReport]:
    """Verify every organ a recipe reads from (integrity and fit to its target); raise on error."""
    seen, reports = set(), []
    for ref in [recipe.target, *recipe.donors]:
        path = Path(split_revision(ref)[0])
        for root in (path, path.parent):
            if (root / MANIFEST).is_file() and root.resolve() not in seen and find_organ_donor(path):
                seen.add(root.resolve())
                rep = verify_organ(root, target=recipe.target)
                rep.raise_for_errors()
                reports.append(rep)
    if reports and _reads_everything():
        raise TransplantError(
            "this recipe reads from an organ, which holds only the transplanted tensors; "
            "MERGEKIT_TRANSPLANT_READ_ALL makes mergekit read every donor tensor, so unset it"
        )
    return reports


def _reads_everything() -> bool:
    """Whether the planner hook that skips zero-strength donor reads is switched off."""
    from mergekit_transplant.adapter.policy import read_all_requested

    return read_all_requested()
