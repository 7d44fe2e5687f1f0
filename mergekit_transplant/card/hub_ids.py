"""Which Hub id stands for each model of a recipe: ``base_model`` metadata lists Hub ids only."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

from mergekit_transplant.checkpoint import (
    hub_id_problem,
    looks_like_hub_id,
    split_revision,
)
from mergekit_transplant.errors import TransplantError


def parse_hub_ids(pairs: Sequence[str]) -> Dict[str, str]:
    """``PATH=org/name`` pairs (from ``--hub-id``) into a validated mapping."""
    out = {}
    for pair in pairs:
        path, sep, repo = pair.rpartition("=")
        if not sep or not path or not repo:
            raise TransplantError(f"--hub-id {pair!r}: expected PATH=org/name")
        problem = hub_id_problem(split_revision(repo)[0])
        if problem:
            raise TransplantError(f"--hub-id {pair!r}: {problem}")
        out[path] = repo
    return out


def valid_repo_id(repo_id: str) -> bool:
    return hub_id_problem(repo_id) is None


def _same_path(a: str, b: str) -> bool:
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def hub_id_for(ref: str, hub_ids: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """The Hub id of a model reference and where it came from ("recipe", "--hub-id", "organ")."""
    path, _rev = split_revision(ref)
    for key, repo in hub_ids.items():
        if key == ref or _same_path(split_revision(key)[0], path):
            return split_revision(repo)[0], "--hub-id"
    if looks_like_hub_id(ref) and valid_repo_id(path):
        return path, "recipe"
    try:
        from mergekit_transplant.organ import find_organ_donor

        donor = find_organ_donor(path) if os.path.isdir(path) else None
    except Exception:  # a damaged organ must not break a card
        donor = None
    if donor is not None:
        d_path = split_revision(donor.ref)[0]
        for key, repo in hub_ids.items():
            if key == donor.ref or _same_path(split_revision(key)[0], d_path):
                return split_revision(repo)[0], "--hub-id"
        if not os.path.exists(d_path) and valid_repo_id(d_path):
            return d_path, "organ"
    return None, ""
