"""mergekit-transplant: graft a donor model's task-relevant modules into a target.

Importing this package is cheap (no torch, no mergekit). The public API lives in
submodules, imported on first use:

- ``mergekit_transplant.recipe``: read, validate and write transplant recipes;
- ``mergekit_transplant.preflight``: the header-only pre-flight check;
- ``mergekit_transplant.analysis``: find the modules to transplant;
- ``mergekit_transplant.evaluation`` / ``sweep``: lm-eval metrics and controls;
- ``mergekit_transplant.card`` / ``organ``: Hub-ready output and organ files.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"


def register() -> None:
    """Register ``merge_method: transplant`` with mergekit explicitly.

    Normally unnecessary: the installed ``.pth`` hook does it when mergekit's
    merge methods are imported. Call this under ``python -S`` or when embedding.
    """
    from mergekit_transplant.registration import install_planner_hook, register_method

    register_method()
    install_planner_hook()
    from mergekit_transplant.download_plan import install_download_hook

    install_download_hook()


# Imported after mergekit (either import order): register now, cheaply.
if "mergekit.merge_methods" in sys.modules:  # pragma: no branch
    from mergekit_transplant import _hook as _h

    if not _h.disabled():
        register()
