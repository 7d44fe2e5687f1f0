"""TIR, Recovery and retain-task changes: the paper's metrics, with their edge cases.

Pure arithmetic on scores, so every rule (direction, zero denominators, missing
values) is tested on numbers alone.

Direction. lm-eval marks each metric ``higher_is_better``. For such metrics
``TIR = S_merged / S_target``. For lower-is-better metrics (perplexity, error
rates) ``TIR = S_target / S_merged``, so that in both cases TIR > 1 means the
merged model improved on the target. Recovery,
``(S_merged − S_target) / (S_donor − S_target)``, needs no flip: numerator and
denominator change sign together, so it is always the fraction of the
target→donor gap that the merged model closed (1.0 = the whole gap). It is an
improvement only when the donor is better than the target; ``donor_better``
says whether it is.

A zero or undefined denominator gives ``None`` plus a reason, never a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class Ratio:
    """A derived metric, or ``None`` with the reason it is undefined."""

    value: Optional[float]
    reason: Optional[str] = None


def _finite(x: Optional[float]) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def tir(target: Optional[float], merged: Optional[float], higher_is_better: bool = True) -> Ratio:
    """Target Improvement Ratio: > 1 means the merged model beats the target."""
    if not (_finite(target) and _finite(merged)):
        return Ratio(None, "a score is missing or not finite")
    num, den = (merged, target) if higher_is_better else (target, merged)
    if den == 0:
        who = "target" if higher_is_better else "merged model"
        return Ratio(None, f"the {who} scores 0, so the ratio is undefined")
    return Ratio(num / den)


def recovery(target: Optional[float], donor: Optional[float], merged: Optional[float]) -> Ratio:
    """Fraction of the target→donor gap closed by the merged model (1.0 = all of it)."""
    if not (_finite(target) and _finite(donor) and _finite(merged)):
        return Ratio(None, "a score is missing or not finite")
    gap = donor - target
    if gap == 0:
        return Ratio(None, "donor and target score the same: there is no gap to recover")
    return Ratio((merged - target) / gap)


def donor_better(target: Optional[float], donor: Optional[float], higher_is_better: bool = True) -> Optional[bool]:
    """Whether the donor beats the target (None when a score is missing)."""
    if not (_finite(target) and _finite(donor)):
        return None
    return donor > target if higher_is_better else donor < target


@dataclass(frozen=True)
class Change:
    """merged − target on a task the target should not get worse at."""

    value: Optional[float]
    stderr: Optional[float]
    stderr_method: Optional[str]  # "paired" (same documents) or "independent"
    regressed: Optional[bool]  # worse in the metric's own direction
    significant_regression: Optional[bool]  # worse by more than 2 standard errors


def paired_stderr(target_docs: Mapping[int, float], merged_docs: Mapping[int, float]) -> Optional[float]:
    """Standard error of the mean per-document difference (needs ≥ 2 shared documents).

    Both models answer the same documents, so the per-document differences
    cancel the documents' own difficulty; this is tighter and more correct
    than combining the two scores' standard errors as if independent.
    """
    shared = sorted(set(target_docs) & set(merged_docs))
    if len(shared) < 2 or len(shared) != len(target_docs) or len(shared) != len(merged_docs):
        return None
    diffs = [float(merged_docs[i]) - float(target_docs[i]) for i in shared]
    if not all(math.isfinite(d) for d in diffs):
        return None
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(var / len(diffs))


def change(
    target: Optional[float],
    merged: Optional[float],
    *,
    higher_is_better: bool = True,
    target_stderr: Optional[float] = None,
    merged_stderr: Optional[float] = None,
    target_docs: Optional[Mapping[int, float]] = None,
    merged_docs: Optional[Mapping[int, float]] = None,
) -> Change:
    """merged − target with its standard error: paired when per-document values exist."""
    if not (_finite(target) and _finite(merged)):
        return Change(None, None, None, None, None)
    value = merged - target
    stderr, method = None, None
    if target_docs and merged_docs:
        stderr = paired_stderr(target_docs, merged_docs)
        method = "paired" if stderr is not None else None
    if stderr is None and _finite(target_stderr) and _finite(merged_stderr):
        stderr, method = math.sqrt(target_stderr**2 + merged_stderr**2), "independent"
    oriented = value if higher_is_better else -value
    significant = None if stderr is None else bool(oriented < -2.0 * stderr)
    return Change(value, stderr, method, bool(oriented < 0), significant)
