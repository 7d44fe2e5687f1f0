"""Transplant recipes: mergekit-native YAML, read safely, resolved exactly as mergekit does.

A recipe is an ordinary mergekit config with ``merge_method: transplant``.
``load_recipe`` validates it (YAML, unknown keys, types) with messages that
name the fault; ``PlannedTensor`` is what mergekit's own planner will feed the
method for each tensor (``adapter.planning.resolve_strengths`` asks it, without
reading any tensor data, so what ``check`` reports is what ``mergekit-yaml``
will do). ``render_recipe``
writes recipes with exact tensor names as filters, never ambiguous prefixes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from mergekit_transplant import strength as strength_rules
from mergekit_transplant.checkpoint.dtypes import MODEL_DTYPE_NAMES
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.strength import strength_problem

METHOD = "transplant"
#: parameters the transplant method reads; anything else is a typo
PER_MODEL_PARAMETERS = {"strength"}
SHARED_PARAMETERS = {"allow_extrapolation"}
TOP_LEVEL_KEYS = {
    "modules", "slices", "models", "merge_method", "base_model", "dtype",
    "tokenizer_source", "tokenizer", "chat_template", "out_dtype", "parameters",
}
MAX_RECIPE_BYTES = 16 * 1024 * 1024


@dataclass
class Recipe:
    """A parsed, validated recipe and the text it came from."""

    source: str
    data: Dict[str, Any]
    path: Optional[Path] = None

    @functools.cached_property
    def config(self):
        """mergekit's ``MergeConfiguration`` of ``data``, validated once (``parse_recipe`` seeds it)."""
        from mergekit.config import MergeConfiguration

        return MergeConfiguration.model_validate(self.data)

    @property
    def target(self) -> str:
        return str(self.config.base_model)  # "path@revision" also for the mapping form

    @property
    def donors(self) -> List[str]:
        """Donor references in the order the recipe lists them (deterministic output)."""
        config, seen = self.config, []
        refs = [m.model for m in config.models or []]
        for s in config.slices or []:
            refs += [src.model for src in s.sources]
        for module in (config.modules or {}).values():
            refs += [m.model for m in module.models or []]
            for s in module.slices or []:
                refs += [src.model for src in s.sources]
        for ref in map(str, refs):
            if ref != self.target and ref not in seen:
                seen.append(ref)
        return seen

    @property
    def allow_extrapolation(self) -> bool:
        return bool((self.data.get("parameters") or {}).get("allow_extrapolation", False))

    def filters(self) -> List[Tuple[str, str]]:
        """Every (donor, filter) pair that sets a strength, in recipe order."""
        out = []
        for model, params in _parameter_blocks(self.data):
            for cond in _conditions((params or {}).get("strength")):
                if cond.get("filter") not in (None, "*"):
                    out.append((model or "*", str(cond["filter"])))
        return out


def _parameter_blocks(data: dict) -> Iterable[Tuple[Optional[str], dict]]:
    yield None, data.get("parameters") or {}
    for m in data.get("models") or []:
        yield str(m.get("model")), m.get("parameters") or {}
    for s in data.get("slices") or []:
        yield None, s.get("parameters") or {}
        for src in s.get("sources") or []:
            yield str(src.get("model")), src.get("parameters") or {}


def _conditions(setting: Any) -> List[dict]:
    if isinstance(setting, dict):
        return [setting]
    if isinstance(setting, list):
        return [c for c in setting if isinstance(c, dict)]
    return []


