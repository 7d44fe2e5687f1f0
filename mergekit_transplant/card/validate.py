"""Checks a card against what the Hub rejects or what would make it misleading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from mergekit_transplant.card.content import TAGS
from mergekit_transplant.card.hub_ids import valid_repo_id


def validate_card(path_or_text: os.PathLike | str, *, require_base_model: bool = False) -> List[str]:
    """Problems the Hub would reject or that make the card misleading; [] when valid.

    Offline: parses with ``huggingface_hub.ModelCard`` (metadata must be a
    mapping ``ModelCardData`` accepts), checks ``base_model`` entries are valid
    repo ids, ``base_model_relation`` is one the Hub knows and comes with a
    ``base_model``, and that the tags and library are set.
    """
    from huggingface_hub import ModelCard

    text = Path(path_or_text).read_text(encoding="utf-8") if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and os.path.isfile(path_or_text)
    ) else str(path_or_text)
    problems = []
    if not text.startswith("---"):
        problems.append("the card has no YAML metadata block at the top")
    try:
        card = ModelCard(text)
    except Exception as error:
        return problems + [f"the card's metadata does not parse: {error}"]
    data = card.data.to_dict()
    base = data.get("base_model")
    bases = [base] if isinstance(base, str) else base if isinstance(base, list) else []
    if base is not None and not isinstance(base, (str, list)):
        problems.append("base_model must be a Hub id or a list of them")
    for b in bases:
        if not isinstance(b, str) or not valid_repo_id(b):
            problems.append(f"base_model entry {b!r} is not a Hub model id (org/name)")
    relation = data.get("base_model_relation")
    if relation is not None:
        if relation not in ("adapter", "merge", "quantized", "finetune"):
            problems.append(f"base_model_relation {relation!r} is not one the Hub knows")
        if not bases:
            problems.append("base_model_relation is set without a base_model")
    if require_base_model and not bases:
        problems.append("base_model is empty: map local paths to Hub ids with --hub-id")
    if data.get("library_name") != "transformers":
        problems.append("library_name should be transformers")
    tags = data.get("tags") or []
    missing = [t for t in TAGS if t not in tags]
    if missing:
        problems.append(f"tags lack {', '.join(missing)}")
    if not card.text.strip():
        problems.append("the card has no text")
    return problems
