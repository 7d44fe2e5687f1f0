"""Module, layer and neuron units are all measured by one pass, ``capture.run_pass``.

``analyze`` (module and layer units: its target pass and its donor pass) and
``unplug`` (neuron units) each run the one pass function with their unit's
probes, and what they report agrees with a computation by hand that runs each
sample alone, unpadded. A command that measured its units with a hook loop of
its own would fail here: the tests record the calls of the real
``run_pass`` and check that the values came from them. (The neuron scores'
values are checked by hand in ``test_unplug_scores.py``, the module
statistics' in ``test_analysis_capture.py``.)
"""

from __future__ import annotations

import pytest
import torch

from mergekit_transplant.analysis import analyze, capture
from mergekit_transplant.analysis.tokens import TokenSequence, encode
from mergekit_transplant.analysis.units import UNITS, NeuronProbes
from mergekit_transplant.analysis.workload import Sample, Workload
from mergekit_transplant.testing import make_model, perturbed_copy
from mergekit_transplant.unplug.layout import LAYOUTS
from mergekit_transplant.unplug.scores import own_likelihood, score_neurons

# (ids, prompt_len): continuation = ids[prompt_len:]; prompt_len == len(ids): the text scores itself
SEQS = [([1, 14, 50, 15], 2), ([1, 20, 21, 22, 23, 24], 5), ([1, 30, 31, 32, 33], 5), ([1, 40, 41], 3)]
SAMPLES = [Sample("the cat is red"), Sample("one two", " three four five"), Sample("a dog and a bird", " one")]
LAYOUT = LAYOUTS["LlamaForCausalLM"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    target = make_model(root / "t", "llama", layers=2, intermediate=16)
    donor = perturbed_copy(target, root / "d", ["model.layers.1.mlp.up_proj.weight",
                                                "model.layers.0.self_attn.q_proj.weight"])
    return target, donor


@pytest.fixture(scope="module")
def model(pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(pair[0], dtype=torch.float64).eval()


@pytest.fixture
def passes(monkeypatch):
    """Every call of ``capture.run_pass``: (its probes, its description, its result); the real pass runs."""
    calls = []
    real = capture.run_pass

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((kwargs.get("units"), kwargs.get("desc"), result))
        return result

    monkeypatch.setattr(capture, "run_pass", recorded)
    return calls


def scored(ids, prompt_len):
    """(position, label) pairs a neuron score sums over: the continuation's, else the text's own next tokens."""
    start = prompt_len - 1 if prompt_len < len(ids) else 0
    return [(p, ids[p + 1]) for p in range(start, len(ids) - 1)]


@pytest.mark.parametrize("score", ["attribution", "activation"])
def test_unplug_scores_neurons_in_the_shared_pass(model, passes, score):
    seqs = [TokenSequence(ids, p) for ids, p in SEQS]
    got = score_neurons(model, LAYOUT, seqs, score=score, layers=2, intermediate=16, batch_size=3, pad_id=0,
                        progress=False)
    assert len(passes) == 1, "unplug scored its neurons outside capture.run_pass"
    probes, desc, result = passes[0]
    assert isinstance(probes, NeuronProbes) and desc == f"scoring neurons ({score})"
    assert all(torch.equal(g, r) for g, r in zip(got.per_layer, result.stats[score]))
    assert (got.tokens, result.batches) == (sum(len(ids) for ids, _ in SEQS), 2)
    assert got.positions == sum(len(scored(ids, p)) for ids, p in SEQS)
    # the values themselves: test_unplug_scores.py checks score_neurons against a computation by hand


@pytest.mark.parametrize("recompute,gradient_batch_size", [(True, None), (False, 1), (True, 3)])
def test_neuron_attribution_with_recomputed_layers_and_micro_batches(model, recompute, gradient_batch_size):
    """The pass's gradient options serve neurons as they serve modules: the same values as unplug's own
    scoring (whole batches, no recomputation), and a recomputed layer is counted once."""
    seqs = [TokenSequence(ids, p) for ids, p in SEQS]
    want = score_neurons(model, LAYOUT, seqs, score="attribution", layers=2, intermediate=16, batch_size=4,
                         progress=False).per_layer
    probes = UNITS["neuron"].probes(model, LAYOUT, 2, 16, "attribution")
    result = capture.run_pass(model, (), own_likelihood(seqs), stats=(), batch_size=4, pad_id=0,
                              padding_side="right", recompute=recompute, gradient_batch_size=gradient_batch_size,
                              progress=False, units=probes)
    assert result.batches == -(-len(SEQS) // (gradient_batch_size or 4))
    for g, w in zip(result.stats["attribution"], want):
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-9), (g - w).abs().max()  # float32 sums per batch


def module_activation(path, seqs):
    """Per linear module: the mean over samples of mean |output| at the sample's scored positions, sample by sample."""
    from mergekit_transplant.loading import load_causal_lm

    model, _tok = load_causal_lm(str(path))
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    per_sample = {n: [] for n in linear}
    for seq in seqs:
        outputs = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o[0])) for n, m in linear.items()]
        with torch.no_grad():
            model(torch.tensor([seq.ids]))
        for h in hooks:
            h.remove()
        for n, y in outputs.items():
            per_sample[n].append(torch.stack([y[p].abs().mean() for p in seq.scored]).mean())
    return {f"{n}.weight": float(torch.stack(v).mean()) for n, v in per_sample.items()}


