"""unplug writes a smaller stock transformers model that computes exactly the masked base.

On tiny llama, qwen2, gemma2 and phi3 models (phi3 with its fused
gate_up_proj): the expert's logits equal the base's with the removed neurons
zeroed (a mask on down_proj's input) to 1e-5, it loads with
AutoModelForCausalLM and generates, every non-MLP tensor is byte-identical,
and the folder is Hub-ready.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergekit_transplant.testing import ARCHITECTURES, load_state
from mergekit_transplant.unplug import UnplugReport, UnplugSettings, unplug

WORKLOAD = [
    {"text": "one plus two", "continuation": " equals three"},
    {"text": "red cat and blue dog", "continuation": " is the answer"},
    {"text": "the tree is green"},
    {"text": "four", "continuation": " five six seven eight nine"},
]


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "w.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in WORKLOAD))
    return path


def masked_logits(base: Path, report: UnplugReport, ids):
    """The reference: the base model with every removed neuron's activation multiplied by 0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    layers = model.model.layers
    handles = []
    for i, layer in enumerate(layers):
        mask = torch.zeros(report.intermediate_size)
        mask[report.kept[i]] = 1.0
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,)))
    with torch.no_grad():
        out = model(ids).logits
    for h in handles:
        h.remove()
    return out


def _mlp(name: str) -> bool:
    return ".mlp." in name


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("score", ["attribution", "random"])
def test_expert_equals_masked_base_and_is_a_stock_model(model_factory, workload, tmp_path, arch, score):
    from transformers import AutoConfig, AutoModelForCausalLM

    base = model_factory(f"unplug-{arch}", arch)
    out = tmp_path / "expert"
    result = unplug(UnplugSettings(model=str(base), workload=str(workload), keep=0.3, score=score,
                                   output=str(out), batch_size=3), progress=False)
    report = result.report
    assert report.kept_size == round(0.3 * 128) == 38
    assert all(len(k) == 38 for k in report.kept)
    assert report.kept != [list(range(38))] * 2  # chosen, not the first neurons

    expert = AutoModelForCausalLM.from_pretrained(out).eval()  # stock class, no remote code
    assert type(expert).__name__ == AutoConfig.from_pretrained(base).architectures[0]
    assert expert.config.intermediate_size == 38
    ids = torch.tensor([[1, 14, 50, 15, 16, 60, 61, 17], [1, 20, 21, 22, 23, 24, 25, 26]])
    with torch.no_grad():
        got = expert(ids).logits
    want = masked_logits(base, report, ids)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    generated = expert.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 4)

    before, after = load_state(base), load_state(out)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        if _mlp(name):
            assert after[name].dtype == tensor.dtype
            assert after[name].numel() < tensor.numel()
        else:
            assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape
            assert torch.equal(after[name].view(torch.uint8), tensor.view(torch.uint8)), name

    cfg_before = json.loads((base / "config.json").read_text())
    cfg_after = json.loads((out / "config.json").read_text())
    assert {k for k in cfg_before if cfg_before[k] != cfg_after.get(k)} == {"intermediate_size"}
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "unplug.json", "README.md"):
        assert (out / f).is_file(), f
    assert UnplugReport.load(out / "unplug.json") == report


def test_fused_gate_up_slices_both_halves(model_factory, workload, tmp_path):
    base = model_factory("unplug-phi3", "phi3")
    out = tmp_path / "e"
    report = unplug(UnplugSettings(model=str(base), workload=str(workload), keep=0.25, score="random",
                                   output=str(out)), progress=False).report
    before, after = load_state(base), load_state(out)
    w = before["model.layers.0.mlp.gate_up_proj.weight"]
    kept = report.kept[0]
    rows = kept + [128 + j for j in kept]
    assert torch.equal(after["model.layers.0.mlp.gate_up_proj.weight"], w[rows])
    assert torch.equal(after["model.layers.0.mlp.down_proj.weight"],
                       before["model.layers.0.mlp.down_proj.weight"][:, kept])


def test_mlp_biases_are_sliced_and_down_bias_kept(tmp_path, workload):
    from transformers import AutoModelForCausalLM

    from mergekit_transplant.testing import make_config, make_tokenizer

    cfg = make_config("llama")
    cfg.mlp_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    base = tmp_path / "biased"
    model.save_pretrained(base)
    make_tokenizer(base)
    out = tmp_path / "e"
    report = unplug(UnplugSettings(model=str(base), workload=str(workload), keep=0.5, output=str(out)),
                    progress=False).report
    after = load_state(out)
    assert after["model.layers.1.mlp.up_proj.bias"].shape == (64,)
    assert after["model.layers.1.mlp.down_proj.bias"].shape == (64,)  # hidden size: not a neuron axis
    ids = torch.tensor([[1, 14, 50, 15, 16]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.allclose(got, masked_logits(base, report, ids), atol=1e-5, rtol=0)


def test_sharded_output_and_pickle_input(model_factory, workload, tmp_path, monkeypatch):
    """A big model gets shards and an index; an allowed pickle base becomes a safetensors expert."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mergekit_transplant.unplug import slicing

    base = model_factory("unplug-llama", "llama")
    pick = tmp_path / "pick"
    shutil.copytree(base, pick)
    torch.save(load_file(pick / "model.safetensors"), pick / "pytorch_model.bin")
    (pick / "model.safetensors").unlink()
    monkeypatch.setattr(slicing, "MAX_SHARD_SIZE", 60_000)
    out = tmp_path / "e"
    unplug(UnplugSettings(model=str(pick), workload=str(workload), keep=0.5, output=str(out), allow_pickle=True),
           progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not list(out.glob("*.bin"))
    before = load_file(base / "model.safetensors")
    after = load_state(out)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    AutoModelForCausalLM.from_pretrained(out)


def test_card_names_base_model_tags_and_what_was_removed(model_factory, workload, tmp_path):
    from huggingface_hub import ModelCard

    base = model_factory("unplug-llama", "llama")
    out = tmp_path / "e"
    unplug(UnplugSettings(model=str(base), workload=str(workload), keep=0.25, output=str(out), score="wanda",
                          hub_id="acme/tiny-llama"), command="mergekit-transplant unplug ...", progress=False)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "acme/tiny-llama"
    assert {"pruning", "task-expert"} <= set(card.data.tags)
    assert "96 of the 128 MLP neurons" in card.text
    assert "wanda" in card.text.lower() and "w.jsonl" in card.text
