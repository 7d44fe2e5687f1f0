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

import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from mergekit_transplant import atomic
from mergekit_transplant.errors import TransplantError

#: small files copied beside the tensors (mergekit reads the config from the Hub id itself)
SIDE_FILES = ("config.json", "generation_config.json")


def cache_root(cache_dir: Optional[os.PathLike | str] = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE).parent / "mergekit-transplant" / "donors"


def sparse_donor(ref: str, names: Iterable[str], *, cache_dir: Optional[os.PathLike | str] = None) -> Path:
    """The folder holding (at least) the tensors ``names`` of Hub model ``ref``; fetched where missing."""
    from mergekit_transplant.checkpoint import read_index, split_revision
    from mergekit_transplant.organ.extract import write_tensor_folder

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
    if wanted <= set(held) and held:
        return folder
    entries = [held.get(n) or remote.tensors[n] for n in sorted(wanted | set(held))]
    entries.sort(key=lambda info: (info.hub is None, info.file, info.begin))
    with atomic.replacing_dir(folder, overwrite=True) as tmp:
        for name in SIDE_FILES:
            if (remote.root / name).is_file():
                shutil.copyfile(remote.root / name, tmp / name)
        write_tensor_folder(tmp, entries)
    return folder


__all__ = ["sparse_donor", "cache_root"]
