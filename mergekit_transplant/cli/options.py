"""Click options generated from a settings dataclass: one place for names, defaults and help.

A command's settings are one dataclass whose fields carry their help text in
``metadata["help"]`` (peft's ``LoraConfig`` pattern). ``options_from(cls)``
turns every field into a click option, so the ``--help`` text, the defaults
and the Python API cannot drift apart:

- the flag is ``--field-name`` (``metadata["flags"]`` adds or replaces names,
  e.g. ``("-o", "--output")``);
- ``bool`` fields are flags; ``int`` / ``float`` / ``str`` (or ``Optional`` of
  them) are typed options; ``metadata["choices"]`` makes a ``click.Choice``;
- list fields take one comma-separated value, parsed by ``metadata["parse"]``;
- the dataclass validates values itself (its ``__post_init__`` raises
  ``TransplantError``), so a bad value reads the same from Python and the CLI.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Iterable, List

import click

MISSING = dataclasses.MISSING


def _base_type(tp) -> Any:
    """``Optional[X]`` -> X; ``List[X]`` -> list."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (list, List):
        return list
    return tp


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def flags_of(f: dataclasses.Field) -> List[str]:
    return list(f.metadata.get("flags") or ["--" + f.name.replace("_", "-")])


def option_kwargs(cls, f: dataclasses.Field) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    tp = _base_type(hints[f.name])
    default = default_of(f)
    kwargs: Dict[str, Any] = {"help": f.metadata["help"]}
    if tp is bool:
        kwargs.update(is_flag=True, default=bool(default))
        return kwargs
    if tp is list:
        parse: Callable[[str], list] = f.metadata["parse"]
        kwargs.update(type=str, default=",".join(str(v) for v in default) if default else None,
                      callback=lambda ctx, param, value: parse(value) if value is not None else [],
                      show_default=bool(default))
        return kwargs
    if "choices" in f.metadata:
        kwargs["type"] = click.Choice(list(f.metadata["choices"]))
    elif tp in (int, float, str):
        kwargs["type"] = tp
    kwargs["default"] = default
    kwargs["show_default"] = default not in (None, "")
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    return kwargs


def options_from(cls, *, exclude: Iterable[str] = ()) -> Callable:
    """Decorator adding one click option per field of dataclass ``cls`` (in field order)."""
    skip = set(exclude)

    def decorate(func):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or not f.metadata.get("help"):
                continue
            func = click.option(*flags_of(f), f.name, **option_kwargs(cls, f))(func)
        return func

    return decorate


def settings_from(cls, params: Dict[str, Any], **extra):
    """Build ``cls`` from click's parsed parameters (unknown keys are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in params.items() if k in names}
    values.update(extra)
    return cls(**values)


def config_from(cls, opts: Dict[str, Any]):
    """Pop ``cls``'s fields out of click's ``opts`` into an instance (the rest stays for the command)."""
    return cls(**{f.name: opts.pop(f.name) for f in dataclasses.fields(cls) if f.name in opts})
