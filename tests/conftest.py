"""Shared fixtures: tiny models built once per session, in temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_mergekit_loaders():
    """mergekit caches loaders per process by model path as written; tests reuse
    relative paths such as ``models/donor`` for different folders."""
    from mergekit_transplant.adapter.loader_cache import fresh_loaders

    fresh_loaders()


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """``model_factory(name, arch, **kwargs)`` builds (once) and returns a model folder."""
    from mergekit_transplant.testing import make_model

    root = tmp_path_factory.mktemp("models")
    cache = {}

    def build(name: str, arch: str = "llama", **kwargs) -> Path:
        if name not in cache:
            cache[name] = make_model(root / name, arch, **kwargs)
        return cache[name]

    return build


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
