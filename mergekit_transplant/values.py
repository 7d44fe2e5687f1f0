"""Comma-separated option values (``--k 4,8``, ``--keep 0.2,0.35``) parsed for settings dataclasses.

A settings field that takes a list names one of these as its ``metadata["parse"]``
(``options.py``), so the CLI and the Python API read lists the same way and a
malformed value is one ``TransplantError`` line naming the option.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, TypeVar

from mergekit_transplant.errors import TransplantError

T = TypeVar("T")


def comma_list(text: Any, convert: Callable[[str], T], what: str, option: Optional[str] = None) -> List[T]:
    """``"a, b,,c"`` -> ``[convert("a"), convert("b"), convert("c")]``; empty parts are skipped."""
    try:
        return [convert(v.strip()) for v in str(text).split(",") if v.strip()]
    except ValueError:
        prefix = f"{option} " if option else ""
        raise TransplantError(f"{prefix}{text!r} is not a comma-separated list of {what}") from None


def floats(text: Any, option: Optional[str] = None) -> List[float]:
    return comma_list(text, float, "numbers", option)


def ints(text: Any, option: Optional[str] = None) -> List[int]:
    return comma_list(text, int, "integers", option)
