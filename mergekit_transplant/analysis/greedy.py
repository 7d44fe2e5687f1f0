"""Greedy selection by the *measured* change of the workload's log-likelihood.

First-order scores rank modules one at a time and cannot see modules that
help only together, or a module whose change hurts once another is in place.
Greedy selection measures instead: each round transplants every remaining
candidate into the live target, one at a time (``sweep``'s exact
apply/restore), measures the workload's log-likelihood of the continuations,
keeps the best, and repeats with the chosen ones in place. It stops at K
units (or the parameter budget), or when no candidate raises the
log-likelihood by more than ``min_gain``: it never pads a recipe with modules
that hurt.

Part of the workload (``holdout_fraction``, seeded) is held out: greedy
selects on the rest and reports, after each round, the gain of its selection
so far on the held-out part, so that overfitting to the workload shows.

Cost: about K x N forward passes over the selection part (N candidates);
the workload is tokenised and batched once and the batches are reused.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence

from mergekit_transplant.analysis.tokens import Batch, TokenSequence, batches
from mergekit_transplant.errors import TransplantError

GREEDY_SCHEMA = 1
RUNNERS_UP = 3


@dataclass
class SelectConfig:
    """How ``analyze`` turns scores into a selection; the CLI options are generated from these fields."""

    select: Optional[str] = field(default=None, metadata={
        "help": "top (the default, chosen by benchmarks/selection.py): the K best units by --score; greedy: "
                "measure each candidate's change of the workload's log-likelihood in the live target, keep the "
                "best, repeat (about K x N forward passes).",
        "choices": ("top", "greedy")})
    prefilter: Optional[int] = field(default=None, metadata={
        "help": "greedy: only the N best candidates by --score (default: all when there are at most 64, "
                "else 64)."})
    min_gain: float = field(default=0.0, metadata={
        "help": "greedy: stop when no candidate raises the log-likelihood by more than this (nats per sample)."})
    holdout_fraction: float = field(default=0.25, metadata={
        "help": "greedy: share of the workload held out (seeded by --seed); greedy selects on the rest and "
                "reports its gain on the held-out part."})
    controls: int = field(default=3, metadata={
        "help": "Random unit sets of the selection's size to compare it with (greedy: measured on the "
                "workload; top: predicted by the score); a warning says when the selection is not clearly "
                "above them. 0 skips."})

    def validate(self) -> None:
        if self.select not in (None, "top", "greedy"):
            raise TransplantError(f"--select must be top or greedy, got {self.select!r}")
        if self.prefilter is not None and self.prefilter < 1:
            raise TransplantError(f"--prefilter must be at least 1, got {self.prefilter}")
        if not (isinstance(self.min_gain, (int, float)) and math.isfinite(self.min_gain)):
            raise TransplantError(f"--min-gain must be a finite number, got {self.min_gain}")
        if not (isinstance(self.holdout_fraction, (int, float)) and 0.0 <= self.holdout_fraction < 1.0):
            raise TransplantError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.controls < 0:
            raise TransplantError(f"--controls must be 0 or more, got {self.controls}")


DEFAULT_SELECT = "top"  # docs/analysis.md: the winner of the held-out protocol (benchmarks/selection.py)
DEFAULT_PREFILTER_ALL = 64  # greedy takes every candidate up to this many, else this many by the score


@dataclass
class GreedyRound:
    unit: str  # the unit chosen this round
    gain: float  # its measured gain on the selection part (nats per sample), with earlier rounds in place
    total: float  # the selection's cumulative gain on the selection part
    held_out: Optional[float]  # the selection's cumulative gain on the held-out part (None: nothing held out)
    runners_up: List[List] = field(default_factory=list)  # [[unit, gain], ...] best first


@dataclass
class GreedyResult:
    """What greedy selection measured: the rounds, why it stopped, and what it cost."""

    units: List[str]
    rounds: List[GreedyRound]
    stopped: str  # "top_k", "param_budget", "min_gain", "candidates"
    message: str
    candidates: List[str]  # the prefiltered candidates, in the score's order
    samples: int  # selection part
    held_out_samples: int
    baseline: float  # the target's mean log-likelihood per sample on the selection part
    held_out_baseline: Optional[float]
    evaluations: int
    controls: List[dict] = field(default_factory=list)  # [{"units": [...], "gain": x}] on the held-out part
    rejected: List[List] = field(default_factory=list)  # the round that stopped (min_gain): [[unit, gain], ...]
    # timing: kept out of to_json (the report's "timing" has them), so reports stay byte-comparable
    seconds: float = 0.0
    forward_s: float = 0.0  # one plain pass over the selection part (median of the timed ones)

    def to_json(self) -> dict:
        out = asdict(self)
        del out["seconds"], out["forward_s"]
        out["schema"] = GREEDY_SCHEMA
        return out

    @classmethod
    def from_json(cls, data: dict) -> "GreedyResult":
        if data.get("schema") != GREEDY_SCHEMA:
            raise TransplantError(f"greedy report schema {data.get('schema')!r} is not {GREEDY_SCHEMA}")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["rounds"] = [GreedyRound(**r) for r in data["rounds"]]
        return cls(**kwargs)


class LogLikelihood:
    """The mean over samples of sum log p(continuation), for a fixed set of sequences.

    Tokenised and batched once; every call runs the same batches through the
    model as it is now (with whatever is transplanted into it). Logits are
    computed only at the columns that hold a scored position.
    """

    def __init__(self, model, seqs: Sequence[TokenSequence], *, batch_size: int, pad_id: int, padding_side: str,
                 device):
        import torch

        self.model = model
        self.n = len(seqs)
        self.batches: List[Batch] = list(batches(seqs, batch_size, pad_id=pad_id, padding_side=padding_side,
                                                 device=device))
        self._keep = []
        from mergekit_transplant.analysis.capture import _can_keep_last

        columns = _can_keep_last(model)
        for b in self.batches:
            if columns:
                cols = torch.unique(b.cols)
                where = torch.searchsorted(cols, b.cols)
                self._keep.append((cols, where))
            else:
                self._keep.append((None, b.cols))

    def __call__(self) -> float:
        import torch

        if not self.n:
            return 0.0
        total = 0.0
        with torch.inference_mode():
            for b, (cols, where) in zip(self.batches, self._keep):
                kwargs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                              use_cache=False)
                if cols is not None:
                    kwargs["logits_to_keep"] = cols
                logits = self.model(**kwargs).logits
                picked = logits[b.rows, where].float().log_softmax(-1)
                total += float(picked.gather(1, b.labels.to(picked.device)[:, None]).sum())
        if not math.isfinite(total):
            raise TransplantError("the workload's log-likelihood came out non-finite; try --dtype float32")
        return total / self.n


def split(n: int, fraction: float, seed: int) -> tuple:
    """Seeded split of ``range(n)`` into (selection, held_out) index lists, each in original order."""
    n_hold = int(round(n * fraction))
    n_hold = min(n_hold, n - 1) if n > 1 else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_hold])
    keep = sorted(order[n_hold:])
    return keep, held


def greedy_select(live, select_ll: LogLikelihood, held_ll: Optional[LogLikelihood], candidates: Sequence[str],
                  tensors_of: Dict[str, Sequence[str]], parameters_of: Dict[str, int], *, top_k: Optional[int],
                  budget: Optional[float], min_gain: float, strength: float, controls: int, seed: int,
                  pool: Sequence[str], progress: bool = True, echo: Callable[[str], None] = print) -> GreedyResult:
    """Rounds of measure-every-candidate, keep-the-best; ``live`` is a ``sweep.inplace.LiveTransplant``.

    ``pool``: the units random controls are drawn from (every candidate, not
    only the prefiltered ones).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    forward_times = []

    def timed(ll: LogLikelihood) -> float:
        t0 = time.perf_counter()
        value = ll()
        forward_times.append(time.perf_counter() - t0)
        return value

    base = timed(select_ll)
    held_base = held_ll() if held_ll is not None and held_ll.n else None
    rounds_max = len(candidates) if top_k is None else min(top_k, len(candidates))
    estimate = forward_times[-1] * sum(len(candidates) - r for r in range(rounds_max))
    echo(f"greedy: up to {rounds_max} rounds x {len(candidates)} candidates on {select_ll.n} samples "
         f"(one pass {forward_times[-1]:.2f}s): at most ~{_duration(estimate)}")
    chosen: List[str] = []
    rounds: List[GreedyRound] = []
    used = 0
    current = base
    evaluations = 0
    stopped, message = "candidates", "every candidate was chosen"
    rejected: List[List] = []
    bar = tqdm(total=sum(len(candidates) - r for r in range(rounds_max)), desc="greedy", unit="eval",
               disable=not progress, leave=False)
    try:
        with contextlib.ExitStack() as kept:
            while True:
                if top_k is not None and len(chosen) >= top_k:
                    stopped, message = "top_k", f"reached --top-k {top_k}"
                    break
                remaining = [c for c in candidates if c not in chosen]
                fitting = [c for c in remaining if budget is None or used + parameters_of[c] <= budget]
                if not remaining:
                    break
                if not fitting:
                    stopped, message = "param_budget", "no remaining candidate fits in --param-budget"
                    break
                bar.set_description(f"greedy round {len(rounds) + 1}")
                gains = []
                for unit in fitting:
                    with live.applied({t: strength for t in tensors_of[unit]}):
                        value = select_ll()
                    evaluations += 1
                    gains.append((value - current, unit))
                    bar.update(1)
                bar.update(len(remaining) - len(fitting))
                gains.sort(key=lambda g: (-g[0], g[1]))
                best_gain, best = gains[0]
                if not best_gain > min_gain:
                    rejected = [[u, g] for g, u in gains[:1 + RUNNERS_UP]]
                    stopped = "min_gain"
                    message = (f"stopped after {len(chosen)} units: no candidate raises the workload's "
                               f"log-likelihood by more than {min_gain:g} nats per sample (best: {best} "
                               f"{best_gain:+.4g})")
                    break
                kept.enter_context(live.applied({t: strength for t in tensors_of[best]}))
                chosen.append(best)
                used += parameters_of[best]
                current += best_gain
                held = held_ll() - held_base if held_base is not None else None
                rounds.append(GreedyRound(best, best_gain, current - base, held,
                                          [[u, g] for g, u in gains[1:1 + RUNNERS_UP]]))
            control_sets = _control_sets(pool, len(chosen), controls, seed, avoid=chosen)
            check_ll = held_ll if held_base is not None else select_ll
            check_base = held_base if held_base is not None else base
            if control_sets:
                kept.close()  # measure the controls on the bare target
            measured = []
            for units in control_sets:
                with live.applied({t: strength for u in units for t in tensors_of[u]}):
                    measured.append({"units": units, "gain": check_ll() - check_base})
    finally:
        bar.close()
    if stopped == "candidates" and chosen:
        message = f"every candidate was chosen ({len(chosen)})"
    forward_times.sort()
    return GreedyResult(
        units=chosen, rounds=rounds, stopped=stopped, message=message, candidates=list(candidates),
        samples=select_ll.n, held_out_samples=held_ll.n if held_ll is not None else 0, baseline=base,
        held_out_baseline=held_base, evaluations=evaluations, seconds=time.perf_counter() - start,
        forward_s=forward_times[len(forward_times) // 2], controls=measured, rejected=rejected,
    )


def _control_sets(pool: Sequence[str], k: int, n: int, seed: int, avoid: Sequence[str] = ()) -> List[List[str]]:
    """``n`` seeded random ``k``-sets from ``pool``, none equal to ``avoid`` (the selection itself)."""
    if k < 1 or n < 1 or len(pool) <= k:
        return []
    rng = random.Random(seed + 7919)
    avoid_set, out = set(avoid), []
    for _ in range(100 * n):
        drawn = sorted(rng.sample(sorted(pool), k))
        if set(drawn) != avoid_set:
            out.append(drawn)
        if len(out) == n:
            break
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
