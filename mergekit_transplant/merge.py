"""The merge step's guards: a free output folder, finite donor tensors, an existing device.

``flows.run_transplant`` (the Python API behind ``mergekit-transplant merge``)
runs them between the pre-flight check and mergekit's ``run_merge``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.preflight import CheckReport


def ensure_output_free(out_path: os.PathLike | str, overwrite: bool) -> None:
    out = Path(out_path)
    if out.exists() and not out.is_dir():
        raise TransplantError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TransplantError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


def check_finite(report: CheckReport, *, allow_pickle: bool = False) -> None:
    """Refuse donor tensors with NaN/Inf that would be transplanted (reads only those)."""
    import torch
    from safetensors import safe_open

    from mergekit_transplant.checkpoint import read_index
    from mergekit_transplant.adapter.read_hints import prefetch_range

    indexes = dict(report.indexes)  # the check already read every donor's headers
    for row in report.rows:
        if row.donor not in indexes:
            indexes[row.donor] = read_index(row.donor, allow_pickle=allow_pickle, remote=True)
        info = indexes[row.donor].all_tensors()[row.donor_tensor]
        if info.hub is not None:  # fetched into the donor's sparse folder, which the merge then reuses
            from mergekit_transplant.checkpoint.sparse_donor import sparse_donor

            names = {r.donor_tensor for r in report.rows if r.donor == row.donor}
            indexes[row.donor] = read_index(str(sparse_donor(row.donor, names)))
            info = indexes[row.donor].all_tensors()[row.donor_tensor]
        if info.file.endswith(".safetensors"):
            prefetch_range(info.file, info.begin, info.end)  # exactly these bytes, no read-around
            with safe_open(info.file, "pt") as fh:
                tensor = fh.get_tensor(row.donor_tensor)
        else:  # a pickle checkpoint the user allowed; mmap reads only this tensor's pages
            tensor = _load_pickle(info.file)[row.donor_tensor]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TransplantError(
                f"donor {row.donor} tensor {row.donor_tensor} contains NaN or Inf values; "
                "refusing to transplant it (pass --allow-nonfinite to override)"
            )


def _load_pickle(file: str):
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        return torch.load(file, map_location="cpu", weights_only=True)


def check_device(options) -> None:
    """Name a missing GPU before the merge starts (mergekit fails mid-merge with an AssertionError)."""
    from mergekit_transplant.checkpoint.environment import check_device as check

    wanted = options.device or ("cuda" if options.cuda or options.read_to_gpu or options.multi_gpu else None)
    if not wanted or not str(wanted).startswith("cuda"):
        return
    check(wanted, remedy="drop --cuda/--device")


def default_options(cuda: bool = False, **kwargs) -> "MergeOptions":  # noqa: F821
    from mergekit.options import MergeOptions

    return MergeOptions(cuda=cuda, **kwargs)


__all__ = ["ensure_output_free", "check_finite", "check_device", "default_options"]
