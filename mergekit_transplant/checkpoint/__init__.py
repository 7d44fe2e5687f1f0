"""What a model holds, read from safetensors headers only, never tensor data.

A safetensors file starts with an 8-byte little-endian header length and a
JSON header giving each tensor's dtype, shape and byte range. Reading just
that lets ``check``, ``organ`` and ``card`` work on 70B models in megabytes of
memory. Hub ids (``org/name@revision``) resolve through the local Hugging Face
cache when offline and through ``huggingface_hub`` when online.

The bottom layer of the package (docs/architecture.md): this module reads
headers and indexes; ``dtypes`` is the one dtype table, ``tensor_io`` reads
and writes single tensors by byte range (local files now, Hub ranges through
``hub_files``), ``environment`` decides offline mode and the device,
``sparse_donor`` builds a folder of just the tensors a merge reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mergekit_transplant.checkpoint.dtypes import BYTES_PER_CODE
from mergekit_transplant.checkpoint.environment import hub_offline
from mergekit_transplant.errors import TransplantError

#: bytes per element of each safetensors dtype (a view of ``dtypes.DTYPES``)
DTYPE_BYTES = BYTES_PER_CODE
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    file: str
    begin: int  # absolute byte offset of the data in ``file``
    end: int
    #: where the bytes are when ``file`` is on the Hub, not on this disk (a ``hub_files.HubFile``)
    hub: Optional[object] = field(default=None, compare=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class ModelIndex:
    """A model's config and tensor table, from a local folder."""

    ref: str
    root: Path
    config: dict
    tensors: Dict[str, TensorInfo] = field(default_factory=dict)
    #: tensors of pickle checkpoints (only with ``allow_pickle``): name, shape and
    #: dtype are real, ``begin``/``end`` are not byte offsets, so they are kept
    #: apart from ``tensors``, which byte-level readers (organ, streaming) use.
    pickled: Dict[str, TensorInfo] = field(default_factory=dict)
    #: the Hub commit the index was read at (Hub models only)
    commit: Optional[str] = None

    def all_tensors(self) -> Dict[str, TensorInfo]:
        """Safetensors and (allowed) pickle tensors together, for checks of names and shapes."""
        return {**self.pickled, **self.tensors}

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or [self.config.get("model_type", "?")]
        return str(archs[0])

    @property
    def vocab_size(self) -> Optional[int]:
        cfg = self.config.get("text_config", self.config)
        return cfg.get("vocab_size")

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.all_tensors().values())

    def fingerprint(self) -> dict:
        """Hashes that change when the config or any tensor's layout changes."""
        cfg = json.dumps(self.config, sort_keys=True).encode()
        table = json.dumps(
            sorted((t.name, list(t.shape), t.dtype) for t in self.tensors.values())
        ).encode()
        return {
            "config_sha256": hashlib.sha256(cfg).hexdigest(),
            "tensor_index_sha256": hashlib.sha256(table).hexdigest(),
            "revision": split_revision(self.ref)[1],
        }


MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json_object(path: os.PathLike | str, what: str, *, missing: Optional[str] = None) -> dict:
    """A small JSON file that must hold an object; every failure is one clear line.

    ``missing`` replaces the default "not found" message (e.g. "not an organ").
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise TransplantError(f"{what} {path} is implausibly large")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TransplantError(missing or f"{what} {path} not found") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise TransplantError(f"{what} {path}: malformed JSON ({error})") from None
    if not isinstance(data, dict):
        raise TransplantError(f"{what} {path}: expected a JSON object")
    return data


def hub_id_problem(repo_id: object) -> Optional[str]:
    """Why ``repo_id`` is not an ``org/name`` Hub model id, or None when it is one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError) as error:
        return f"{repo_id!r} is not a valid Hub id ({error})"
    if repo_id.count("/") != 1:
        return "a Hub model id looks like org/name"
    return None


def split_revision(ref: str) -> Tuple[str, Optional[str]]:
    if ref.count("@") > 1:
        raise TransplantError(f"invalid model reference {ref!r}: more than one '@'")
    path, _, rev = ref.partition("@")
    return path, rev or None


def looks_like_hub_id(ref: str) -> bool:
    path, _ = split_revision(ref)
    return (
        not os.path.exists(path)
        and not path.startswith((".", "/", "~"))
        and path.count("/") == 1
        and all(part and part.strip() == part for part in path.split("/"))
    )


