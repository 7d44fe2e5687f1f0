"""The hooks measure what the docs say: checked against a computation by hand.

The reference runs each sample alone, with no padding, keeps the full
inputs and outputs of two modules, and computes every statistic with plain
tensor code. The analysis must agree with it, whatever the batch size and
the padding side.
"""

from __future__ import annotations

import json

import pytest

import torch  # noqa: E402 - a hard dependency: a missing torch must fail, not skip

from mergekit_transplant.analysis import analyze, load_workload  # noqa: E402
from mergekit_transplant.analysis import capture  # noqa: E402
from mergekit_transplant.analysis.capture import run_pass  # noqa: E402
from mergekit_transplant.analysis.candidates import find_candidates  # noqa: E402
from mergekit_transplant.analysis.streaming import TensorStreamer  # noqa: E402
from mergekit_transplant.analysis.tokens import encode  # noqa: E402
from mergekit_transplant.analysis.workload import Sample  # noqa: E402
from mergekit_transplant.checkpoint import read_index  # noqa: E402
from mergekit_transplant.loading import load_causal_lm  # noqa: E402
from mergekit_transplant.testing import load_state, make_model, perturbed_copy  # noqa: E402

CHANGED = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.v_proj.weight",
           "model.layers.0.mlp.up_proj.weight"]
# down_proj narrows (d_out < d_in), up_proj widens: attribution's product is taken on either side
PROBED = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
          "model.layers.0.mlp.up_proj"]
SAMPLES = [
    Sample("the cat is red"),
    Sample("one two", " three four five"),
    Sample("a dog and a bird in the house with a blue car", " one"),
    Sample("tree"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("capture")
    target = make_model(root / "t", "llama", layers=2)
    donor = perturbed_copy(target, root / "d", CHANGED)
    return target, donor


def _scored(ids, prompt_len):
    if len(ids) > prompt_len:
        return list(range(prompt_len - 1, len(ids) - 1)), ids[prompt_len:]
    return [len(ids) - 1], [None]


def _reference(model_dir, other_dir, tokenizer_dir, *, attribution=False):
    """Per sample, per probed module: activation, local, local_relative, attribution(_signed).

    ``local`` measures (other - this) x; ``attribution`` (run on the donor, other =
    the target) weighs this model's own change, (this - other) x, by the gradient.
    """
    model, tok = load_causal_lm(str(model_dir))
    other = load_state(other_dir)
    modules = dict(model.named_modules())
    out = []
    for sample in SAMPLES:
        prompt = tok(sample.text)["input_ids"]
        cont = tok(sample.continuation, add_special_tokens=False)["input_ids"] if sample.continuation else []
        ids = prompt + cont
        positions, labels = _scored(ids, len(prompt))
        seen = {}
        hooks = [modules[name].register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i[0], o))) for name in PROBED]
        with torch.enable_grad():
            logits = model(torch.tensor([ids])).logits[0]
            for _, y in seen.values():
                y.retain_grad()
            if attribution:
                logp = logits.float().log_softmax(-1)
                total = 0
                for p, label in zip(positions, labels):
                    total = total + logp[p, label if label is not None else int(logp[p].argmax())]
                model.zero_grad()
                total.backward()
        for h in hooks:
            h.remove()
        row = {}
        for name in PROBED:
            x, y_full = seen[name]
            x, y = x[0].detach(), y_full[0]
            delta = other[f"{name}.weight"].float() - modules[name].weight.detach().float()
            act = torch.stack([y[p].detach().abs().mean() for p in positions]).mean()
            change = torch.stack([(delta @ x[p]).norm() for p in positions])
            rel = torch.stack([(delta @ x[p]).norm() / y[p].detach().norm() for p in positions])
            row[name] = {"activation": float(act), "local": float(change.mean()), "local_relative": float(rel.mean())}
            if attribution:
                own_change = x.float() @ (-delta).T  # [T, d_out]: (W_this - W_other) x at every position
                per_pos = (own_change * y_full.grad[0].float()).sum(-1)
                row[name]["attribution"] = float(per_pos.abs().sum())
                row[name]["attribution_signed"] = float(per_pos.sum())
        out.append(row)
    return out


def _capture(model_dir, other_dir, *, attribution=False, batch_size=8, padding_side="right", recompute=False,
             gradient_batch_size=None):
    model, tok = load_causal_lm(str(model_dir))
    index, other = read_index(str(model_dir)), read_index(str(other_dir))
    cands, _ = find_candidates(model, index, other, modules=PROBED)
    assert [c.module for c in cands] == sorted(PROBED, key=[n for n, _ in model.named_modules()].index)
    seqs = encode(tok, SAMPLES, 256)
    with TensorStreamer(other) as files:
        result = run_pass(model, cands, seqs, stats=["activation"] + ([] if attribution else ["local"]),
                          batch_size=batch_size, pad_id=0, padding_side=padding_side, other=files,
                          attribution=attribution, recompute=recompute, gradient_batch_size=gradient_batch_size,
                          progress=False)
    return {name: result.stats[name] for name in result.stats}, [c.module for c in cands]


