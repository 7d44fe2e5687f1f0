"""Every neuron score against a hand-computed reference on a tiny model.

The reference runs each sample alone (no padding), keeps down_proj's input
with ``retain_grad``, writes out log p(continuation) itself and sums over the
positions by hand; ``score_neurons`` runs padded batches with tensor hooks.
The attribution's gradient is also checked by finite differences, which use
no autograd at all.
"""

from __future__ import annotations

import pytest
import torch

from mergekit_transplant.analysis.tokens import TokenSequence
from mergekit_transplant.testing import make_model
from mergekit_transplant.unplug.layout import LAYOUTS
from mergekit_transplant.unplug.scores import random_scores, score_neurons, top_indices

# (ids, prompt_len): continuation = ids[prompt_len:]; prompt_len == len(ids) means no continuation
SEQS = [([1, 14, 50, 15], 2), ([1, 20, 21, 22, 23, 24], 5), ([1, 30, 31, 32, 33], 5), ([1, 40, 41], 2)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = make_model(tmp_path_factory.mktemp("s") / "m", "llama", intermediate=16, tokenizer=False)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()


def positions(ids, prompt_len):
    """(position, label) pairs the score sums over: the continuation's, else the text's own next tokens."""
    start = prompt_len - 1 if prompt_len < len(ids) else 0
    return [(p, ids[p + 1]) for p in range(start, len(ids) - 1)]


def reference(model, score: str):
    layers = model.model.layers
    sums = [torch.zeros(16, dtype=torch.float64) for _ in layers]
    for ids, prompt_len in SEQS:
        captured = []
        handles = [layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a: captured.append(a[0]) or a[0].retain_grad()) for layer in layers]
        x = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        logits = model(inputs_embeds=x).logits[0].log_softmax(-1)
        for h in handles:
            h.remove()
        pos = positions(ids, prompt_len)
        logp = sum(logits[p, label] for p, label in pos)
        logp.backward()
        for i, a in enumerate(captured):
            for p, _label in pos:
                act, grad = a[0, p].detach(), a.grad[0, p]
                if score == "attribution":
                    sums[i] += (act * grad).abs()
                else:
                    sums[i] += act.abs()
    if score == "wanda":
        for i, layer in enumerate(layers):
            sums[i] = sums[i] * layer.mlp.down_proj.weight.detach().norm(dim=0)
    return sums


@pytest.mark.parametrize("score", ["attribution", "activation", "wanda"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_scores_match_hand_computed_reference(model, score, batch_size):
    seqs = [TokenSequence(ids, p) for ids, p in SEQS]
    got = score_neurons(model, LAYOUTS["LlamaForCausalLM"], seqs, score=score, layers=2, intermediate=16,
                        batch_size=batch_size, pad_id=0, progress=False)
    want = reference(model, score)
    for g, w in zip(got.per_layer, want):
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-9), (g - w).abs().max()
    assert got.positions == sum(len(positions(ids, p)) for ids, p in SEQS)
    assert all(p.requires_grad for p in model.parameters())  # the pass gives back the flags it found


def test_attribution_is_activation_times_gradient_by_finite_differences(model, monkeypatch):
    """With one scored position, |a_j · ∂log p/∂a_j| = |d log p / d eps| when a_j is scaled by (1 + eps) there."""
    from transformers.models.llama import modeling_llama

    def rms_norm_in_float64(self, h):  # transformers' RMSNorm computes in float32: noise for finite differences
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_in_float64)
    ids, prompt_len = [1, 14, 50, 15], 3  # one continuation token: position 2 predicts token 15
    got = score_neurons(model, LAYOUTS["LlamaForCausalLM"], [TokenSequence(ids, prompt_len)], score="attribution",
                        layers=2, intermediate=16, batch_size=1, progress=False)
    eps = 1e-4

    def logp(layer: int, j: int, scale: float) -> float:
        def hook(m, a):
            x = a[0].clone()
            x[0, 2, j] *= scale
            return (x,)

        h = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
        with torch.no_grad():
            out = model(torch.tensor([ids])).logits[0, 2].log_softmax(-1)[15].item()
        h.remove()
        return out

    for layer in (0, 1):
        for j in (0, 7, 15):
            numeric = (logp(layer, j, 1 + eps) - logp(layer, j, 1 - eps)) / (2 * eps)
            assert got.per_layer[layer][j].item() == pytest.approx(abs(numeric), rel=1e-4, abs=1e-9)


def test_ranking_within_each_layer_and_random_is_seeded():
    values = torch.tensor([0.5, 2.0, 2.0, 0.1, 3.0], dtype=torch.float64)
    assert top_indices(values, 3) == [1, 2, 4]
    assert top_indices(values, 2) == [1, 4]  # the tie goes to the lower index
    a, b, c = random_scores(32, 3, 0), random_scores(32, 3, 0), random_scores(32, 3, 1)
    assert all(torch.equal(x, y) for x, y in zip(a.per_layer, b.per_layer))
    assert a.kept(8) == b.kept(8) != c.kept(8)
    assert a.kept(8)[0] != a.kept(8)[1]  # each layer draws its own