def resolve_model_dir(ref: str, *, need_weights: bool = True) -> Path:
    """A local folder for ``ref``: the path itself, or the Hub cache snapshot.

    Online, a Hub id is fetched into the Hugging Face cache (configs, plus the
    safetensors files when ``need_weights``). Offline (``HF_HUB_OFFLINE``, or
    the Hub unreachable), only the cache is used and, when the files are not
    there, the error lists the files needed and the command that fetches them.
    """
    path, rev = split_revision(ref)
    if os.path.isdir(path):
        return Path(path)
    if not looks_like_hub_id(ref):
        raise TransplantError(f"model {ref!r}: no such folder")
    needed = ["config.json", "model.safetensors.index.json or model.safetensors"]
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors"] if need_weights else ["*.json"]
        local = snapshot_download(
            path, revision=rev, allow_patterns=patterns, local_files_only=hub_offline()
        )
        return Path(local)
    except Exception as error:  # offline, missing, gated, ...
        raise TransplantError(
            f"model {ref!r} is a Hub id that is not available here "
            f"({type(error).__name__}); it needs: {', '.join(needed)}"
            f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}. Download them first: "
            f"hf download {path}{' --revision ' + rev if rev else ''} --include '*.json' "
            "--include '*.safetensors' (or use a local folder)"
        ) from None


