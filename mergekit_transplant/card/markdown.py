"""Escaping for card text: every string from a recipe, report or results file is untrusted.

Prose is HTML-escaped and markdown-escaped, names go in code spans, and
verbatim text goes in code fences longer than any backtick run inside it.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def one_line(text: Any) -> str:
    return " ".join(CONTROL_CHARS.sub(" ", str(text)).split())


def md_text(text: Any) -> str:
    """Untrusted text as inert inline markdown: no HTML, no links, no emphasis."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line(text), quote=True))


def md_code(text: Any, *, in_table: bool = False) -> str:
    """Untrusted text as an inline code span (literal, never HTML), safe in a table cell."""
    s = one_line(text)
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    span = f"{fence}{pad}{s}{pad}{fence}"
    return span.replace("|", "\\|") if in_table else span


def md_fence(text: str, lang: str = "") -> str:
    """A fenced code block that nothing inside ``text`` can close early."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{lang}\n{body}{fence}"


def md_num(x: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return "—" if x is None else md_code(x, in_table=True)
    return fmt.format(x)
