"""The one exception type users see: a message naming the thing at fault.

Every ``mergekit-transplant`` command turns a ``TransplantError`` into a
one-line ``error: ...`` on stderr and exit code 2, with no traceback unless
``--debug`` is given.
"""

from __future__ import annotations


class TransplantError(Exception):
    """A problem with the user's input (recipe, model, workload, path, option)."""

    exit_code = 2
