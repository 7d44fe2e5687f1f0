"""Pick the units to transplant from a ranking, and the strength of each.

``top_k`` keeps the K best units; ``param_budget`` keeps the longest head of
the ranking whose parameters fit in that fraction of the target (both may be
given: both limits apply). Units scoring zero or less are never selected:
for ``local`` a zero means the donor's tensor equals the target's, so
transplanting it would change nothing; for ``gain`` a value <= 0 predicts
that transplanting it would not raise the workload's log-likelihood. ``proportional`` strengths scale with
the score, the best unit getting ``strength``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.recipe import Selection
from mergekit_transplant.strength import strength_problem

STRENGTH_MODES = ("constant", "proportional")


@dataclass
class Picked:
    units: List[str]
    strengths: Dict[str, float]
    parameters: int
    notes: List[str] = field(default_factory=list)


def validate(*, top_k: Optional[int], param_budget: Optional[float], strength: float, strength_mode: str) -> None:
    if top_k is not None and top_k < 1:
        raise TransplantError(f"--top-k must be at least 1, got {top_k}")
    if param_budget is not None and not (0.0 < param_budget <= 1.0):
        raise TransplantError(f"--param-budget is a fraction of the target's parameters in (0, 1], got {param_budget}")
    if strength_problem(strength, allow_zero=False) is not None:
        raise TransplantError(f"--strength must be in (0, 1], got {strength}")
    if strength_mode not in STRENGTH_MODES:
        raise TransplantError(f"--strength-mode must be one of {', '.join(STRENGTH_MODES)}, got {strength_mode!r}")


def pick(ranking: Sequence[str], score_of: Dict[str, float], parameters_of: Dict[str, int], *,
         top_k: Optional[int], param_budget: Optional[float], target_parameters: int, strength: float,
         strength_mode: str) -> Picked:
    notes: List[str] = []
    nonzero = [u for u in ranking if score_of[u] > 0.0]
    if len(nonzero) < len(ranking):
        notes.append(f"{len(ranking) - len(nonzero)} of {len(ranking)} candidates score 0 or less and are never "
                     "selected")
    chosen: List[str] = []
    used = 0
    budget = None if param_budget is None else param_budget * target_parameters
    for unit in nonzero:
        if top_k is not None and len(chosen) >= top_k:
            break
        if budget is not None and used + parameters_of[unit] > budget:
            if not chosen:
                raise TransplantError(
                    f"--param-budget {param_budget:g} ({int(budget):,} parameters) is smaller than the "
                    f"best-scoring unit {unit} ({parameters_of[unit]:,} parameters)"
                )
            break
        chosen.append(unit)
        used += parameters_of[unit]
    if top_k is not None and len(chosen) < top_k and budget is None:
        notes.append(f"--top-k {top_k}: only {len(chosen)} candidates have a positive score")
    negative = sum(1 for u in ranking if score_of[u] < 0.0)
    if not chosen and negative:
        raise TransplantError(f"no candidate has a positive score ({negative} score below 0: transplanting any "
                              "one of them alone is predicted to lower the workload's log-likelihood)")
    if not chosen:
        raise TransplantError("no candidate has a non-zero score: the donor does not differ from the target "
                              "on this workload (are they the same model?)")
    top = max(score_of[u] for u in chosen)
    strengths = {
        u: strength if strength_mode == "constant" else strength * score_of[u] / top for u in chosen
    }
    return Picked(chosen, strengths, used, notes)


def selections(picked: Picked, tensors_of: Dict[str, Sequence[str]], score_of: Dict[str, float],
               donor: str) -> List[Selection]:
    """One recipe entry per tensor (a module's bias follows its weight)."""
    out = []
    for unit in picked.units:
        for tensor in tensors_of[unit]:
            out.append(Selection(tensor=tensor, donor=donor, strength=_clean(picked.strengths[unit]),
                                 score=score_of[unit]))
    return out


def _clean(x: float) -> float:
    return float(f"{float(x):.6g}")
