"""mergekit's process-wide ``LoaderCache``: forget its loaders, or keep its options across a nested check.

``LoaderCache`` is a singleton keyed by model path *as written*, so two merges
in one process whose recipes say ``models/donor`` from different working
directories would read the first folder again; and ``LoaderCache.setup`` (run
by every planning pass) overwrites the options of a merge in progress.
"""

from __future__ import annotations

import contextlib

#: the ``LoaderCache`` options a planning pass overwrites (mergekit 0.1.x)
OPTION_ATTRIBUTES = ("lora_cache_dir", "hf_cache_dir", "lazy_unpickle", "trust_remote_code", "lora_merge_dtype")


def fresh_loaders() -> None:
    """Forget mergekit's process-wide loaders, keyed by model path as written.

    Two merges in one process whose recipes say ``models/donor`` from different
    working directories would otherwise read the first folder again.
    """
    from mergekit.io.tasks import LoaderCache

    LoaderCache().loaders.clear()


@contextlib.contextmanager
def loader_options_kept():
    """Run a nested planning pass (``check`` inside mergekit's card step) and put the merge's options back."""
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    saved = {k: getattr(cache, k) for k in OPTION_ATTRIBUTES}
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(cache, k, v)
