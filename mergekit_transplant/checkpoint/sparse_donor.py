"""A local folder holding only the tensors a transplant reads from a Hub donor.

Built from the donor's remote safetensors headers (``checkpoint.read_index``
with ``remote``): each wanted tensor's bytes are fetched with one HTTP
``Range`` request, or copied from a shard already in the Hugging Face cache,
and written verbatim into safetensors files with their own shard index, the
same writer organs use. mergekit reads the folder as a model; only the
tensors are there that the planner hook lets it ask for.

One folder per donor commit, beside the Hugging Face hub cache
(``<cache>/../mergekit-transplant/donors/<org>--<name>/<commit>``). A merge
that needs tensors the folder lacks rebuilds it atomically with the union,
copying what it already holds from disk: repeated merges and sweeps of the
same donor fetch each tensor once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from mergekit_transplant import atomic
from mergekit_transplant.errors import TransplantError

#: small files copied beside the tensors (mergekit reads the config from the Hub id itself)
SIDE_FILES = ("config.json", "generation_config.json")
#: every tensor name merges asked this folder for (aliases the donor lacks included): what an offline merge may reuse
ASKED = "transplant_asked.json"


def cache_root(cache_dir: Optional[os.PathLike | str] = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE).parent / "mergekit-transplant" / "donors"


def sparse_donor(ref: str, names: Iterable[str], *, cache_dir: Optional[os.PathLike | str] = None) -> Path:
    """The folder holding (at least) the tensors ``names`` of Hub model ``ref``; fetched where missing."""
    from mergekit_transplant.checkpoint import read_index, split_revision
    from mergekit_transplant.checkpoint.tensor_io import write_tensor_folder

    cached = _offline_folder(ref, names, cache_dir)
    if cached is not None:
        return cached
    remote = read_index(ref, remote=True)
    if remote.commit is None:  # offline, or already a local snapshot: mergekit can read that folder directly
        return remote.root
    repo_id, _rev = split_revision(ref)
    folder = cache_root(cache_dir) / repo_id.replace("/", "--") / remote.commit
    wanted = {n for n in names if n in remote.tensors}
    held = {}
    if (folder / "config.json").is_file():
        try:
            held = read_index(str(folder)).tensors
        except TransplantError:
            held = {}  # a damaged cache folder is rebuilt
    asked = set(_asked(folder)) | set(names)
    if wanted <= set(held) and held and asked <= set(_asked(folder)):
        return folder
    entries = [held.get(n) or remote.tensors[n] for n in sorted(wanted | set(held))]
    entries.sort(key=lambda info: (info.hub is None, info.file, info.begin))
    with atomic.replacing_dir(folder, overwrite=True) as tmp:
        for name in SIDE_FILES:
            if (remote.root / name).is_file():
                shutil.copyfile(remote.root / name, tmp / name)
        write_tensor_folder(tmp, entries)
        (tmp / ASKED).write_text(json.dumps(sorted(asked)) + "\n", encoding="utf-8")
    return folder


def _asked(folder: Path) -> list:
    try:
        names = json.loads((folder / ASKED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _offline_folder(ref: str, names: Iterable[str], cache_dir) -> Optional[Path]:
    """Offline: the folder an earlier merge left for the commit ``ref`` resolves to in the local cache, if complete."""
    import re

    from huggingface_hub import constants

    from mergekit_transplant.checkpoint import hub_offline, read_index, split_revision

    if not hub_offline():
        return None
    repo_id, rev = split_revision(ref)
    commit = rev if rev and re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None:
        refs = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (rev or "main")
        commit = refs.read_text().strip() if refs.is_file() else None
    folder = cache_root(cache_dir) / repo_id.replace("/", "--") / commit if commit else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        held = read_index(str(folder)).tensors
    except TransplantError:
        return None
    return folder if set(names) <= set(held) | set(_asked(folder)) else None


__all__ = ["sparse_donor", "cache_root"]
