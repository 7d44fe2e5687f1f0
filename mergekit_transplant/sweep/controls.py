"""The controls every analysis-selected point is compared against.

- Random modules: K units drawn uniformly without replacement from the same
  candidate pool the analysis ranked, with ``random.Random(seed)``. The pool
  is sorted first, so a control is reproducible from (seed, K, pool) alone,
  whatever order the report listed its candidates in. Seeds are
  ``base_seed, base_seed + 1, ...``, one per control, the same at every K.
- Whole-model interpolation: every floating-point tensor the target model
  and the donor checkpoint share (same name and shape) lerped at the same
  strength, i.e. plain linear merging of the two models. At strength 1 this
  is the donor's weights in the target's live model: the donor reference.
"""

from __future__ import annotations

import random
from typing import Iterable, List, Sequence

from mergekit_transplant.errors import TransplantError


def random_units(pool: Sequence[str], k: int, seed: int) -> List[str]:
    """K units drawn from ``pool`` by ``random.Random(seed)`` (in drawn order)."""
    units = sorted(set(pool))
    if not 1 <= k <= len(units):
        raise TransplantError(f"K={k} is outside 1..{len(units)} (the candidate pool has {len(units)} modules)")
    return random.Random(seed).sample(units, k)


def control_seeds(n: int, base_seed: int = 0) -> List[int]:
    if n < 0:
        raise TransplantError(f"--random-controls {n} is negative")
    return [base_seed + i for i in range(n)]


def whole_model_tensors(model_tensors: dict, donor_tensors: dict) -> List[str]:
    """Floating tensors present in both, with equal shapes: what whole-model interpolation lerps.

    ``model_tensors`` maps names to live tensors; ``donor_tensors`` maps names
    to the donor's header entries (``TensorInfo``).
    """
    out = []
    for name, tensor in model_tensors.items():
        info = donor_tensors.get(name)
        if info is None or not tensor.is_floating_point():
            continue
        if tuple(tensor.shape) == tuple(info.shape) and info.dtype.startswith(("F", "BF")):
            out.append(name)
    return sorted(out)


def expand_units(units: Iterable[str], available: Iterable[str]) -> List[str]:
    """Tensor names for units: an exact tensor name, or every tensor under a prefix."""
    available = sorted(set(available))
    names = set(available)
    out: List[str] = []
    for unit in units:
        if unit in names:
            hits = [unit]
        else:
            hits = [n for n in available if n.startswith(unit)]
        if not hits:
            raise TransplantError(f"module {unit!r} from the ranking is not a tensor of both the target and the donor")
        out.extend(h for h in hits if h not in out)
    return out