def parse_recipe(text: str, path: Optional[Path] = None) -> Recipe:
    where = str(path) if path else "recipe"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TransplantError(f"{where}: malformed YAML{at}: {problem}") from None
    except RecursionError:
        raise TransplantError(f"{where}: malformed YAML: nested too deeply") from None
    except (ValueError, OverflowError) as error:  # bad timestamps, over-long integers
        raise TransplantError(f"{where}: malformed YAML: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise TransplantError(f"{where}: expected a YAML mapping, got {type(data).__name__}")
    _check_keys(data, where)
    from pydantic import ValidationError

    from mergekit.config import MergeConfiguration

    try:
        config = MergeConfiguration.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"][:4])
        raise TransplantError(f"{where}: invalid value at {loc or 'top level'}: {first['msg']}") from None
    except RecursionError:  # a recipe nested deeper than the validator can walk
        raise TransplantError(f"{where}: nested too deeply to validate") from None
    except (RuntimeError, ValueError, OverflowError) as error:  # mergekit's own validators refusing the recipe
        raise TransplantError(f"{where}: {str(error)[:300]}") from None
    if data.get("merge_method") != METHOD:
        raise TransplantError(
            f"{where}: merge_method is {data.get('merge_method')!r}; this tool handles "
            f"'{METHOD}' recipes (use mergekit-yaml for other methods)"
        )
    if not data.get("base_model"):
        raise TransplantError(f"{where}: base_model (the target) is required for a transplant")
    _check_strength_values(data, where)
    _check_dtypes(data, where)
    recipe = Recipe(source=text, data=data, path=path)
    recipe.config = config  # validated above: ``Recipe.config`` never validates it again
    return recipe


#: the names mergekit.common.dtype_from_name accepts (int64 makes no sense for weights)
DTYPE_NAMES = MODEL_DTYPE_NAMES


def _check_dtypes(data: dict, where: str) -> None:
    """mergekit only fails on an unknown dtype mid-merge; say so before anything runs."""
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if value is not None and str(value).removeprefix("torch.") not in DTYPE_NAMES:
            raise TransplantError(f"{where}: {key} {value!r} is not one of {', '.join(DTYPE_NAMES)}")


def load_recipe(path: os.PathLike | str) -> Recipe:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise TransplantError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TransplantError(f"{path}: recipe not found") from None
    except IsADirectoryError:
        raise TransplantError(f"{path}: is a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise TransplantError(f"{path}: recipe is not UTF-8 text") from None
    return parse_recipe(text, path)


def _check_keys(data: dict, where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise TransplantError(f"{where}: unknown key(s) {', '.join(unknown)}")
    params = data.get("parameters")
    if isinstance(params, dict):
        bad = sorted(str(k) for k in set(params) - SHARED_PARAMETERS - PER_MODEL_PARAMETERS)
        if bad:
            raise TransplantError(f"{where}: unknown parameter(s) {', '.join(bad)} in parameters")
    for model, params in _parameter_blocks(data) if _blocks_ok(data) else ():
        if model is not None and isinstance(params, dict):
            bad = sorted(str(k) for k in set(params) - PER_MODEL_PARAMETERS)
            if bad:
                raise TransplantError(
                    f"{where}: unknown parameter(s) {', '.join(bad)} for model {model} "
                    f"(the transplant method reads: {', '.join(sorted(PER_MODEL_PARAMETERS))})"
                )


def _blocks_ok(data: dict) -> bool:
    models, slices = data.get("models"), data.get("slices")
    return (models is None or (isinstance(models, list) and all(isinstance(m, dict) for m in models))) and (
        slices is None
        or (
            isinstance(slices, list)
            and all(isinstance(s, dict) and all(isinstance(x, dict) for x in s.get("sources") or []) for s in slices)
        )
    )


def _numbers(setting: Any) -> Iterable[Any]:
    if isinstance(setting, dict):
        yield from _numbers(setting.get("value"))
    elif isinstance(setting, list):
        for s in setting:
            yield from _numbers(s)
    elif setting is not None:
        yield setting


def _check_strength_values(data: dict, where: str) -> None:
    """Reject NaN, infinite, negative or >1 strengths before any model is touched."""
    allow = bool((data.get("parameters") or {}).get("allow_extrapolation", False))
    for model, params in _parameter_blocks(data):
        for value in _numbers((params or {}).get("strength")):
            problem = strength_problem(value, allow_extrapolation=allow)
            if problem is None:
                continue
            shown = {strength_rules.NOT_A_NUMBER: repr(value),
                     strength_rules.OUT_OF_RANGE: f"{str(value)[:12]}..."}.get(problem, str(value))
            hint = (" (set parameters.allow_extrapolation: true to permit it)"
                    if problem == strength_rules.OUTSIDE_CLOSED else "")
            raise TransplantError(f"{where}: strength {shown} for {model or 'all models'} {problem}{hint}")


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class PlannedInput:
    model: str
    tensor: str  # the tensor name read from this model
    strength: Optional[float]  # None for the target


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and what mergekit will feed the method for it."""

    name: str
    optional: bool
    inputs: Tuple[PlannedInput, ...]
    alternatives: Tuple[str, ...] = ()  # aliases / tied names mergekit may read instead

    def donor_strengths(self) -> Dict[str, float]:
        return {i.model: float(i.strength or 0.0) for i in self.inputs if i.strength is not None}


# --------------------------------------------------------------------------- writing


@dataclass
class Selection:
    """One tensor to take from one donor at one strength (``score`` is informational)."""

    tensor: str
    donor: str
    strength: float = 1.0
    score: Optional[float] = None


def render_recipe(
    target: str,
    selections: Sequence[Selection],
    *,
    dtype: Optional[str] = None,
    out_dtype: Optional[str] = None,
    header: Sequence[str] = (),
    allow_extrapolation: bool = False,
) -> str:
    """A mergekit-native recipe: one exact-name filter per tensor, then ``value: 0``.

    Exact weight names ending in ``.weight``/``.bias`` are unambiguous filters:
    ``model.layers.1.mlp.down_proj.weight`` cannot match layer 11. Output is
    deterministic: donors in first-seen order, tensors in selection order.
    """
    donors: Dict[str, List[Selection]] = {}
    for sel in selections:
        donors.setdefault(sel.donor, []).append(sel)
    doc: Dict[str, Any] = {"merge_method": METHOD, "base_model": target, "models": []}
    for donor, sels in donors.items():
        strength = [{"filter": s.tensor, "value": _clean_float(s.strength)} for s in sels]
        strength.append({"value": 0.0})
        doc["models"].append({"model": donor, "parameters": {"strength": strength}})
    if allow_extrapolation:
        doc["parameters"] = {"allow_extrapolation": True}
    if dtype:
        doc["dtype"] = dtype
    if out_dtype:
        doc["out_dtype"] = out_dtype
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
    lines = [f"# {line}".rstrip() for h in header for line in str(h).splitlines()]
    return ("\n".join(lines) + "\n" if lines else "") + body


def _clean_float(x: float) -> float:
    return float(f"{float(x):.6g}")
