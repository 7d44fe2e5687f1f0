"""The adapter's one fallback policy, and the switch that turns every read/download optimisation off.

**Policy: fall back to mergekit's own behaviour.** Every patch of mergekit's
internals (the planner hook, the read hints, the download hook, the card hook)
checks the signature or attribute it relies on first. When mergekit is not as
expected -- another signature, a renamed attribute, a resolver that fails --
the patch is not applied (or steps aside for that call), one DEBUG line says
so, once per cause, and mergekit runs exactly as it does without the plugin:
it reads and downloads every donor tensor, and writes its own card. Nothing
here ever raises because mergekit changed. Where there is nothing to fall back
to -- the method's registration, and the planner run that ``check`` needs --
mergekit's own error surfaces unchanged. tests/test_mergekit_assumptions.py
pins each assumption for the mergekit version we support.
"""

from __future__ import annotations

import logging
import os
import threading

LOG = logging.getLogger("mergekit_transplant.adapter")

#: set to 1 to make mergekit read every donor tensor, as it does without the plugin
READ_ALL_ENV = "MERGEKIT_TRANSPLANT_READ_ALL"

_SAID: "set[str]" = set()  # causes already logged
_LOCK = threading.Lock()


def read_all_requested() -> bool:
    """Whether ``MERGEKIT_TRANSPLANT_READ_ALL`` asks for mergekit's default reads."""
    return os.environ.get(READ_ALL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def step_aside(what: str, detail: object = "") -> None:
    """Record that the adapter left ``what`` to mergekit: one DEBUG line per cause, then silence."""
    key = f"{what}: {detail}"
    with _LOCK:
        if key in _SAID:
            return
        _SAID.add(key)
    LOG.debug("%s: %s (mergekit does this its own way)", what, detail)
