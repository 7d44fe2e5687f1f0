"""Run a transplant recipe through mergekit, after the pre-flight check.

This is the Python API behind ``mergekit-transplant merge``. The merge itself
is mergekit's ``run_merge``; what this adds is the check first (nothing is
written on error), an atomic output folder, the non-finite guard and the
plugin's own offline-safe model card.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_transplant import atomic
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.preflight import CheckReport, run_check
from mergekit_transplant.recipe import load_recipe


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
    from mergekit_transplant.read_hints import prefetch_range

    indexes = {}
    for row in report.rows:
        if row.donor not in indexes:
            indexes[row.donor] = read_index(row.donor, allow_pickle=allow_pickle, remote=True)
        info = indexes[row.donor].all_tensors()[row.donor_tensor]
        if info.hub is not None:  # fetched into the donor's sparse folder, which the merge then reuses
            from mergekit_transplant.sparse_donor import sparse_donor

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
    import torch

    wanted = options.device or ("cuda" if options.cuda or options.read_to_gpu or options.multi_gpu else None)
    if not wanted or not str(wanted).startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise TransplantError(f"device {wanted} was asked for, but torch sees no CUDA GPU here (drop --cuda/--device)")
    index = str(wanted).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise TransplantError(f"device {wanted} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")


def fresh_loaders() -> None:
    """Forget mergekit's process-wide loaders, keyed by model path as written.

    Two merges in one process whose recipes say ``models/donor`` from different
    working directories would otherwise read the first folder again.
    """
    from mergekit.io.tasks import LoaderCache

    LoaderCache().loaders.clear()


def run_transplant(
    recipe_path: os.PathLike | str,
    out_path: os.PathLike | str,
    options=None,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    write_card: bool = True,
) -> CheckReport:
    """Check ``recipe_path``, then merge it into ``out_path``; returns the check report."""
    import mergekit_transplant

    mergekit_transplant.register()
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = options or MergeOptions()
    recipe = load_recipe(recipe_path)
    from mergekit_transplant.organ import verify_recipe_organs

    verify_recipe_organs(recipe)  # a tampered or mismatched organ is refused before anything else
    report = run_check(recipe, allow_pickle=allow_pickle, trust_remote_code=options.trust_remote_code)
    if not report.ok:
        raise TransplantError(
            f"{recipe_path} failed the pre-flight check; nothing was written:\n  "
            + "\n  ".join(report.errors)
        )
    ensure_output_free(out_path, overwrite)
    check_device(options)
    if not allow_nonfinite:
        check_finite(report, allow_pickle=allow_pickle)
    options = options.model_copy(update={"write_model_card": False})
    config = MergeConfiguration.model_validate(recipe.data)
    fresh_loaders()
    with atomic.replacing_dir(out_path, overwrite=overwrite) as tmp:
        run_merge(config, str(tmp), options=options, config_source=recipe.source)
        (tmp / "mergekit_config.yml").write_text(recipe.source, encoding="utf-8")
        if write_card:
            _write_card(tmp, recipe, report)
    return report


def _write_card(out_dir: Path, recipe, report: CheckReport) -> None:
    """The plugin's model card; offline-safe (never asks the Hub about local paths)."""
    try:
        from mergekit_transplant.card import write_card
    except ImportError:  # card module not available: mergekit_config.yml still documents it
        return
    write_card(out_dir, recipe=recipe, check_report=report)


def default_options(cuda: bool = False, **kwargs) -> "MergeOptions":  # noqa: F821
    from mergekit.options import MergeOptions

    return MergeOptions(cuda=cuda, **kwargs)


__all__ = ["run_transplant", "ensure_output_free", "check_finite", "check_device", "default_options"]