@pytest.mark.parametrize("granularity", ["module", "layer"])
def test_analyze_measures_module_and_layer_units_in_the_shared_pass(pair, passes, granularity):
    """The target pass and the donor pass are the same function; the report's scores are what they measured."""
    from mergekit_transplant.loading import load_tokenizer

    target, donor = pair
    workload = Workload(SAMPLES, "inline", "jsonl", "0" * 64, len(SAMPLES))
    result = analyze(str(target), str(donor), workload, score="activation", top_k=1, select="top",
                     granularity=granularity, progress=False)
    assert [desc for _units, desc, _r in passes] == ["target pass", "donor pass"]
    # the unit strategy's probes: modules, one per candidate (a layer is measured as its modules, then grouped)
    assert all(type(units) is capture.ModuleProbes and len(units.candidates) == len(result.report["candidates"])
               for units, _d, _r in passes)
    seqs = encode(load_tokenizer(str(target)), SAMPLES, 256)
    t, d = module_activation(target, seqs), module_activation(donor, seqs)
    by_module = {m: abs(d[m] - t[m]) for m in t}
    if granularity == "layer":
        by_unit = {f"model.layers.{i}.": sum(v for m, v in by_module.items() if m.startswith(f"model.layers.{i}."))
                   for i in range(2)}
    else:
        by_unit = by_module
    got = {c["tensor"] if granularity == "module" else c["prefix"]: c["scores"]["activation"]
           for c in (result.report["candidates"] if granularity == "module" else result.report["layers"])}
    assert set(got) == set(by_unit)
    for unit, want in by_unit.items():
        assert got[unit] == pytest.approx(want, rel=1e-4, abs=1e-6), unit


@pytest.mark.parametrize("kind", ["module", "layer"])
def test_module_and_layer_strategies_give_run_pass_its_default_probes(pair, kind):
    """``UNITS[kind].probes(...)`` is what ``run_pass`` hooks by default: the same statistics, bit for bit."""
    from mergekit_transplant.analysis.candidates import find_candidates
    from mergekit_transplant.checkpoint import read_index
    from mergekit_transplant.loading import load_causal_lm

    target, _donor = pair
    model, tok = load_causal_lm(str(target))
    index = read_index(str(target))
    cands, _ = find_candidates(model, index, index)
    seqs = encode(tok, SAMPLES, 256)
    options = dict(batch_size=2, pad_id=0, padding_side="right", progress=False)
    default = capture.run_pass(model, cands, seqs, stats=["activation"], **options)
    chosen = capture.run_pass(model, (), seqs, stats=(), units=UNITS[kind].probes(cands, ["activation"]), **options)
    assert list(chosen.stats) == ["activation"] and chosen.stats["activation"].shape == (len(SAMPLES), len(cands))
    assert torch.equal(chosen.stats["activation"], default.stats["activation"])
