"""Zero-config registration: a lazy post-import hook installed from a ``.pth`` file.

mergekit reads no entry points, so a plugin has to register its merge method in
``mergekit.merge_methods``' registry itself. Importing mergekit (and torch) at
every interpreter start would cost seconds, so the ``.pth`` file only installs
a meta-path finder. The finder waits until ``mergekit.merge_methods`` (and
``mergekit.plan``) are imported, lets them execute normally, then runs our
registration. This module must import nothing heavy: it runs at startup.
"""

from __future__ import annotations

import os
import sys

# Deliberately no ``typing`` or ``importlib.abc`` import: together they cost
# ~15 ms at every interpreter start; duck-typed finder/loader classes cost none.

DISABLE_ENV = "MERGEKIT_TRANSPLANT_DISABLE"


def _register_method() -> None:
    from mergekit_transplant.registration import register_method

    register_method()


def _install_planner_hook() -> None:
    from mergekit_transplant.registration import install_planner_hook

    install_planner_hook()


def _install_card_hook() -> None:
    from mergekit_transplant.card import install_mergekit_card_hook

    install_mergekit_card_hook()


#: module name -> callback run right after that module finishes executing
AFTER_IMPORT: "dict[str, Callable[[], None]]" = {
    "mergekit.merge_methods": _register_method,
    "mergekit.plan": _install_planner_hook,
    "mergekit.card": _install_card_hook,
}


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _PostImportLoader:
    """Delegates to the real loader, then runs the callback for the module."""

    def __init__(self, wrapped, callback):
        self._wrapped = wrapped
        self._callback = callback

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self._wrapped.exec_module(module)
        self._callback()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._wrapped, name)


class PostImportFinder:
    """Finds nothing itself; wraps the real spec of the modules it watches."""

    def __init__(self) -> None:
        self._busy = set()

    def find_spec(self, fullname, path=None, target=None):
        callback = AFTER_IMPORT.get(fullname)
        if callback is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PostImportLoader(spec.loader, callback)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); a no-op when disabled."""
    if disabled():
        return
    if any(isinstance(f, PostImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PostImportFinder())
    # mergekit may already be imported (python -S, then site import): catch up.
    for name, callback in AFTER_IMPORT.items():
        if name in sys.modules:
            callback()
