"""Click parameters generated from a settings dataclass: one place for names, defaults and help.

A command's settings are one dataclass whose fields carry their help text in
``metadata["help"]`` (peft's ``LoraConfig`` pattern). ``options_from(cls)``
turns every field into a click parameter, so the ``--help`` text, the defaults
and the Python API cannot drift apart. This is the only generator: every
command built on a settings dataclass uses it. Field metadata:

- ``help`` (required for an option; a field without it is not a CLI parameter);
- ``flags``: the option's names (default ``--field-name``), e.g. ``("-o", "--output")``
  or ``("--recompute/--no-recompute",)`` for an on/off pair;
- ``aliases``: old spellings still accepted for one release but hidden from
  ``--help`` (each becomes a hidden option writing the same field);
- ``argument``: a positional argument instead of an option;
- ``choices`` (a ``click.Choice``), ``type`` (any click type), ``metavar``,
  ``show_default`` (default: shown unless the default is empty);
- list fields: ``multiple`` (the option repeats) or ``parse`` (one
  comma-separated value parsed by this function);
- ``cli: False`` keeps a field out of the command line (Python API only).
- ``pin: True``: ``to_cli`` writes the field even at its default (a default a
  later release may change).

A field without a default is a required option. The dataclass validates values
itself (``TransplantError``), so a bad value reads the same from Python and the
CLI. ``to_cli`` is the inverse: the command line that reproduces a settings
object (the card's "reproduce" command and the recipe header use it).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import shlex
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import click

MISSING = dataclasses.MISSING


def _base_type(tp) -> Any:
    """``Optional[X]`` -> X; ``List[X]`` / ``Tuple[X, ...]`` / ``Sequence[X]`` -> list."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (list, tuple, collections.abc.Sequence):
        return list
    return tp


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING  # type: ignore[misc]


def flags_of(f: dataclasses.Field) -> List[str]:
    return list(f.metadata.get("flags") or ["--" + f.name.replace("_", "-")])


def cli_fields(cls) -> List[dataclasses.Field]:
    """The fields that are command-line parameters, in declaration order."""
    return [f for f in dataclasses.fields(cls)
            if f.metadata.get("cli", True) and (f.metadata.get("help") or f.metadata.get("argument"))]


def option_kwargs(cls, f: dataclasses.Field) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    tp = _base_type(hints[f.name])
    meta = f.metadata
    default = default_of(f)
    kwargs: Dict[str, Any] = {"help": meta["help"]}
    if tp is bool:
        kwargs["default"] = bool(default)
        if any("/" in flag for flag in flags_of(f)):  # an on/off pair: click makes it a flag
            kwargs["show_default"] = meta.get("show_default", True)
        else:
            kwargs["is_flag"] = True
        return kwargs
    if tp is list:
        if meta.get("multiple"):
            kwargs.update(multiple=True, default=tuple(default or ()))
            if "choices" in meta:
                kwargs["type"] = click.Choice(list(meta["choices"]))
            elif "type" in meta:
                kwargs["type"] = meta["type"]
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
            return kwargs
        parse: Callable[[str], list] = meta["parse"]
        kwargs.update(type=str, default=",".join(str(v) for v in default) if default else None,
                      callback=lambda ctx, param, value: parse(value) if value is not None else [],
                      show_default=bool(default))
        if not has_default(f):
            kwargs.update(required=True, show_default=False)
            kwargs.pop("default")
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        return kwargs
    if "choices" in meta:
        kwargs["type"] = click.Choice(list(meta["choices"]))
    elif "type" in meta:
        kwargs["type"] = meta["type"]
    elif tp in (int, float, str):
        kwargs["type"] = tp
    if not has_default(f):
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        kwargs["show_default"] = meta.get("show_default", default not in (None, ""))
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def _argument(f: dataclasses.Field):
    kwargs: Dict[str, Any] = {"type": f.metadata.get("type"), "required": not has_default(f)}
    if has_default(f):
        kwargs["default"] = default_of(f)
    return click.argument(f.name, **kwargs)


def _hidden_alias(cls, f: dataclasses.Field, alias: str):
    """An old spelling of ``f``'s option: accepted, hidden from --help, writing the same field."""
    kwargs = option_kwargs(cls, f)
    kwargs.pop("required", None)
    kwargs.update(hidden=True, default=None, show_default=False, expose_value=True)
    if kwargs.get("is_flag"):
        kwargs["default"] = None
    if kwargs.get("multiple"):
        kwargs["default"] = ()
    kwargs.pop("callback", None)
    return click.option(alias, _alias_name(f.name, alias), **kwargs)


