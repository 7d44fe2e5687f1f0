"""The bottom layer's single answers: one dtype table, one offline test, one device check, one strength rule."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mergekit_transplant.checkpoint import DTYPE_BYTES, read_index
from mergekit_transplant.checkpoint import dtypes as D
from mergekit_transplant.checkpoint.environment import check_device, hub_offline, resolve_device
from mergekit_transplant.checkpoint.tensor_io import TensorReader, hash_range
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.strength import strength_problem
from mergekit_transplant.testing import make_model, perturbed_copy


def test_every_dtype_view_comes_from_the_one_table():
    from mergekit_transplant import loading, publish, recipe

    assert DTYPE_BYTES is D.BYTES_PER_CODE and loading.DTYPES is D.MODEL_DTYPE_SPELLINGS
    assert recipe.DTYPE_NAMES == ("bfloat16", "float16", "float32", "float64")
    assert publish.CONFIG_DTYPE_BYTES["bfloat16"] == 2 and publish.CONFIG_DTYPE_BYTES["float8_e4m3fn"] == 1
    for d in D.DTYPES:  # the table agrees with torch and safetensors
        assert getattr(torch, d.name).itemsize == d.nbytes, d
    from safetensors.torch import _TYPES

    assert {code for code in _TYPES.values() if code in D.BYTES_PER_CODE} == set(_TYPES.values()) & set(D.BYTES_PER_CODE)
    assert loading.torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(TransplantError, match="bf16, bfloat16, float16, float32, float64, fp16, fp32"):
        loading.torch_dtype("float8")


@pytest.mark.parametrize("value, offline", [("1", True), ("ON", True), ("yes", True), ("true", True),
                                            ("0", False), ("", False), ("off", False)])
def test_hub_offline_accepts_huggingface_hubs_values(monkeypatch, value, offline):
    """One parser for every command: huggingface_hub's true values, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", value)
    assert hub_offline() is offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as huggingface_hub saw it at import
    assert hub_offline() is True


def test_device_auto_resolves_and_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == check_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(TransplantError, match="no CUDA GPU here .use --device cpu"):
        check_device("cuda")
    with pytest.raises(TransplantError, match="not a device torch knows"):
        check_device("gpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    with pytest.raises(TransplantError, match="sees only 1 CUDA GPU"):
        check_device("cuda:1")


def test_analyze_accepts_device_auto(tmp_path):
    """`analyze --device auto` runs (it was refused), as `eval` auto-detects."""
    from mergekit_transplant.cli import main

    make_model(tmp_path / "t", "llama", seed=0)
    perturbed_copy(tmp_path / "t", tmp_path / "d", ["model.layers.1.mlp.down_proj.weight"])
    (tmp_path / "w.jsonl").write_text("".join(json.dumps({"text": f"p{i} ab cd"}) + "\n"
                                              for i in range(3)))
    args = ["analyze", "--quiet", "--target", str(tmp_path / "t"), "--donor", str(tmp_path / "d"),
            "--workload", str(tmp_path / "w.jsonl"), "--plan"]
    result = CliRunner().invoke(main, [*args, "--device", "auto"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--device", "gpu9"])
    assert result.exit_code == 2 and "not a device torch knows" in result.output


@pytest.mark.parametrize("value, kwargs, problem", [
    (0.5, {}, None), (0, {}, None), (1, {}, None), (0, {"allow_zero": False}, "is outside (0, 1]"),
    (1.5, {}, "is outside [0, 1]"), (1.5, {"allow_extrapolation": True}, None), (-0.1, {}, "is outside [0, 1]"),
    (float("nan"), {"allow_extrapolation": True}, "is not finite"), (True, {}, "is not a number"),
    ("1", {}, "is not a number"), (2**60, {"allow_extrapolation": True}, "is out of range"),
    # the largest integer a float holds exactly is still a number; one more is not
    (2**53, {"allow_extrapolation": True}, None), (2**53 + 1, {"allow_extrapolation": True}, "is out of range"),
    (107, {"allow_extrapolation": True}, None), (1.5, {"allow_zero": False}, "is outside (0, 1]"),
])
def test_one_strength_rule(value, kwargs, problem):
    assert strength_problem(value, **kwargs) == problem


def test_the_four_strength_checks_share_the_rule():
    from mergekit_transplant.analysis.selection import validate
    from mergekit_transplant.method import StrengthError, check_strengths
    from mergekit_transplant.recipe import parse_recipe
    from mergekit_transplant.sweep.runner import SweepSettings

    with pytest.raises(TransplantError, match=r"strength 1.5 for m is outside \[0, 1\] \(set parameters"):
        parse_recipe("merge_method: transplant\nbase_model: t\nmodels:\n  - model: m\n"
                     "    parameters: {strength: 1.5}\n")
    with pytest.raises(StrengthError, match=r"strength nan for donor d is not finite"):
        check_strengths([("d", float("nan"))], "w")
    with pytest.raises(TransplantError, match=r"--strength must be in \(0, 1\], got 0"):
        validate(top_k=1, param_budget=None, strength=0, strength_mode="constant")
    with pytest.raises(TransplantError, match=r"--strength values must be in \(0, 1\]"):
        SweepSettings(ks=[1], strengths=[0.0, 0.5], select_tasks=["a"], report_tasks=["a"])


def test_tensor_reader_reads_each_tensor_by_its_byte_range(tmp_path):
    from safetensors import safe_open

    make_model(tmp_path / "m", "llama", seed=3, dtype="bfloat16")
    index = read_index(str(tmp_path / "m"))
    with TensorReader(index) as reader, safe_open(next(iter(index.tensors.values())).file, "pt") as fh:
        for name in list(index.tensors)[:6]:
            fresh, reused = reader.get(name), reader.get(name, reuse=True)
            assert torch.equal(fresh, fh.get_tensor(name)) and torch.equal(reused, fresh)
            assert fresh.dtype == torch.bfloat16
        assert reader.bytes_read == 2 * sum(index.tensors[n].nbytes for n in list(index.tensors)[:6])
    info = next(iter(index.tensors.values()))
    assert len(hash_range(info)) == 64
