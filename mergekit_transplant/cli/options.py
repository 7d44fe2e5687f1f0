"""Click options generated from a settings dataclass, so the CLI and the typed API cannot drift.

Each field becomes ``--field-name`` with the field's default, its type
(``Optional[X]`` becomes an optional ``X``) and the help text and choices
from its ``metadata``, like peft's ``LoraConfig`` fields.
"""

from __future__ import annotations

import dataclasses
import typing

import click


def _click_type(hint, choices):
    if choices:
        return click.Choice(list(choices))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and args else hint
    return {int: int, float: float, str: str, bool: bool}.get(base, str)


def options_from(config_cls):
    """Decorator: one click option per field of ``config_cls``, in field order."""
    hints = typing.get_type_hints(config_cls)

    def decorate(func):
        for f in reversed(dataclasses.fields(config_cls)):
            meta = f.metadata
            func = click.option(
                "--" + f.name.replace("_", "-"), f.name, type=_click_type(hints[f.name], meta.get("choices")),
                default=f.default, show_default=f.default is not None, help=meta.get("help"),
            )(func)
        return func

    return decorate


def config_from(config_cls, opts: dict):
    """Pop ``config_cls``'s fields out of click's ``opts`` into an instance."""
    return config_cls(**{f.name: opts.pop(f.name) for f in dataclasses.fields(config_cls)})