def _alias_name(name: str, alias: str) -> str:
    return f"_alias_{name}__{alias.lstrip('-').replace('-', '_')}"


def options_from(cls, *, exclude: Iterable[str] = (), types: Optional[Dict[str, Any]] = None) -> Callable:
    """Decorator adding one click parameter per field of dataclass ``cls`` (in field order).

    ``types`` gives a field a click type that its module should not import click for (e.g. the
    evaluation settings' batch size, ``N|auto``)."""
    skip = set(exclude)
    types = dict(types or {})

    def decorate(func):
        for f in reversed(cli_fields(cls)):
            if f.name in skip:
                continue
            for alias in reversed(f.metadata.get("aliases", ())):
                func = _hidden_alias(cls, f, alias)(func)
            if f.metadata.get("argument"):
                func = _argument(f)(func)
            else:
                kwargs = option_kwargs(cls, f)
                if f.name in types:
                    kwargs["type"] = types[f.name]
                func = click.option(*flags_of(f), f.name, **kwargs)(func)
        return func

    return decorate


def resolve_aliases(cls, params: Dict[str, Any]) -> Dict[str, Any]:
    """Fold values given under a hidden old spelling into their field (the new spelling wins if both)."""
    out = dict(params)
    for f in dataclasses.fields(cls):
        for alias in f.metadata.get("aliases", ()):
            value = out.pop(_alias_name(f.name, alias), None)
            if value in (None, ()):
                continue
            current = out.get(f.name)
            if current in (None, (), [], default_of(f)):
                if isinstance(value, tuple):
                    value = tuple(value)
                out[f.name] = value
    return out


def _coerce(params: Dict[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def settings_from(cls, params: Dict[str, Any], **extra):
    """Build ``cls`` from click's parsed parameters (unknown keys are ignored; tuples become lists)."""
    params = resolve_aliases(cls, params)
    names = {f.name for f in dataclasses.fields(cls)}
    values = _coerce({k: v for k, v in params.items() if k in names})
    values.update(extra)
    return cls(**values)


def config_from(cls, opts: Dict[str, Any]):
    """Pop ``cls``'s fields out of click's ``opts`` into an instance (the rest stays for the command)."""
    opts.update(resolve_aliases(cls, opts))
    for key in [k for k in opts if k.startswith("_alias_")]:
        opts.pop(key)
    return cls(**_coerce({f.name: opts.pop(f.name) for f in dataclasses.fields(cls) if f.name in opts}))


def to_cli(settings, command: Sequence[str], *, exclude: Iterable[str] = ()) -> str:
    """The command line that reproduces ``settings``: every CLI field that differs from its default.

    A field whose metadata has ``pin: True`` is written even at its default:
    a default that a later release may change (``analyze``'s score and
    selection were chosen by a benchmark) must not change what an old
    command reproduces.

    Arguments come first, in field order; options use their longest spelling.
    The one implementation behind every "command to reproduce this" (recipe
    header, report, model card).
    """
    skip = set(exclude)
    hints = typing.get_type_hints(type(settings))
    args: List[str] = []
    parts: List[str] = list(command)
    for f in cli_fields(type(settings)):
        if f.name in skip:
            continue
        value = getattr(settings, f.name)
        if f.metadata.get("argument"):
            args.append(str(value))
            continue
        if has_default(f) and value == default_of(f) and not f.metadata.get("pin"):
            continue
        if value is None:
            continue
        flags = flags_of(f)
        tp = _base_type(hints[f.name])
        if tp is bool:
            pair = next((fl for fl in flags if "/" in fl), None)
            if pair:
                on, off = pair.split("/")
                parts.append(on if value else off)
            elif value:
                parts.append(max(flags, key=len))
            continue
        flag = max(flags, key=len)
        if tp is list:
            if not value:
                continue
            if f.metadata.get("multiple"):
                for v in value:
                    parts += [flag, _text(v)]
            else:
                parts += [flag, ",".join(_text(v) for v in value)]
            continue
        parts += [flag, _text(value)]
    return shlex.join(parts[:len(command)] + args + parts[len(command):])


def _text(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)