def read_header(file: Path) -> Dict[str, TensorInfo]:
    """Parse one safetensors header; raise a clear error for a damaged file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw_len)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise TransplantError(f"{file}: not a valid safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise TransplantError(f"{file}: not a valid safetensors file (header is not a table)")
    return parse_header(header, str(file), 8 + n, size, str(file))


def shard_names(index: Path) -> List[str]:
    """The shard files a ``model.safetensors.index.json`` names, checked to stay inside its folder.

    The check is lexical: in the Hugging Face cache every file is a symlink
    into ``blobs/``, so resolving links would put every shard "outside".
    """
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TransplantError(f"{index}: malformed safetensors index") from None
    for shard in names:
        norm = os.path.normpath(str(shard))
        if not isinstance(shard, str) or os.path.isabs(norm) or norm.startswith(".."):
            raise TransplantError(f"{index}: shard {shard!r} points outside the model folder")
    return names


def weight_files(root: Path, *, allow_pickle: bool = False) -> List[Path]:
    """The safetensors files of a model folder (via the index when sharded)."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        files = []
        for shard in shard_names(index):
            if not (root / shard).exists():
                raise TransplantError(f"{index}: shard {shard!r} is missing")
            files.append(Path(os.path.abspath(root / shard)))
        return files
    single = root / "model.safetensors"
    if single.exists():
        return [single]
    others = sorted(root.glob("*.safetensors"))
    if others:
        return others
    pickles = [p for p in sorted(root.iterdir()) if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        if not allow_pickle:
            raise TransplantError(
                f"{root}: only pickle checkpoints ({pickles[0].name}); pickle files can run "
                "arbitrary code when loaded. Convert them to safetensors, or pass "
                "--allow-pickle if you trust the source"
            )
        return pickles
    raise TransplantError(f"{root}: no model weights (*.safetensors) found")


def load_config(root: Path) -> dict:
    file = root / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except FileNotFoundError:
        raise TransplantError(f"{root}: no config.json (is this a model folder?)") from None
    except ValueError as error:
        raise TransplantError(f"{file}: malformed JSON ({error})") from None
    if not isinstance(cfg, dict):
        raise TransplantError(f"{file}: not a JSON object")
    return cfg


#: the small files of a Hub model fetched with its headers: configs, the shard index, tokenizer, card
HUB_SMALL_FILES = ["*.json", "tokenizer.model", "*.jinja", "README.md"]


def read_index(ref: str, *, allow_pickle: bool = False, remote: bool = False) -> ModelIndex:
    """Config plus every tensor's name, shape, dtype and byte range; no data read.

    With ``remote``, a Hub model's safetensors headers are read over HTTP
    (exact byte ranges, see ``hub_files``) and only its small files are
    downloaded; shards already in the local cache are read there, and headers
    read before come from the header cache. Offline, the same from the local
    cache alone. Without ``remote`` the model is resolved to a local folder.
    """
    path, _rev = split_revision(ref)
    if remote and not os.path.isdir(path) and looks_like_hub_id(ref):
        index = read_cached_hub_index(ref) if hub_offline() else read_hub_index(ref, allow_pickle=allow_pickle)
        if index is not None:
            return index
    root = resolve_model_dir(ref)
    index = ModelIndex(ref=ref, root=root, config=load_config(root))
    for file in weight_files(root, allow_pickle=allow_pickle):
        if file.suffix != ".safetensors":
            index.pickled.update(read_pickle_table(file))  # only reached with allow_pickle
            continue
        index.tensors.update(read_header(file))
    return index


def read_hub_index(ref: str, *, allow_pickle: bool = False) -> Optional[ModelIndex]:
    """A Hub model's index from its small files and remote headers; None for a pickle-only model.

    The revision is resolved to a commit once, so every header (and any later
    range read) comes from the same commit even if the branch moves meanwhile.
    """
    from mergekit_transplant.checkpoint.hub_files import model_files, small_files

    path, rev = split_revision(ref)
    commit, files = model_files(path, rev)
    root = Path(small_files(path, commit, HUB_SMALL_FILES, rev))
    if "model.safetensors.index.json" in files:
        shards = shard_names(root / "model.safetensors.index.json")
    elif "model.safetensors" in files:
        shards = ["model.safetensors"]
    else:
        shards = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if not shards:
        if allow_pickle and any(f.endswith(PICKLE_SUFFIXES) for f in files):
            return None  # pickle tables need the files: resolved locally by the caller
        raise TransplantError(f"model {ref}: no safetensors weights on the Hub (files: {', '.join(files[:6])})")
    missing = [s for s in shards if s not in files]
    if missing:
        raise TransplantError(f"model {ref}: the shard index names {missing[0]!r}, which is not in the repo")
    return _hub_index(ref, root, commit, shards, online=True)


def _hub_index(ref: str, root: Path, commit: str, shards: List[str], *, online: bool) -> Optional[ModelIndex]:
    """The index from each shard's local header, its cached remote header, or (online) a remote read."""
    from mergekit_transplant.checkpoint.hub_files import HubFile, cached_header, remote_header

    path, _rev = split_revision(ref)
    index = ModelIndex(ref=ref, root=root, config=load_config(root), commit=commit)
    for shard in shards:
        local = root / shard
        if local.is_file():  # already downloaded (by a merge, say): no network
            index.tensors.update(read_header(local))
            continue
        hub_file = HubFile(path, commit, shard)
        found = remote_header(hub_file) if online else cached_header(hub_file)
        if found is None:
            return None
        start, header = found
        index.tensors.update(parse_header(header, f"model {ref}: {shard}", start, None, str(hub_file), hub_file))
    return index


def read_cached_hub_index(ref: str) -> Optional[ModelIndex]:
    """Offline: a Hub model's index from the local cache (its small files, shards or headers read before)."""
    import re

    from huggingface_hub import constants

    path, rev = split_revision(ref)
    repo = Path(constants.HF_HUB_CACHE) / f"models--{path.replace('/', '--')}"
    commit = rev if rev and re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None and (repo / "refs" / (rev or "main")).is_file():
        commit = (repo / "refs" / (rev or "main")).read_text().strip()
    root = repo / "snapshots" / str(commit)
    if commit is None or not (root / "config.json").is_file():
        return None
    if (root / "model.safetensors.index.json").is_file():
        shards = shard_names(root / "model.safetensors.index.json")
    else:
        shards = ["model.safetensors"]
    return _hub_index(ref, root, commit, shards, online=False)


def parse_header(header: dict, where: str, data_start: int, size: Optional[int], file: str,
                 hub=None) -> Dict[str, TensorInfo]:
    """The tensor table of a parsed safetensors header (``size`` None: the file's size is not known)."""
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in meta["data_offsets"])
            dtype, shape = str(meta["dtype"]), tuple(int(d) for d in meta["shape"])
        except (KeyError, TypeError, ValueError):
            raise TransplantError(f"{where}: malformed header entry for tensor {name!r}") from None
        info = TensorInfo(name, shape, dtype, file, data_start + begin, data_start + end, hub)
        expected = DTYPE_BYTES.get(dtype, 0) * info.numel
        if (size is not None and info.end > size) or (expected and info.nbytes != expected) or begin > end:
            raise TransplantError(
                f"{where}: tensor {name!r} runs past the end of the file or has the "
                "wrong size (truncated or corrupted download?)"
            )
        out[name] = info
    return out


def read_pickle_table(file: Path) -> Dict[str, TensorInfo]:
    """Names, shapes and dtypes of a pickle checkpoint the user allowed, on the meta device.

    ``weights_only=True`` (torch's restricted unpickler) and ``map_location="meta"``:
    no code beyond tensor reconstruction runs and no tensor data is read.
    """
    import torch

    from safetensors.torch import _TYPES  # torch dtype -> safetensors dtype name

    names = {v: k for k, v in _TYPES.items()}
    try:
        state = torch.load(file, map_location="meta", weights_only=True)
    except Exception as error:
        raise TransplantError(f"{file}: cannot read this pickle checkpoint ({str(error)[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TransplantError(f"{file}: pickle checkpoint is not a tensor dictionary")
    out = {}
    for name, t in state.items():
        if isinstance(t, torch.Tensor):
            info = TensorInfo(str(name), tuple(t.shape), names.get(t.dtype, str(t.dtype)), str(file), 0, 0)
            out[str(name)] = info
    return out
