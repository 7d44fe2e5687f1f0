"""The ``transplant`` method as users run it: real mergekit, real files, four architectures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergekit_transplant.testing import load_state

ARCHS = ["llama", "qwen2", "gemma2", "phi3"]
# one attention and one MLP tensor per architecture (phi3 has fused qkv / gate_up)
PICKS = {
    "llama": ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"),
    "qwen2": ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"),
    "gemma2": ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"),
    "phi3": ("model.layers.1.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"),
}


def run_merge(recipe: str, out: Path, **options) -> dict:
    import mergekit_transplant

    mergekit_transplant.register()
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mk_run
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(recipe))
    mk_run(config, str(out), options=MergeOptions(quiet=True, write_model_card=False, **options))
    return load_state(out)


def recipe(target: Path, donors: list[tuple[Path, list[tuple[str, float]]]], extra: str = "") -> str:
    lines = ["merge_method: transplant", f"base_model: {target}", "models:"]
    for donor, picks in donors:
        lines += [f"  - model: {donor}", "    parameters:", "      strength:"]
        for filt, value in picks:
            lines += [f"        - filter: {filt}", f"          value: {value}"]
        lines += ["        - value: 0.0"]
    return "\n".join(lines) + "\n" + extra


@pytest.mark.parametrize("arch", ARCHS)
def test_endpoints_are_bit_exact_and_midpoint_is_lerp(arch, model_factory, tmp_path):
    tie = arch == "gemma2"  # gemma2 ties embeddings by default: cover that path too
    target = model_factory(f"{arch}-t", arch, seed=0, tie=tie)
    donor = model_factory(f"{arch}-d", arch, seed=1, tie=tie)
    full, half = PICKS[arch]
    out = run_merge(recipe(target, [(donor, [(full, 1.0), (half, 0.5)])]), tmp_path / "out")
    t, d = load_state(target), load_state(donor)

    assert set(out) == set(t)
    assert torch.equal(out[full], d[full]) and not torch.equal(out[full], t[full])
    expected = torch.lerp(t[half].float(), d[half].float(), 0.5).to(t[half].dtype)
    assert torch.equal(out[half], expected)
    for name in set(t) - {full, half}:
        assert torch.equal(out[name], t[name]), name


def test_two_donors_add_their_differences(model_factory, tmp_path):
    target = model_factory("two-t", seed=0)
    d1, d2 = model_factory("two-d1", seed=1), model_factory("two-d2", seed=2)
    shared = "model.layers.1.mlp.up_proj.weight"
    only1, only2 = "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"
    text = recipe(target, [(d1, [(shared, 0.25), (only1, 1.0)]), (d2, [(shared, 0.5), (only2, 1.0)])])
    out = run_merge(text, tmp_path / "out")
    t, s1, s2 = load_state(target), load_state(d1), load_state(d2)
    tf = t[shared].float()
    expected = (tf + 0.25 * (s1[shared].float() - tf) + 0.5 * (s2[shared].float() - tf)).to(t[shared].dtype)
    assert torch.allclose(out[shared], expected, atol=1e-7, rtol=0)
    assert torch.equal(out[only1], s1[only1]) and torch.equal(out[only2], s2[only2])


def test_strength_sum_above_one_names_tensor_and_donors(model_factory, tmp_path):
    target = model_factory("sum-t", seed=0)
    d1, d2 = model_factory("sum-d1", seed=1), model_factory("sum-d2", seed=2)
    name = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(Exception, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*sum to 1\.3"):
        run_merge(recipe(target, [(d1, [(name, 0.6)]), (d2, [(name, 0.7)])]), tmp_path / "out")
    extra = "parameters:\n  allow_extrapolation: true\n"
    out = run_merge(recipe(target, [(d1, [(name, 0.6)]), (d2, [(name, 0.7)])], extra), tmp_path / "ok")
    assert not torch.equal(out[name], load_state(target)[name])


@pytest.mark.parametrize(
    "in_dtype,dtype_line,out_dtype",
    [("bfloat16", "dtype: bfloat16", torch.bfloat16),
     ("float32", "dtype: float32\nout_dtype: bfloat16", torch.bfloat16),
     ("float32", "dtype: float32", torch.float32)],
)
def test_dtypes(in_dtype, dtype_line, out_dtype, model_factory, tmp_path):
    target = model_factory(f"dt-{in_dtype}-t", seed=0, dtype=in_dtype)
    donor = model_factory(f"dt-{in_dtype}-d", seed=1, dtype=in_dtype)
    full, half = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight"
    out = run_merge(recipe(target, [(donor, [(full, 1.0), (half, 0.5)])], dtype_line + "\n"), tmp_path / "o")
    t, d = load_state(target), load_state(donor)
    assert all(v.dtype == out_dtype for v in out.values())
    assert torch.equal(out[full], d[full].to(out_dtype))
    assert torch.equal(out["model.norm.weight"], t["model.norm.weight"].to(out_dtype))
    expected = torch.lerp(t[half].float(), d[half].float(), 0.5).to(
        t[half].dtype if in_dtype == "bfloat16" else torch.float32).to(out_dtype)
    assert torch.equal(out[half], expected)


def test_mixed_input_dtypes_with_out_dtype(model_factory, tmp_path):
    target = model_factory("mix-t", seed=0, dtype="float32")
    donor = model_factory("mix-d", seed=1, dtype="bfloat16")
    full = "model.layers.0.mlp.down_proj.weight"
    out = run_merge(recipe(target, [(donor, [(full, 1.0)])], "out_dtype: float32\n"), tmp_path / "o")
    assert torch.equal(out[full], load_state(donor)[full].float())
    assert torch.equal(out["model.layers.1.mlp.up_proj.weight"], load_state(target)["model.layers.1.mlp.up_proj.weight"])


def test_tied_embeddings_transplant(model_factory, tmp_path):
    target = model_factory("tied-t", seed=0, tie=True)
    donor = model_factory("tied-d", seed=1, tie=True)
    emb = "model.embed_tokens.weight"
    out = run_merge(recipe(target, [(donor, [(emb, 1.0)])]), tmp_path / "o")
    assert "lm_head.weight" not in out
    assert torch.equal(out[emb], load_state(donor)[emb])


def _logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 14, 20, 7]])).logits


def test_real_mergekit_yaml_console_script(model_factory, tmp_path):
    """`mergekit-yaml recipe.yml out/` from the test environment, then transformers loads it."""
    target, donor = model_factory("cli-t", seed=0), model_factory("cli-d", seed=1)
    picks = [("model.layers.1.mlp.down_proj.weight", 1.0), ("model.layers.0.self_attn.v_proj.weight", 0.5)]
    (tmp_path / "r.yml").write_text(recipe(target, [(donor, picks)]))
    exe = Path(sys.executable).with_name("mergekit-yaml")
    proc = subprocess.run([str(exe), "r.yml", "out", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

    # expected model: the target with those tensors replaced by hand
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    d = load_state(donor)
    sd = expected.state_dict()
    with torch.no_grad():
        sd[picks[0][0]].copy_(d[picks[0][0]])
        sd[picks[1][0]].copy_(torch.lerp(sd[picks[1][0]].float(), d[picks[1][0]].float(), 0.5))
        want = expected(torch.tensor([[1, 5, 9, 14, 20, 7]])).logits
    got = _logits(tmp_path / "out")
    assert torch.equal(got, want)
    assert not torch.equal(got, _logits(target))
