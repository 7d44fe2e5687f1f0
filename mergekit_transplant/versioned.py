"""Reading versioned JSON files (reports, results, manifests): text to object, schema check, file read.

Every reader of a file this package writes goes through these, so a malformed
file, a newer schema or a missing path is the same one-line ``TransplantError``
naming the file, whichever report it is. The report classes keep their own
field checks (``_check``) and construction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence, Union

from mergekit_transplant.errors import TransplantError


def parsed(data: Any, source: str) -> Any:
    """``data`` itself, or the JSON it holds when it is text."""
    if not isinstance(data, (str, bytes)):
        return data
    try:
        return json.loads(data)
    except ValueError as error:
        raise TransplantError(f"{source}: not valid JSON ({error})") from None


def schema_of(data: dict, readable: Sequence[int], source: str, what: str, *, key: str = "schema",
              missing: Any = 1) -> int:
    """The file's schema, if this version reads it. A file without the ``key`` predates it and is read as
    ``missing`` (1); formats that always recorded theirs (organ.json's ``format_version``) pass ``missing=None``."""
    schema = data.get(key, missing)
    if isinstance(schema, bool) or schema not in readable:
        word = "schema" if key == "schema" else "version"
        raise TransplantError(f"{source}: {what} {word} {schema!r} is not one this version reads "
                              f"({', '.join(map(str, readable))}); upgrade mergekit-transplant")
    return schema


def load(path: Union[str, os.PathLike], what: str, from_json: Callable[[str, str], Any]) -> Any:
    """``from_json(text, path)`` of the file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TransplantError(f"{path}: {what} not found") from None
    except (UnicodeDecodeError, IsADirectoryError) as error:
        raise TransplantError(f"{path}: not a readable {what} ({error})") from None
    return from_json(text, str(path))
