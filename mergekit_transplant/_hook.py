"""Zero-config registration: a lazy post-import hook installed from a ``.pth`` file.

The ``.pth`` line (``pth_line()``) defines a stub finder in place; only when
one of the watched mergekit modules is imported does it import this module.

mergekit reads no entry points, so a plugin has to register its merge method in
``mergekit.merge_methods``' registry itself. Importing mergekit (and torch) at
every interpreter start would cost seconds, so the ``.pth`` file only installs
a meta-path finder. The finder waits until ``mergekit.merge_methods`` (and
``mergekit.plan``) are imported, lets them execute normally, then runs our
registration (``adapter``). This module must import nothing heavy: it runs at
startup. It is an entry point, like the CLI: it wires the adapter's card hook to
the card built in ``flows``, so the adapter never imports the layers above it.
"""

from __future__ import annotations

import os
import sys

# Deliberately no ``typing`` or ``importlib.abc`` import: together they cost
# ~15 ms at every interpreter start; duck-typed finder/loader classes cost none.

DISABLE_ENV = "MERGEKIT_TRANSPLANT_DISABLE"


def _register_method() -> None:
    from mergekit_transplant.adapter.registration import register_method

    register_method()


def _install_planner_hook() -> None:
    from mergekit_transplant.adapter.registration import install_planner_hook

    install_planner_hook()


def _card_for_mergekit(config, config_yaml, name=None):
    """The plugin's card for a transplant merge (imported on first use: after the weights are written)."""
    from mergekit_transplant.flows import card_for_mergekit

    return card_for_mergekit(config, config_yaml, name)


def _install_card_hook() -> None:
    from mergekit_transplant.adapter.card_hook import install_mergekit_card_hook

    install_mergekit_card_hook(_card_for_mergekit)


def _install_download_hook() -> None:
    from mergekit_transplant.adapter.download_plan import install_download_hook

    install_download_hook()


#: module name -> callback run right after that module finishes executing
AFTER_IMPORT: "dict[str, object]" = {
    "mergekit.merge_methods": _register_method,
    "mergekit.plan": _install_planner_hook,
    "mergekit.card": _install_card_hook,
    "mergekit.merge": _install_download_hook,
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


def find_spec(fullname, path=None, target=None):
    """The real spec of a watched module, with its loader wrapped; None otherwise.

    Called by the stub finder that the ``.pth`` line puts on ``sys.meta_path``
    (and by ``PostImportFinder``). Other finders are asked for the spec; the
    ``_BUSY`` guard stops the stub from answering its own question.
    """
    callback = AFTER_IMPORT.get(fullname)
    if callback is None or fullname in _BUSY:
        return None
    _BUSY.add(fullname)
    try:
        spec = None
        for finder in sys.meta_path:
            if not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
    finally:
        _BUSY.discard(fullname)
    if spec is None or spec.loader is None:
        return None
    spec.loader = _PostImportLoader(spec.loader, callback)
    return spec


_BUSY: "set[str]" = set()


class PostImportFinder:
    """The in-process form of the ``.pth`` stub, for ``install()``."""

    find_spec = staticmethod(find_spec)


def _stub_installed() -> bool:
    return any(type(f).__name__ in (STUB_NAME, "PostImportFinder") for f in sys.meta_path)


def install() -> None:
    """Put a finder first on ``sys.meta_path`` (once); a no-op when disabled.

    The installed package does not need this: its ``.pth`` line adds a stub
    finder at interpreter start. It serves ``python -S`` and embedded use.
    """
    if disabled():
        return
    if not _stub_installed():
        sys.meta_path.insert(0, PostImportFinder())
    # mergekit may already be imported (python -S, then site import): catch up.
    for name, callback in AFTER_IMPORT.items():
        if name in sys.modules:
            callback()


#: the class name of the stub finder defined by the ``.pth`` line
STUB_NAME = "MergekitTransplantFinder"


def pth_line() -> str:
    """The single line of ``mergekit_transplant.pth`` (a test keeps the file equal to it).

    Interpreter start runs it: it defines a stub finder in place, importing
    nothing, so the plugin costs microseconds until mergekit itself is imported.
    """
    watched = tuple(AFTER_IMPORT)
    return (
        "import os, sys; "
        f"os.environ.get({DISABLE_ENV!r}, '').strip().lower() in ('', '0', 'false', 'no') "
        f"and sys.meta_path.insert(0, type({STUB_NAME!r}, (), {{'find_spec': staticmethod("
        "lambda name, path=None, target=None: "
        "__import__('mergekit_transplant._hook')._hook.find_spec(name, path, target) "
        f"if name in {watched!r} else None)}})())\n"
    )
