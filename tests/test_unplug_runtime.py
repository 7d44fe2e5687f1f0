"""``unplugged(model, "unplug.json")``: the expert in a live model, restored bit for bit.

Inside the block the live model computes what the written expert computes
(real smaller weights: the Linear layers' shapes change); on exit every
tensor is the original, bit for bit and the same object, also when the block
raises; a second expert can be entered after the first exits, not while it
is active.
"""

from __future__ import annotations

import json

import pytest
import torch

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.unplug import UnplugReport, UnplugSettings, unplug, unplugged


@pytest.fixture(scope="module", params=["llama", "phi3"])
def setup(request, model_factory, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    arch = request.param
    base = model_factory(f"unplug-{arch}", arch)
    root = tmp_path_factory.mktemp(f"rt-{arch}")
    wl = root / "w.jsonl"
    wl.write_text(json.dumps({"text": "one plus two", "continuation": " equals three"}) + "\n")
    experts = {}
    for name, score, keep in (("a", "attribution", 0.35), ("b", "random", 0.5)):
        unplug(UnplugSettings(model=str(base), workload=str(wl), keep=keep, score=score, output=str(root / name)),
               progress=False)
        experts[name] = root / name
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    return {"base": base, "model": model, "experts": experts,
            "ids": torch.tensor([[1, 14, 50, 15, 16, 60, 61, 17]])}


def snapshot(model):
    return {name: (p, p.detach().clone()) for name, p in model.named_parameters()}


def assert_restored(model, snap):
    now = dict(model.named_parameters())
    assert sorted(now) == sorted(snap)
    for name, (obj, copy) in snap.items():
        assert now[name] is obj, f"{name} is not the original Parameter"
        assert torch.equal(now[name].detach().view(torch.uint8), copy.view(torch.uint8)), name


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_inside_is_the_expert_and_exit_restores_bit_for_bit(setup):
    from transformers import AutoModelForCausalLM

    model, ids = setup["model"], setup["ids"]
    snap = snapshot(model)
    full = logits(model, ids)
    expert_dir = setup["experts"]["a"]
    written = AutoModelForCausalLM.from_pretrained(expert_dir).eval()
    k = UnplugReport.load(expert_dir).kept_size
    with unplugged(model, expert_dir / "unplug.json") as live:
        assert live is model
        down = model.model.layers[0].mlp.down_proj
        assert down.weight.shape[1] == k and down.in_features == k  # a real smaller matmul, not a mask
        assert torch.allclose(logits(model, ids), logits(written, ids), atol=1e-6, rtol=0)
        assert not torch.allclose(logits(model, ids), full)
    assert_restored(model, snap)
    assert torch.equal(logits(model, ids), full)


def test_restores_on_exception_and_refuses_nesting(setup):
    model, ids = setup["model"], setup["ids"]
    snap = snapshot(model)
    full = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with unplugged(model, setup["experts"]["a"]):
            raise RuntimeError("boom")
    assert_restored(model, snap)
    with unplugged(model, setup["experts"]["a"]):
        with pytest.raises(TransplantError, match="already plugged"):
            with unplugged(model, setup["experts"]["b"]):
                pass
    assert_restored(model, snap)
    assert torch.equal(logits(model, ids), full)


def test_a_second_expert_after_the_first(setup):
    from transformers import AutoModelForCausalLM

    model, ids = setup["model"], setup["ids"]
    snap = snapshot(model)
    with unplugged(model, setup["experts"]["a"]):
        first = logits(model, ids)
    with unplugged(model, UnplugReport.load(setup["experts"]["b"])):
        second = logits(model, ids)
    written = AutoModelForCausalLM.from_pretrained(setup["experts"]["b"]).eval()
    assert torch.allclose(second, logits(written, ids), atol=1e-6, rtol=0)
    assert not torch.allclose(first, second)
    assert_restored(model, snap)


def test_a_report_for_another_model_changes_nothing(setup, model_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(model_factory("unplug-wide", "llama", intermediate=96)).eval()
    snap = snapshot(other)
    report = UnplugReport.load(setup["experts"]["a"])
    with pytest.raises(TransplantError):
        with unplugged(other, report):
            pass
    assert_restored(other, snap)
    bad = tmp_path / "unplug.json"
    data = json.loads(report.to_json())
    data["kept"][0] = data["kept"][0][:-1]
    bad.write_text(json.dumps(data))
    with pytest.raises(TransplantError, match="layer 0 must keep"):
        UnplugReport.load(bad)
    data["schema"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(TransplantError, match="unplug report schema 99 is not one this version reads"):
        UnplugReport.load(bad)
