"""What a transplant strength may be, decided in one place.

A strength ``s`` blends ``target + s·(donor − target)``: it must be a finite
real number in [0, 1] -- unless the recipe sets ``allow_extrapolation`` -- and
where a strength is *chosen* (``analyze --strength``, ``sweep --strength``)
0 is refused too, since it would transplant nothing. The recipe reader, the
merge method, analysis' selection and the sweep's settings all ask
``strength_problem``; each words the error for its own input (a recipe line,
a tensor, a flag).
"""

from __future__ import annotations

import math
from typing import Optional

NOT_A_NUMBER = "is not a number"
OUT_OF_RANGE = "is out of range"  # an integer too large to be a float exactly
NOT_FINITE = "is not finite"
OUTSIDE_CLOSED = "is outside [0, 1]"
OUTSIDE_HALF_OPEN = "is outside (0, 1]"


def strength_problem(value: object, *, allow_extrapolation: bool = False, allow_zero: bool = True) -> Optional[str]:
    """None for a valid strength; otherwise why not (one of the constants above)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NOT_A_NUMBER
    if isinstance(value, int) and abs(value) > 2**53:
        return OUT_OF_RANGE
    if not math.isfinite(value):
        return NOT_FINITE
    if allow_extrapolation:
        return None
    if allow_zero:
        return None if 0.0 <= value <= 1.0 else OUTSIDE_CLOSED
    return None if 0.0 < value <= 1.0 else OUTSIDE_HALF_OPEN
