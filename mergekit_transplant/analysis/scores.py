"""From per-sample statistics to one score per unit, rankings and consistency.

A *unit* is what gets selected: a module's tensor (``--granularity module``)
or a whole decoder layer (``--granularity layer``). Every score is a mean
over the workload of per-sample values, except ``activation``, which follows
the seed paper: |mean donor activation - mean target activation|. Rankings
sort by score, highest first, ties broken by unit name so that equal inputs
always give the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.analysis.candidates import Candidate

#: the scores ``--score`` accepts, in the order reports list them
SCORES = ("attribution", "local", "activation", "gain")
#: every number a candidate can carry (``local`` brings ``local_relative``,
#: ``attribution`` brings ``attribution_signed``)
REPORTED = ("activation", "local", "local_relative", "attribution", "attribution_signed", "gain")


@dataclass
class ScoreTable:
    """Scores of units; ``per_sample[score]`` is ``[n_samples, n_units]``."""

    units: List[str]
    scores: Dict[str, List[float]]
    per_sample: Dict[str, "torch.Tensor"]  # noqa: F821
    extra: Dict[str, List[float]] = field(default_factory=dict)  # mean |output| of target / donor

    def value(self, score: str, unit: str) -> float:
        return self.scores[score][self.units.index(unit)]

    def ranking(self, score: str) -> List[str]:
        values = self.scores[score]
        order = sorted(range(len(self.units)), key=lambda i: (-values[i], self.units[i]))
        return [self.units[i] for i in order]


def module_scores(candidates: Sequence[Candidate], target: Dict[str, "torch.Tensor"],  # noqa: F821
                  donor: Dict[str, "torch.Tensor"]) -> ScoreTable:  # noqa: F821
    """Combine the statistics of the target pass and the donor pass."""
    per_sample, scores, extra = {}, {}, {}
    if "activation" in target and "activation" in donor:
        t, d = target["activation"], donor["activation"]
        per_sample["activation"] = (d - t).abs()
        scores["activation"] = (d.mean(0) - t.mean(0)).abs().tolist()
        extra["mean_abs_output_target"] = t.mean(0).tolist()
        extra["mean_abs_output_donor"] = d.mean(0).tolist()
    for name in ("local", "local_relative"):
        if name in target:
            per_sample[name] = target[name]
            scores[name] = target[name].mean(0).tolist()
    if "gain" in target:  # signed, predicted change of log p(continuation) per sample
        per_sample["gain"] = target["gain"]
        scores["gain"] = target["gain"].mean(0).tolist()
    for name in ("attribution", "attribution_signed"):
        if name in donor:
            per_sample[name] = donor[name]
            scores[name] = donor[name].mean(0).tolist()
    return ScoreTable([c.tensor for c in candidates], scores, per_sample, extra)


def layer_scores(table: ScoreTable, candidates: Sequence[Candidate], units: Dict[str, dict]) -> ScoreTable:
    """Aggregate module scores per decoder layer.

    Absolute scores (and their per-sample values) add up over a layer's
    candidate modules; ``local_relative``, a ratio, is averaged instead.
    """
    import torch

    prefixes = sorted(units, key=lambda p: (units[p]["layer"], p))
    columns = {p: [i for i, c in enumerate(candidates) if c.layer_prefix == p] for p in prefixes}
    scores, per_sample = {}, {}
    for name, values in table.scores.items():
        reduce = _mean if name == "local_relative" else sum
        scores[name] = [float(reduce([values[i] for i in columns[p]])) for p in prefixes]
        matrix = table.per_sample[name]
        agg = [matrix[:, columns[p]].mean(1) if name == "local_relative" else matrix[:, columns[p]].sum(1)
               for p in prefixes]
        per_sample[name] = torch.stack(agg, dim=1)
    return ScoreTable(prefixes, scores, per_sample)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(table: ScoreTable, score: str, k: int) -> Dict[str, Dict[str, float]]:
    """Per unit: mean, std, min, median, max over samples, and how often it is top-k.

    ``top_k_fraction`` is the share of samples in which the unit ranks among
    the ``k`` highest by its per-sample value: a module the whole workload
    agrees on has 1.0; one driven by a few outlier prompts has a low value.
    """
    import torch

    matrix = table.per_sample[score]
    n, m = matrix.shape
    k = max(1, min(k, m))
    by_name = sorted(range(m), key=lambda i: table.units[i])
    ordered = matrix[:, by_name]
    # stable descending sort: equal values keep name order
    top = torch.argsort(-ordered, dim=1, stable=True)[:, :k]
    hits = torch.zeros(m, dtype=torch.float64)
    for col in top.flatten().tolist():
        hits[by_name[col]] += 1
    std = matrix.std(0, unbiased=False) if n > 1 else torch.zeros(m, dtype=matrix.dtype)
    median = matrix.median(0).values
    out = {}
    for i, unit in enumerate(table.units):
        out[unit] = {
            "mean": float(matrix[:, i].mean()), "std": float(std[i]), "min": float(matrix[:, i].min()),
            "median": float(median[i]), "max": float(matrix[:, i].max()), "top_k_fraction": float(hits[i] / n),
        }
    return out


def consistency_k(selected: int, top_k: Optional[int], n_units: int) -> int:
    """The k used for ``top_k_fraction``: what was selected, else ``--top-k``, else 10."""
    return max(1, min(n_units, selected or top_k or 10))
