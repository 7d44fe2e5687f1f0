"""Download only the donor shards a transplant reads, through mergekit's own download step.

mergekit fetches every input model before it plans anything: its loader cache
calls ``ModelReference.local_path``, which runs ``snapshot_download`` with
``*.safetensors`` for a Hub id. A 1% transplant from a 140 GB donor would
download 140 GB. The planner hook (``adapter.registration``) already keeps mergekit
from *reading* donor tensors at strength 0; this hook keeps it from
*downloading* anything but the tensors it transplants: less than "only the
shards holding a transplanted tensor", since a 5 GB shard may hold one 50 MB
tensor of the transplant.

Two wrappers, installed when ``mergekit.merge`` is imported:

- ``mergekit.merge.run_merge``: for a ``transplant`` merge, the recipe is
  planned first with mergekit's own planner (configs only, no weights, the
  same resolution ``check`` reports), and the donor shards that hold a tensor
  with nonzero strength are found in each Hub donor's shard index (one small
  JSON file). The plan holds for the duration of that merge.
- ``ModelReference.local_path``: for a Hub donor in the plan, a local folder
  holding exactly the tensors the merge reads (``sparse_donor``): their byte
  ranges are fetched with HTTP ``Range`` requests, or copied from shards
  already in the Hugging Face cache, and written verbatim as safetensors with
  their own index. mergekit indexes that folder like any model, and the
  planner hook never asks it for a tensor it does not hold, so the output is
  bit-identical. The folder is kept beside the Hugging Face cache, per commit,
  and grows when a later merge needs more of the donor.

The target, local folders, LoRA references and every non-transplant merge go
through mergekit untouched. Like the planner hook, this is an optimisation,
never a requirement: when mergekit's functions do not have the signatures it
was written for, or planning fails, it steps aside (``adapter.policy``: one
DEBUG line) and mergekit downloads everything. ``MERGEKIT_TRANSPLANT_READ_ALL=1`` turns it off.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from typing import Dict, List, Optional, Set

from mergekit_transplant.adapter.policy import read_all_requested, step_aside

LOG = logging.getLogger(__name__)  # the INFO line naming each sparse download

HOOK_MARK = "_transplant_download_hook"
#: parameters of ``ModelReference.local_path`` and the leading ones of ``run_merge`` (mergekit 0.1.x)
LOCAL_PATH_PARAMETERS = ("self", "cache_dir", "ignore_lora")
RUN_MERGE_PARAMETERS = ("merge_config", "out_path", "options")

_LOCAL = threading.local()


def _active() -> Optional[Dict[str, Set[str]]]:
    return getattr(_LOCAL, "plan", None)


def _params(function) -> Optional[List[str]]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def install_download_hook() -> bool:
    """Wrap ``run_merge`` and ``ModelReference.local_path`` (once); False when they are not the known ones."""
    if read_all_requested():
        return False
    try:
        from mergekit import common, merge

        local_path = common.ModelReference.local_path
        run_merge = merge.run_merge
    except (ImportError, AttributeError) as error:
        step_aside("transplant download planning", error)
        return False
    lp_params, rm_params = _params(local_path), _params(run_merge)
    if lp_params is None or tuple(lp_params) != LOCAL_PATH_PARAMETERS:
        step_aside("transplant download planning", f"ModelReference.local_path{lp_params} is not the signature "
                   "the download planner knows; mergekit will download every donor shard")
        return False
    if rm_params is None or tuple(rm_params[: len(RUN_MERGE_PARAMETERS)]) != RUN_MERGE_PARAMETERS:
        step_aside("transplant download planning", f"run_merge{rm_params} is not the signature "
                   "the download planner knows; mergekit will download every donor shard")
        return False

    if not getattr(run_merge, HOOK_MARK, False):

        @functools.wraps(run_merge)
        def planned_run_merge(merge_config, out_path, options, *args, **kwargs):
            plan = None
            if not read_all_requested():
                try:
                    plan = donor_tensors(merge_config, options)
                except Exception as error:  # never let the optimisation break a merge
                    step_aside("transplant download planning for a merge", repr(error))
            previous, _LOCAL.plan = _active(), plan
            try:
                return run_merge(merge_config, out_path, options, *args, **kwargs)
            finally:
                _LOCAL.plan = previous

        setattr(planned_run_merge, HOOK_MARK, True)
        merge.run_merge = planned_run_merge

    if not getattr(local_path, HOOK_MARK, False):

        @functools.wraps(local_path)
        def planned_local_path(self, cache_dir=None, ignore_lora=False):
            names = None
            plan = _active()
            if plan is not None and not read_all_requested() and (ignore_lora or self.lora is None):
                names = plan.get(str(self.model))
            if names is None or os.path.exists(self.model.path):
                return local_path(self, cache_dir, ignore_lora)
            return _download_donor(self.model, names, cache_dir)

        setattr(planned_local_path, HOOK_MARK, True)
        common.ModelReference.local_path = planned_local_path
    return True


def uninstall_download_hook() -> None:
    from mergekit import common, merge

    if getattr(merge.run_merge, HOOK_MARK, False):
        merge.run_merge = merge.run_merge.__wrapped__
    if getattr(common.ModelReference.local_path, HOOK_MARK, False):
        common.ModelReference.local_path = common.ModelReference.local_path.__wrapped__


def download_hook_installed() -> bool:
    from mergekit import common, merge

    return bool(getattr(merge.run_merge, HOOK_MARK, False)
                and getattr(common.ModelReference.local_path, HOOK_MARK, False))


def _download_donor(model_path, names: Set[str], cache_dir) -> str:
    from mergekit_transplant.checkpoint.sparse_donor import sparse_donor

    LOG.info("transplant: fetching %d tensor(s) of donor %s (not its whole shards)", len(names), model_path)
    return str(sparse_donor(str(model_path), names, cache_dir=cache_dir))


def _hub_model(model) -> bool:
    from mergekit_transplant.checkpoint import looks_like_hub_id

    return model.lora is None and not os.path.exists(model.model.path) and looks_like_hub_id(str(model.model))


def donor_tensors(merge_config, options) -> Optional[Dict[str, Set[str]]]:
    """{Hub donor (``path@revision``): the tensor names the merge will read from it}, for a transplant merge.

    None (download as mergekit does) for other merges, merges without Hub
    donors, merged tokenizers, or when the planner hook is not installed (then
    mergekit asks for every donor tensor, so every one must be there).
    """
    from mergekit_transplant.adapter.planning import plan_config
    from mergekit_transplant.adapter.registration import planner_hook_installed
    from mergekit_transplant.recipe import METHOD

    if merge_config.merge_method != METHOD or merge_config.base_model is None:
        return None
    base = merge_config.base_model
    donors = [m for m in merge_config.referenced_models() if m != base and _hub_model(m)]
    if not donors:
        return None
    if getattr(merge_config, "tokenizer_source", None) or getattr(merge_config, "tokenizer", None):
        return None  # a merged tokenizer reads every model's embeddings: nothing to narrow safely
    if not planner_hook_installed():
        step_aside("transplant download planning", "the read planner is not installed: every donor shard is downloaded")
        return None
    planned = plan_config(merge_config, trust_remote_code=bool(getattr(options, "trust_remote_code", False)))
    target_names = _target_tensor_names(str(base))
    plan: Dict[str, Set[str]] = {}
    for donor in donors:
        names: Set[str] = set()
        for pt in planned:
            for inp in pt.inputs:
                if inp.model != str(donor) or inp.strength is None:
                    continue
                # what the planner hook keeps: nonzero strength, or an optional tensor the target lacks
                lacking = pt.optional and not ({pt.name, inp.tensor, *pt.alternatives} & target_names)
                if inp.strength != 0.0 or lacking:
                    names.update((inp.tensor, *pt.alternatives))
        plan[str(donor.model)] = names
    return plan


def _target_tensor_names(ref: str) -> Set[str]:
    from mergekit_transplant.checkpoint import read_index

    return set(read_index(ref, remote=True).all_tensors())


__all__ = ["install_download_hook", "uninstall_download_hook", "download_hook_installed", "donor_tensors"]
