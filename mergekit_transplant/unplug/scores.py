"""Per-neuron scores, ranked within each layer: which MLP neurons a workload uses.

A neuron is channel j of the input to ``down_proj``, a_j = act(gate_j·x)·(up_j·x)
(see ``layout``). Every score is a sum over the workload's scored positions
(``analysis.tokens``): with a continuation, every position that predicts a
continuation token; without one, every position of the text that predicts its
next token (the text's own log-likelihood). Over all examples:

- ``attribution`` (DoE, arXiv 2404.11916): Σ |a_j · ∂ log p(continuation) / ∂a_j|,
  one forward and one backward pass per batch, no donor: a first-order
  estimate of how much the continuation's log-probability moves if neuron j
  is removed at that position;
- ``activation``: Σ |a_j|;
- ``wanda``: Σ |a_j| · ‖W_down[:, j]‖ (how much the neuron writes into the
  residual stream, Wanda-style);
- ``random``: a seeded random value per neuron (the control).

The scores are measured by ``analysis.capture.run_pass``, the pass that
``analyze`` runs on its target and donor, with the neuron unit's probes
(``analysis.units.NeuronProbes``): hooks read ``down_proj``'s input at the
scored positions only and add, per batch, one ``[intermediate]`` vector per
layer; no activation outlives its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

from mergekit_transplant.analysis.tokens import TokenSequence
from mergekit_transplant.analysis.units import NeuronUnits
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.unplug.config import SCORES
from mergekit_transplant.unplug.layout import MlpLayout


@dataclass
class NeuronScores:
    """One ``[intermediate]`` float64 tensor per layer, higher = more used by the workload."""

    score: str
    per_layer: List["torch.Tensor"]  # noqa: F821
    seconds: float = 0.0
    tokens: int = 0
    positions: int = 0
    notes: List[str] = field(default_factory=list)

    def kept(self, count: int) -> List[List[int]]:
        """Each layer's ``count`` best neurons (ties: lower index first), in ascending index order."""
        return [top_indices(s, count) for s in self.per_layer]

    def kept_share(self, kept: Sequence[Sequence[int]]) -> List[float]:
        """Share of each layer's total score that the kept neurons hold."""
        out = []
        for s, idx in zip(self.per_layer, kept):
            total = float(s.sum())
            out.append(float(s[list(idx)].sum()) / total if total > 0 else 0.0)
        return out


# neurons are a unit kind of the analysis (``analysis.units``): its selection and probe points are used here
top_indices = NeuronUnits.top
mlp_modules = NeuronUnits.probe_modules


def own_likelihood(seqs: Sequence[TokenSequence]) -> List[TokenSequence]:
    """Sequences without a continuation score their own text: every position predicts its next token."""
    return [s if len(s.ids) > s.prompt_len or len(s.ids) < 2 else TokenSequence(s.ids, 1, s.truncated) for s in seqs]


def random_scores(intermediate: int, layers: int, seed: int) -> NeuronScores:
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    return NeuronScores("random", [torch.rand(intermediate, generator=gen, dtype=torch.float64)
                                   for _ in range(layers)])


def score_neurons(model, layout: MlpLayout, seqs: Sequence[TokenSequence], *, score: str, layers: int,
                  intermediate: int, batch_size: int = 8, pad_id: int = 0, seed: int = 0,
                  progress: bool = True) -> NeuronScores:
    """Score every MLP neuron of ``model`` on ``seqs`` (tokenised workload).

    One ``capture.run_pass`` (the pass ``analyze`` runs on its target and
    donor) with the neuron unit's probes (``analysis.units.NeuronProbes``).
    """
    from mergekit_transplant.analysis.capture import run_pass

    if score not in SCORES:
        raise TransplantError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    if score == "random":
        return random_scores(intermediate, layers, seed)
    probes = NeuronUnits.probes(model, layout, layers, intermediate, score)
    result = run_pass(model, (), own_likelihood(seqs), stats=(), batch_size=batch_size, pad_id=pad_id,
                      padding_side="right", desc=f"scoring neurons ({score})", progress=progress, units=probes)
    return NeuronScores(score, list(result.stats[score]), result.seconds, result.tokens, probes.positions)
