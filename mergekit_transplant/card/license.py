"""The target's license, for the merge's card: inherited when the target states one, never invented.

A transplant merge is the target with a few donor tensors, so it carries the
target's license (donor licenses may add terms: the card links every parent
in ``base_model`` for that reason). The license is read from the target's
card front matter (``license``, and ``license_name``/``license_link`` for
``other``), or else from a ``license`` key in its ``config.json``. A Hub
target's README is fetched (or taken from the cache); when neither states a
license, or the Hub cannot be reached, the card gets none and says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

LICENSE_KEYS = ("license", "license_name", "license_link")


def _from_card(path: Optional[Path]) -> Dict[str, str]:
    from huggingface_hub.repocard import metadata_load

    if path is None or not path.is_file():
        return {}
    try:
        meta = metadata_load(path) or {}
    except Exception:  # a malformed card states nothing we can rely on
        return {}
    return {k: meta[k] for k in LICENSE_KEYS if isinstance(meta.get(k), str) and meta[k].strip()}


def _from_config(path: Optional[Path]) -> Dict[str, str]:
    if path is None or not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("license")
    except (ValueError, OSError, AttributeError):
        return {}
    return {"license": value} if isinstance(value, str) and value.strip() else {}


def _hub_file(repo_id: str, revision: Optional[str], name: str) -> Optional[Path]:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, name, revision=revision))
    except Exception:  # missing file, offline without it, unreachable: no license from it
        return None


def target_license(ref: str) -> Tuple[Dict[str, str], Optional[str]]:
    """({license, ...}, where it was stated) for the target ``ref``; ({}, None) when it states none."""
    from mergekit_transplant.checkpoint import looks_like_hub_id, split_revision

    path, rev = split_revision(ref)
    if os.path.isdir(path):
        card, config = Path(path) / "README.md", Path(path) / "config.json"
    elif looks_like_hub_id(ref):
        card, config = _hub_file(path, rev, "README.md"), None
    else:
        return {}, None
    found = _from_card(card)
    if found:
        return found, f"{ref}'s model card"
    if config is None and looks_like_hub_id(ref):
        config = _hub_file(path, rev, "config.json")
    found = _from_config(config)
    return (found, f"{ref}'s config.json") if found else ({}, None)


__all__ = ["target_license", "LICENSE_KEYS"]
