"""Click parameters generated from a settings dataclass, so the help text lives in one place.

A command's settings are one dataclass (like peft's ``LoraConfig``): each
field's ``metadata`` holds its ``help`` and, optionally, ``flags`` (the option
names, default ``--field-name``), ``argument`` (a positional argument), ``type``
(a click type) and ``metavar``. ``click_parameters`` turns the fields into
click arguments and options in field order; ``settings_from`` builds the
dataclass back from click's keyword arguments. The Python API takes the same
dataclass, so the CLI cannot drift from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Type, TypeVar

import click

T = TypeVar("T")


def _param(f: dataclasses.Field):
    meta = dict(f.metadata)
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    if meta.get("argument"):
        return click.argument(f.name, type=meta.get("type"), required=not has_default,
                              **({"default": f.default} if has_default else {}))
    flags = tuple(meta.get("flags") or (f"--{f.name.replace('_', '-')}",))
    kwargs: Dict[str, Any] = {"help": meta.get("help", ""), "show_default": meta.get("show_default", False)}
    if f.type in (bool, "bool"):
        kwargs.update(is_flag=True, default=bool(f.default) if has_default else False)
    else:
        kwargs.update(type=meta.get("type"), required=not has_default, metavar=meta.get("metavar"))
        if has_default:
            kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if meta.get("multiple"):
            kwargs["multiple"] = True
    return click.option(*flags, f.name, **kwargs)


def click_parameters(cls: Type[Any]) -> Callable:
    """A decorator adding one click parameter per field of the settings dataclass ``cls``."""

    def decorate(command: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            command = _param(f)(command)
        return command

    return decorate


def settings_from(cls: Type[T], values: Dict[str, Any]) -> T:
    """``cls`` built from click's keyword arguments (tuples from ``multiple`` options become lists)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in names})


__all__ = ["click_parameters", "settings_from"]
