"""mergekit-transplant: graft a donor model's task-relevant modules into a target.

Importing this package is cheap (no torch, no mergekit). The public API lives in
submodules, imported on first use:

- ``mergekit_transplant.recipe``: read, validate and write transplant recipes;
- ``mergekit_transplant.preflight``: the header-only pre-flight check;
- ``mergekit_transplant.analysis``: find the modules to transplant;
- ``mergekit_transplant.evaluation`` / ``sweep``: lm-eval metrics and controls;
- ``mergekit_transplant.card`` / ``organ``: Hub-ready output and organ files;
- ``mergekit_transplant.flows``: check -> merge -> card, extract -> verify -> apply.

docs/architecture.md shows the layers.
"""

from __future__ import annotations

import sys

from mergekit_transplant._version import __version__


def register() -> None:
    """Register ``merge_method: transplant`` with mergekit explicitly.

    Normally unnecessary: the installed ``.pth`` hook does it when mergekit's
    merge methods are imported. Call this under ``python -S`` or when embedding.
    """
    from mergekit_transplant.adapter import register as register_with_mergekit

    register_with_mergekit()


# Imported after mergekit (either import order): register now, cheaply.
if "mergekit.merge_methods" in sys.modules:  # pragma: no branch
    from mergekit_transplant import _hook as _h

    if not _h.disabled():
        register()


__all__ = ["__version__", "register"]
