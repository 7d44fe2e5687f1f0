"""The pre-flight check: everything that can be wrong with a recipe, before any weight is read.

It reads model configs and safetensors headers only. Each problem is one line
naming the fault; the plan table says what will be transplanted and what it
costs. ``merge`` runs this first and writes nothing when it finds an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from mergekit_transplant.adapter.planning import resolve_strengths
from mergekit_transplant.checkpoint import ModelIndex, read_index
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.checkpoint.hub_files import HubError
from mergekit_transplant.method import StrengthError, check_strengths
from mergekit_transplant.recipe import PlannedTensor, Recipe

VOCAB_TENSOR_HINTS = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "word_embeddings")


@dataclass(frozen=True)
class PlanRow:
    tensor: str
    donor: str
    strength: float
    parameters: int
    share: float  # of the target's parameters
    donor_tensor: str = ""


@dataclass
class CheckReport:
    recipe: Recipe
    rows: List[PlanRow] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    target_parameters: int = 0
    #: the header indexes read for the check, by model reference (reused by ``merge.check_finite``)
    indexes: Dict[str, ModelIndex] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def transplanted_parameters(self) -> int:
        return sum(r.parameters for r in self.rows)

    def format_table(self) -> str:
        if not self.rows:
            return "nothing will be transplanted (every strength resolves to 0)"
        head = ("tensor", "donor", "strength", "params", "share")
        body = [(r.tensor, r.donor, f"{r.strength:g}", f"{r.parameters:,}", f"{100 * r.share:.3f}%") for r in self.rows]
        total = sum(r.parameters for r in self.rows)
        body.append(("total", "", "", f"{total:,}", f"{100 * total / max(self.target_parameters, 1):.3f}%"))
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        return "\n".join(lines)


def filter_matches(filt: str, names) -> List[str]:
    return [n for n in names if filt in n]


def is_clean_match(filt: str, name: str) -> bool:
    """Whether every occurrence of ``filt`` in ``name`` sits on dot boundaries.

    ``model.layers.1.`` matches layer 1 cleanly; ``model.layers.1`` also hits
    ``model.layers.11...`` mid-component, which is almost never what was meant.
    """
    start = name.find(filt)
    while start != -1:
        end = start + len(filt)
        left_ok = start == 0 or filt.startswith(".") or name[start - 1] == "."
        right_ok = end == len(name) or filt.endswith(".") or name[end] == "."
        if not (left_ok and right_ok):
            return False
        start = name.find(filt, start + 1)
    return True


def suggest_exact(filt: str, names) -> str:
    clean = [n for n in names if filt in n and is_clean_match(filt, n)]
    if filt and not filt.endswith(".") and any(n.startswith(filt + ".") or f".{filt}." in f".{n}" for n in clean):
        return f"{filt}."
    if len(clean) == 1:
        return clean[0]
    return ", ".join(clean[:3]) + (" ..." if len(clean) > 3 else "") if clean else "an exact tensor name"


def check_filters(recipe: Recipe, target: ModelIndex) -> List[str]:
    names = sorted(target.all_tensors())
    errors = []
    for donor, filt in recipe.filters():
        hits = filter_matches(filt, names)
        if not hits:
            errors.append(f"filter {filt!r} (donor {donor}) matches no tensor of the target {target.ref}")
            continue
        bad = [n for n in hits if not is_clean_match(filt, n)]
        if bad:
            errors.append(
                f"filter {filt!r} (donor {donor}) is ambiguous: it also matches {bad[0]}"
                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; "
                f"use {suggest_exact(filt, names)!s}"
            )
    return errors


def _find(index: ModelIndex, planned_name: str, alternatives) -> Optional[str]:
    table = index.all_tensors()
    for name in (planned_name, *alternatives):
        if name in table:
            return name
    return None


def run_check(recipe: Recipe, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> CheckReport:
    """Validate a recipe against the models' headers; never reads tensor data."""
    report = CheckReport(recipe=recipe)
    indexes = report.indexes
    for ref in [recipe.target, *recipe.donors]:
        try:
            indexes[ref] = read_index(ref, allow_pickle=allow_pickle, remote=True)
        except HubError:
            raise  # the Hub could not be read (exit 1 for network faults): one line, not a check finding
        except TransplantError as error:
            report.errors.append(str(error))
    if report.errors:
        return report
    target = indexes[recipe.target]
    report.target_parameters = target.num_parameters
    report.errors += check_filters(recipe, target)

    for donor in recipe.donors:
        d = indexes[donor]
        if d.architecture != target.architecture:
            report.errors.append(
                f"architecture mismatch: target {recipe.target} is {target.architecture}, "
                f"donor {donor} is {d.architecture}"
            )
    if any("architecture mismatch" in e for e in report.errors):
        return report

    try:
        planned: List[PlannedTensor] = resolve_strengths(recipe, trust_remote_code=trust_remote_code)
    except TransplantError as error:
        report.errors.append(str(error))
        return report

    for pt in planned:
        strengths = pt.donor_strengths()
        try:
            check_strengths(list(strengths.items()), pt.name, recipe.allow_extrapolation)
        except StrengthError as error:
            report.errors.append(str(error))
        base_in = next((i for i in pt.inputs if i.strength is None), None)
        t_name = _find(target, base_in.tensor if base_in else pt.name, pt.alternatives)
        if t_name is None:
            if not pt.optional:
                report.errors.append(f"tensor {pt.name} is missing from the target {recipe.target}")
            continue
        t_info = target.all_tensors()[t_name]
        for inp in pt.inputs:
            if inp.strength is None or inp.strength == 0.0:
                continue
            d = indexes[inp.model]
            d_name = _find(d, inp.tensor, pt.alternatives)
            if d_name is None:
                report.errors.append(f"tensor {inp.tensor} (strength {inp.strength:g}) is missing from donor {inp.model}")
                continue
            d_info = d.all_tensors()[d_name]
            if d_info.shape != t_info.shape:
                vocab = any(h in pt.name for h in VOCAB_TENSOR_HINTS)
                if vocab and target.vocab_size != d.vocab_size:
                    report.errors.append(
                        f"vocab size mismatch for {pt.name}: target {target.vocab_size}, donor {inp.model} "
                        f"{d.vocab_size}; embeddings and lm_head can only be transplanted between models "
                        "with the same tokenizer"
                    )
                else:
                    report.errors.append(
                        f"shape mismatch for {pt.name}: target {list(t_info.shape)}, donor {inp.model} "
                        f"{list(d_info.shape)}"
                    )
                continue
            report.rows.append(
                PlanRow(
                    tensor=pt.name, donor=inp.model, strength=inp.strength, parameters=t_info.numel,
                    share=t_info.numel / max(target.num_parameters, 1), donor_tensor=d_name,
                )
            )
    for donor in recipe.donors:
        if not any(r.donor == donor for r in report.rows) and not report.errors:
            report.warnings.append(f"donor {donor} contributes nothing: every strength resolves to 0")
    return report