@pytest.mark.parametrize("batch_size,padding_side", [(1, "right"), (8, "right"), (8, "left"), (3, "left")])
def test_target_pass_statistics_match_a_computation_by_hand(models, batch_size, padding_side):
    target, donor = models
    expected = _reference(target, donor, target)
    stats, order = _capture(target, donor, batch_size=batch_size, padding_side=padding_side)
    for i, row in enumerate(expected):
        for j, name in enumerate(order):
            for stat in ("activation", "local", "local_relative"):
                assert float(stats[stat][i, j]) == pytest.approx(row[name][stat], rel=1e-4, abs=1e-6), (
                    i, name, stat)
    # o_proj is unchanged in the donor: exactly zero, not rounding noise
    o_proj = order.index("model.layers.1.self_attn.o_proj")
    assert stats["local"][:, o_proj].abs().max() == 0.0


@pytest.mark.parametrize("batch_size,padding_side,recompute,gradient_batch_size,dense", [
    (1, "right", False, None, False), (8, "left", False, 3, False), (8, "left", False, None, False),
    (8, "left", True, None, False), (8, "right", True, 3, False), (8, "left", False, None, True),
    (8, "right", False, 3, True)])
def test_attribution_matches_change_times_gradient_by_hand(models, monkeypatch, batch_size, padding_side, recompute,
                                                           gradient_batch_size, dense):
    """Micro-batches of the batch (the default), the whole batch, or each layer recomputed: the same values.

    ``dense``: the gradient hooks work on every position of the padded batch (as they do when padding is
    at most ``DENSE_PADDING`` of it) instead of gathering the real ones; padding must not count."""
    if dense:
        monkeypatch.setattr(capture, "DENSE_PADDING", 1.0)
    target, donor = models
    expected = _reference(donor, target, donor, attribution=True)
    stats, order = _capture(donor, target, attribution=True, batch_size=batch_size, padding_side=padding_side,
                            recompute=recompute, gradient_batch_size=gradient_batch_size)
    for i, row in enumerate(expected):
        for j, name in enumerate(order):
            for stat in ("attribution", "attribution_signed"):
                assert float(stats[stat][i, j]) == pytest.approx(row[name][stat], rel=1e-3, abs=1e-6), (
                    i, name, stat)
    # o_proj is the same in both models: no change to attribute, exactly zero
    o_proj = order.index("model.layers.1.self_attn.o_proj")
    assert stats["attribution"][:, o_proj].abs().max() == 0.0
    # the forward statistics are counted once, not again when a layer is recomputed
    ref_activation = _capture(donor, target, batch_size=batch_size, padding_side=padding_side)[0]["activation"]
    assert torch.allclose(stats["activation"], ref_activation, rtol=1e-5, atol=1e-7)


def test_attribution_recomputes_decoder_layers_and_keeps_no_graph_between_them(models):
    """During the attribution pass each decoder layer runs twice: without a graph, then recomputed."""
    from mergekit_transplant.analysis.recompute import Replay, decoder_layers

    _target, donor = models
    model, _tok = load_causal_lm(str(donor))
    layers = decoder_layers(model)
    assert layers and layers[0] is model.model.layers[0]
    calls = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
             for layer in layers]
    x = model.get_input_embeddings()(torch.tensor([[1, 5, 7]])).requires_grad_(True)
    with torch.enable_grad(), Replay(model):
        out = model(inputs_embeds=x).logits
        assert calls == [False] * len(layers)  # no graph inside the layers in the forward pass
        out.sum().backward()
    assert calls == [False] * len(layers) + [True] * len(layers)  # each recomputed once, last layer first
    assert all("forward" not in vars(layer) for layer in layers)  # unwrapped afterwards
    for h in hooks:
        h.remove()


def test_batch_size_and_padding_side_do_not_change_scores(models, tmp_path):
    target, donor = models
    rows = [json.dumps({"text": s.text, **({"continuation": s.continuation} if s.continuation else {})})
            for s in SAMPLES] * 3
    work = tmp_path / "w.jsonl"
    work.write_text("\n".join(rows))
    results = {}
    for batch_size, side in [(1, "right"), (8, "right"), (8, "left")]:
        r = analyze(str(target), str(donor), load_workload(work), score="activation", also=["local"], top_k=2,
                    batch_size=batch_size, padding_side=side, select="top", progress=False)
        results[batch_size, side] = {c["tensor"]: c["scores"] for c in r.report["candidates"]}
    ref = results[1, "right"]
    for key, got in results.items():
        for tensor, scores in ref.items():
            for name, value in scores.items():
                assert got[tensor][name] == pytest.approx(value, rel=1e-4, abs=1e-7), (key, tensor, name)


def test_low_precision_capture_accumulates_in_float32(models):
    target, donor = models
    work = [Sample("the cat is red"), Sample("one two", " three")]
    from mergekit_transplant.analysis.workload import Workload

    w = Workload(work, "inline", "jsonl", "0" * 64, 2)
    k = len(CHANGED)
    full = analyze(str(target), str(donor), w, score="local", top_k=k, select="top", progress=False)
    half = analyze(str(target), str(donor), w, score="local", top_k=k, dtype="bfloat16", select="top", progress=False)
    assert sorted(half.ranking()[:k]) == sorted(CHANGED)
    zero = [c for c in half.report["candidates"] if c["tensor"] not in CHANGED]
    assert all(c["scores"]["local"] == 0.0 for c in zero)  # no bf16 rounding noise on unchanged tensors
    f = {c["tensor"]: c["scores"]["local"] for c in full.report["candidates"]}
    h = {c["tensor"]: c["scores"]["local"] for c in half.report["candidates"]}
    for t in CHANGED:
        assert h[t] == pytest.approx(f[t], rel=0.05)
