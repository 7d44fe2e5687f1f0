"""Organ files: only the donor tensors a recipe transplants, shippable without the donor.

After the NOT paper's portable donor checkpoints: an organ is a folder that
mergekit can load as a model (the donor's ``config.json`` plus safetensors
holding just the tensors with nonzero strength), a manifest ``organ.json``
(donor and revision, the target it was analysed against with its fingerprint,
each tensor's name, shape, dtype and sha256, the original recipe) and
``recipe.yml``, the same recipe reading the donor's tensors from the organ.
mergekit only reads donor tensors with nonzero strength (the planner hook in
``registration.py`` drops the rest), so the organ stands in for the donor and
the merge output is bit-identical.

Tensor bytes are copied verbatim, tensor by tensor, from the byte ranges in the
donor's safetensors headers (streamed in chunks, hashed on the way): no model
is ever loaded and no dtype conversion can creep in. Every file name written is
chosen here (``model.safetensors``, ``model-00001-of-00002.safetensors``,
``donor-2/``...); tensor names, model names and manifest fields never become
paths, so neither a recipe nor a manifest can make us write outside the
organ folder.

Layout: a single-donor organ is itself the model folder; a recipe with several
donors gets one sub-folder per donor (``donor-1/``, ``donor-2/``...) and the
manifest and ``recipe.yml`` at the top.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from mergekit_transplant import __version__, atomic
from mergekit_transplant.checkpoint import (
    ModelIndex,
    TensorInfo,
    read_header,
    read_index,
    read_json_object,
    split_revision,
    weight_files,
)
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.preflight import CheckReport, run_check
from mergekit_transplant.recipe import Recipe, load_recipe, parse_recipe

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
DEFAULT_SHARD_BYTES = 5_000_000_000
CHUNK_BYTES = 16 * 1024 * 1024
_DONOR_FOLDER = re.compile(r"^donor-[1-9][0-9]{0,3}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- manifest


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
        if data.get("format_version") != FORMAT_VERSION:
            raise TransplantError(
                f"{where}: organ format version {data.get('format_version')!r} is not supported "
                f"(this mergekit-transplant reads version {FORMAT_VERSION})"
            )
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
        )


def read_manifest(organ_dir: os.PathLike | str) -> OrganManifest:
    organ_dir = Path(organ_dir)
    file = organ_dir / MANIFEST
    if not organ_dir.is_dir():
        raise TransplantError(f"organ {organ_dir}: no such folder")
    data = read_json_object(file, "organ manifest", missing=f"{organ_dir}: not an organ (no {MANIFEST})")
    return OrganManifest.from_json(data, str(file))


def find_organ_donor(model_dir: os.PathLike | str) -> Optional[OrganDonor]:
    """If ``model_dir`` is (a donor folder of) an organ, the donor it stands for."""
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
                return donor
    return None


# --------------------------------------------------------------------------- extraction


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def _refuse_clobbering(out: Path, refs: Iterable[str]) -> None:
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
    if rev:
        return rev
    if index.root.parent.name == "snapshots" and _HEX40.match(index.root.name):
        return index.root.name
    return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _header_bytes(entries: Sequence[TensorInfo]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for info in entries:
        header[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def _write_safetensors(file: Path, entries: Sequence[TensorInfo], progress=None) -> Dict[str, str]:
    """Copy each tensor's bytes from its source file verbatim; return name -> sha256."""
    hashes = {}
    with open(file, "wb") as out:
        out.write(_header_bytes(entries))
        for info in entries:
            h = hashlib.sha256()
            for chunk in _range_chunks(info):
                h.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress.update(len(chunk))
            hashes[info.name] = h.hexdigest()
        out.flush()
        os.fsync(out.fileno())
    return hashes


def _shard(entries: Sequence[TensorInfo], max_bytes: int) -> List[List[TensorInfo]]:
    shards: List[List[TensorInfo]] = [[]]
    size = 0
    for info in entries:
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.nbytes
    return shards


