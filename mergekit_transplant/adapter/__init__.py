"""Every touch of mergekit's internals, in one place: when mergekit changes, look here.

mergekit reads no entry points and has no hook API, so the plugin patches a few
of its functions. Each patch is one module:

- ``registration``: adds ``merge_method: transplant`` to mergekit's registry,
  and the planner hook on ``MergePlanner.plan_tensor`` that drops donors at
  strength 0 from a tensor's reads (``per_input_parameters`` resolves
  strengths with mergekit's own resolver);
- ``read_hints``: ``LazyTensorLoader.get_tensor`` and
  ``ShardedTensorIndex.from_file`` prefetch exactly the bytes mergekit will
  read (no read-around);
- ``download_plan``: ``run_merge`` and ``ModelReference.local_path`` download
  only the donor tensors a transplant reads;
- ``planning``: ``StrengthRecorder``, a ``MergePlanner`` subclass that records
  what the merge would read (``check``'s plan);
- ``loader_cache``: resets and saves ``LoaderCache``, mergekit's process-wide
  singleton;
- ``card_hook``: ``generate_card`` returns the plugin's card for transplants.

``policy`` holds the one fallback policy (fall back to mergekit's own
behaviour, one DEBUG line) and ``MERGEKIT_TRANSPLANT_READ_ALL``.
tests/test_mergekit_assumptions.py pins what each patch assumes. Importing
this package imports nothing from mergekit; ``register`` does, on demand.
"""

from __future__ import annotations


def register() -> None:
    """Register the method and install the read and download hooks (each idempotent)."""
    from mergekit_transplant.adapter.download_plan import install_download_hook
    from mergekit_transplant.adapter.registration import install_planner_hook, register_method

    register_method()
    install_planner_hook()
    install_download_hook()


__all__ = ["register"]