def write_tensor_folder(folder: Path, entries: Sequence[TensorInfo], *, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                        progress=None) -> Dict[str, str]:
    """Write ``entries`` as ``model.safetensors`` (or HF-style shards plus index)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = _shard(entries, max_shard_bytes)
    if len(shards) == 1:
        return _write_safetensors(folder / "model.safetensors", shards[0], progress)
    hashes, weight_map = {}, {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        hashes.update(_write_safetensors(folder / name, shard, progress))
        weight_map.update({info.name: name for info in shard})
    index = {"metadata": {"total_size": sum(i.nbytes for i in entries)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return hashes


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def render_organ_recipe(recipe: Recipe, mapping: Dict[str, str], header: Sequence[str]) -> str:
    data = rewrite_models(recipe, mapping)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    return "".join(f"# {_one_line(h)}\n" for h in header) + body


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
    _refuse_clobbering(out, [recipe.target, *recipe.donors])
    if "@" in str(out) or "+" in str(out):
        raise TransplantError(
            f"organ folder {out}: mergekit reads '@' as a revision and '+' as a LoRA in model paths; "
            "choose a path without them"
        )

    target = read_index(recipe.target, allow_pickle=allow_pickle)
    donors = recipe.donors
    single = len(donors) == 1
    folders = {d: "." if single else f"donor-{i}" for i, d in enumerate(donors, 1)}
    recipe_refs = {d: str(out) if single else str(out / folders[d]) for d in donors}

    plans: List[Tuple[str, ModelIndex, List[TensorInfo]]] = []
    for donor in donors:
        index = read_index(donor, allow_pickle=allow_pickle)
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
                    config_sha256=_sha256_file(folder / "config.json"), fingerprint=index.fingerprint(),
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


# --------------------------------------------------------------------------- verification


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


def _range_chunks(info: TensorInfo):
    """A tensor's bytes from its file, in bounded chunks (never the whole tensor at once)."""
    with open(info.file, "rb") as fh:
        fh.seek(info.begin)
        left = info.nbytes
        while left:
            chunk = fh.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise TransplantError(f"{info.file}: tensor {info.name!r} is truncated")
            left -= len(chunk)
            yield chunk


def _hash_range(info: TensorInfo) -> str:
    h = hashlib.sha256()
    for chunk in _range_chunks(info):
        h.update(chunk)
    return h.hexdigest()


def _verify_donor(organ_dir: Path, donor: OrganDonor, report: VerifyReport) -> None:
    folder = organ_dir if donor.folder == "." else organ_dir / donor.folder
    where = f"{organ_dir}" if donor.folder == "." else f"{organ_dir}/{donor.folder}"
    config = folder / "config.json"
    if not config.is_file():
        report.errors.append(f"{where}: config.json is missing")
        return
    if _sha256_file(config) != donor.config_sha256:
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
        if _hash_range(info) != t.sha256:
            report.errors.append(f"{where}: tensor {t.name!r} was modified (sha256 differs from the manifest)")
            continue
        report.checked_tensors += 1


def _verify_target(manifest: OrganManifest, target: str, report: VerifyReport) -> None:
    try:
        index = read_index(target)
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
    from mergekit_transplant import registration

    check = getattr(registration, "read_all_requested", None)
    return bool(check and check())


# --------------------------------------------------------------------------- application


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
    header = f"# Organ {organ_dir.resolve()} applied to {_one_line(target)} by mergekit-transplant {__version__}\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000), manifest


def apply_organ(
    organ_dir: os.PathLike | str,
    out_path: os.PathLike | str,
    *,
    target: Optional[str] = None,
    options=None,
    overwrite: bool = False,
    write_card: bool = True,
) -> Tuple[VerifyReport, CheckReport]:
    """Verify the organ against ``target``, then merge it into ``out_path``."""
    from mergekit_transplant.merge import run_transplant

    manifest = read_manifest(organ_dir)
    target = target or manifest.target_ref
    verify = verify_organ(organ_dir, target=target)
    verify.raise_for_errors()
    text, _ = organ_recipe_for(organ_dir, target)
    _refuse_clobbering(Path(out_path), [target, str(organ_dir)])
    fd, name = tempfile.mkstemp(prefix="organ-recipe-", suffix=".yml")
    os.close(fd)
    try:
        Path(name).write_text(text, encoding="utf-8")
        report = run_transplant(name, out_path, options, overwrite=overwrite, write_card=write_card)
    finally:
        os.unlink(name)
    return verify, report


__all__ = [
    "OrganManifest", "OrganDonor", "OrganTensor", "ExtractResult", "VerifyReport",
    "extract_organ", "verify_organ", "verify_recipe_organs", "apply_organ", "organ_recipe_for",
    "read_manifest", "find_organ_donor", "write_tensor_folder", "rewrite_models",
]
