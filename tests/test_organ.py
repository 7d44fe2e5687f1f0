"""Organ files: only the transplanted donor tensors, loadable by mergekit, verified before use."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mergekit_transplant.adapter.loader_cache import fresh_loaders
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergekit_transplant.checkpoint import tensor_io
from mergekit_transplant.checkpoint import read_index
from mergekit_transplant.cli import main
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.flows import apply_organ, run_transplant
from mergekit_transplant.organ import (
    MANIFEST, extract_organ, verify_organ, write_tensor_folder,
)
from mergekit_transplant.testing import load_state, make_model, perturbed_copy

BIN = Path(sys.executable).parent
LAYER1 = "model.layers.1."
CHANGED = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
           "model.layers.1.self_attn.v_proj.weight", "model.layers.1.input_layernorm.weight",
           "model.layers.0.mlp.up_proj.weight"]


def recipe_text(target: str, donor: str, strengths: dict) -> str:
    lines = ["merge_method: transplant", f"base_model: {target}", "models:", f"  - model: {donor}",
             "    parameters:", "      strength:"]
    for filt, value in strengths.items():
        lines += [f"        - filter: {filt}", f"          value: {value}"]
    lines += ["        - value: 0", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("organwork")
    make_model(root / "models" / "target", "llama", seed=0)
    perturbed_copy(root / "models" / "target", root / "models" / "donor", CHANGED)
    (root / "recipe.yml").write_text(recipe_text("models/target", "models/donor", {
        "model.layers.1.mlp.down_proj.weight": 1.0, "model.layers.0.self_attn.q_proj.weight": 0.5,
    }))
    fresh_loaders()
    cwd = os.getcwd()
    os.chdir(root)  # recipes name models relative to the cwd, as mergekit resolves them
    try:
        yield root
    finally:
        os.chdir(cwd)


def merged_in_process(recipe: Path, out: Path) -> dict:
    fresh_loaders()
    run_transplant(recipe, out, write_card=False)
    return load_state(out)


def tensor_sha256(state: dict) -> dict:
    return {k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() + str(v.dtype)
            for k, v in state.items()}


@pytest.fixture(scope="module")
def organ(work):
    return extract_organ("recipe.yml", "organs/math")


def test_organ_holds_only_the_transplanted_tensors(work, organ):
    m = organ.manifest
    assert [t.name for t in m.donors[0].tensors] == [
        "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    with safe_open("organs/math/model.safetensors", "pt") as fh:
        assert sorted(fh.keys()) == sorted(t.name for t in m.donors[0].tensors)
        donor = load_file("models/donor/model.safetensors")
        for t in m.donors[0].tensors:
            got = fh.get_tensor(t.name)
            assert torch.equal(got, donor[t.name]) and got.dtype == donor[t.name].dtype
            assert t.sha256 == hashlib.sha256(got.numpy().tobytes()).hexdigest()
            assert list(t.shape) == list(got.shape) and t.dtype == "F32"
    # the organ's size is the transplanted share of the donor, not the donor
    organ_bytes = os.path.getsize("organs/math/model.safetensors")
    donor_bytes = os.path.getsize("models/donor/model.safetensors")
    assert organ_bytes < 0.2 * donor_bytes
    assert m.nbytes == 4 * m.parameters and m.parameters == 4096 + 8192
    # manifest: donor, target and its fingerprint, the recipe
    data = json.loads(Path("organs/math", MANIFEST).read_text())
    assert data["donors"][0]["ref"] == "models/donor" and data["donors"][0]["revision"] is None
    assert data["target"]["ref"] == "models/target"
    assert data["target"]["fingerprint"] == read_index("models/target").fingerprint()
    assert data["recipe"] == Path("recipe.yml").read_text()
    assert sorted(os.listdir("organs/math")) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", MANIFEST, "recipe.yml"])


@pytest.mark.slow
def test_mergekit_yaml_on_the_organ_recipe_is_bit_identical(work, organ, tmp_path):
    reference = tensor_sha256(merged_in_process(Path("recipe.yml"), tmp_path / "full"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([str(BIN / "mergekit-yaml"), "organs/math/recipe.yml", str(tmp_path / "via-organ")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tensor_sha256(load_state(tmp_path / "via-organ")) == reference


def test_organ_recipe_is_the_same_recipe_reading_from_the_organ(organ):
    original = yaml.safe_load(Path("recipe.yml").read_text())
    rewritten = yaml.safe_load(Path("organs/math/recipe.yml").read_text())
    assert rewritten["models"][0]["model"] == "organs/math"
    original["models"][0]["model"] = "organs/math"
    assert rewritten == original


def test_layer_block_organ_sharded(work, tmp_path):
    """A whole decoder layer (filter `model.layers.1.`), the NOT paper's unit, in small shards."""
    Path("block.yml").write_text(recipe_text("models/target", "models/donor", {LAYER1: 1.0}))
    result = extract_organ("block.yml", tmp_path / "block", max_shard_bytes=20_000)
    names = [t.name for t in result.manifest.donors[0].tensors]
    layer1 = sorted(n for n in read_index("models/target").tensors if n.startswith(LAYER1))
    assert sorted(names) == layer1 and len(layer1) == 9  # 7 linears + 2 norms
    shards = sorted(p.name for p in (tmp_path / "block").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "block" / "model.safetensors.index.json").is_file()
    assert verify_organ(tmp_path / "block").ok

    full = merged_in_process(Path("block.yml"), tmp_path / "full")
    via = merged_in_process(tmp_path / "block" / "recipe.yml", tmp_path / "via")
    assert tensor_sha256(via) == tensor_sha256(full)
    donor, target = load_state("models/donor"), load_state("models/target")
    for name, t in via.items():
        assert torch.equal(t, donor[name] if name.startswith(LAYER1) else target[name])



def _shards(folder: Path) -> list:
    """Tensor names per shard file, in file order."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        with safe_open(str(folder / "model.safetensors"), "pt") as fh:
            return [sorted(fh.keys())]
    weight_map = json.loads(index.read_text())["weight_map"]
    return [sorted(n for n, f in weight_map.items() if f == name) for name in sorted(set(weight_map.values()))]


def test_out_shard_size_counts_as_mergekits_own_writer(work, tmp_path):
    """--out-shard-size 20K: mergekit's syntax and mergekit's count. The same tensors written by mergekit's
    TensorWriter with the same limit, in the same order, land in the same shards. (mergekit 0.1.5 compares
    bytes of tensor data although its --help says parameters; a count of parameters shards differently here.)"""
    from mergekit.io.tensor_writer import TensorWriter

    Path("block.yml").write_text(recipe_text("models/target", "models/donor", {LAYER1: 1.0}))
    result = CliRunner().invoke(main, ["organ", "extract", "block.yml", "-o", str(tmp_path / "o"),
                                       "--out-shard-size", "20K"])
    assert result.exit_code == 0, result.output
    ours = _shards(tmp_path / "o")
    assert len(ours) > 1
    order = [t["name"] for t in json.loads((tmp_path / "o" / MANIFEST).read_text())["donors"][0]["tensors"]]
    donor = load_state("models/donor")
    writer = TensorWriter(str(tmp_path / "mk"), max_shard_size=20_000)
    for name in order:
        writer.save_tensor(name, donor[name])
    writer.finalize()
    assert _shards(tmp_path / "mk") == ours

    by_parameters, size = [[]], 0
    for name in order:
        if by_parameters[-1] and size + donor[name].numel() > 20_000:
            by_parameters.append([])
            size = 0
        by_parameters[-1].append(name)
        size += donor[name].numel()
    assert sorted(map(sorted, by_parameters)) != sorted(ours)  # the test can tell the two counts apart


def test_out_shard_size_syntax_and_the_old_spelling(work, tmp_path):
    runner = CliRunner()
    Path("block.yml").write_text(recipe_text("models/target", "models/donor", {LAYER1: 1.0}))
    bad = runner.invoke(main, ["organ", "extract", "block.yml", "-o", str(tmp_path / "bad"), "--out-shard-size", "5G"])
    assert bad.exit_code == 2 and "'5G' is not a size" in bad.output and "K, M or B" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()
    big = runner.invoke(main, ["organ", "extract", "block.yml", "-o", str(tmp_path / "one"), "--out-shard-size", "5B"])
    assert big.exit_code == 0 and _shards(tmp_path / "one") == [sorted(
        n for n in read_index("models/target").tensors if n.startswith(LAYER1))], big.output  # 5B = 5e9, one file
    old = runner.invoke(main, ["organ", "extract", "block.yml", "-o", str(tmp_path / "old"), "--max-shard-size", "20k"])
    assert old.exit_code == 0, old.output
    assert "warning: --max-shard-size is deprecated; use --out-shard-size" in old.output
    new = runner.invoke(main, ["organ", "extract", "block.yml", "-o", str(tmp_path / "new"), "--out-shard-size", "20K"])
    assert new.exit_code == 0 and _shards(tmp_path / "old") == _shards(tmp_path / "new"), new.output
    assert "--max-shard-size" not in runner.invoke(main, ["organ", "extract", "--help"]).output

def test_two_donors_get_one_folder_each(work, tmp_path):
    perturbed_copy(Path("models/target"), Path("models/donor2"), ["model.layers.0.mlp.down_proj.weight"], seed=7)
    text = recipe_text("models/target", "models/donor", {"model.layers.1.mlp.down_proj.weight": 1.0})
    text += "\n".join(["  - model: models/donor2", "    parameters:", "      strength:",
                       "        - filter: model.layers.0.mlp.down_proj.weight", "          value: 0.25",
                       "        - value: 0", ""])
    Path("two.yml").write_text(text)
    result = extract_organ("two.yml", tmp_path / "two")
    assert [(d.folder, d.ref, len(d.tensors)) for d in result.manifest.donors] == [
        ("donor-1", "models/donor", 1), ("donor-2", "models/donor2", 1)]
    full = merged_in_process(Path("two.yml"), tmp_path / "full")
    via = merged_in_process(tmp_path / "two" / "recipe.yml", tmp_path / "via")
    assert tensor_sha256(via) == tensor_sha256(full)


@pytest.mark.parametrize("arch,tie", [("olmo", True), ("gemma2", False)])
def test_mergekit_architecture_logic_with_an_organ(tmp_path, arch, tie):
    """Inferred architectures (olmo has no mergekit JSON definition: tensor names decide, and
    an organ lacks most) and tied / optional weights give the same output through the organ."""
    make_model(tmp_path / "t", arch, seed=3, tie=tie)
    perturbed_copy(tmp_path / "t", tmp_path / "d", ["model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"])
    (tmp_path / "r.yml").write_text(recipe_text(str(tmp_path / "t"), str(tmp_path / "d"), {
        "model.layers.1.mlp.down_proj.weight": 1.0, "model.embed_tokens.weight": 0.5}))
    extract_organ(tmp_path / "r.yml", tmp_path / "o")
    full = merged_in_process(tmp_path / "r.yml", tmp_path / "full")
    via = merged_in_process(tmp_path / "o" / "recipe.yml", tmp_path / "via")
    assert sorted(full) == sorted(load_state(tmp_path / "t"))
    assert tensor_sha256(via) == tensor_sha256(full)


# --------------------------------------------------------------------------- refusing bad organs


@pytest.fixture
def copy(organ, tmp_path):
    dst = tmp_path / "organ"
    shutil.copytree("organs/math", dst)
    return dst


def _rewrite_tensors(folder: Path, change) -> None:
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_tampered_tensor_is_refused_everywhere(work, copy, tmp_path):
    def flip(state):
        state["model.layers.1.mlp.down_proj.weight"][0, 0] += 1.0

    _rewrite_tensors(copy, flip)
    report = verify_organ(copy)
    assert not report.ok
    assert report.errors == [f"{copy}: tensor 'model.layers.1.mlp.down_proj.weight' was modified "
                             "(sha256 differs from the manifest)"]
    result = CliRunner().invoke(main, ["organ", "verify", str(copy)])
    assert result.exit_code == 2 and "was modified" in result.output
    with pytest.raises(TransplantError, match="was modified"):
        apply_organ(copy, tmp_path / "out", target="models/target")
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipe_text("models/target", str(copy), {"model.layers.1.mlp.down_proj.weight": 1}))
    with pytest.raises(TransplantError, match="was modified"):  # `merge` verifies organs too
        run_transplant(recipe, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("tamper,message", [
    ("shape", "the manifest says F32[64, 128]"),
    ("extra", "not listed in the manifest"),
    ("missing", "is missing"),
    ("config", "config.json was modified"),
    ("manifest-folder", "is not allowed"),
    ("manifest-version", "organ format version 2 is not one this version reads (1); upgrade mergekit-transplant"),
])
def test_mismatched_organ_is_refused(copy, tamper, message):
    if tamper == "shape":
        _rewrite_tensors(copy, lambda s: s.update({"model.layers.1.mlp.down_proj.weight":
                                                   s["model.layers.1.mlp.down_proj.weight"][:, :64].contiguous()}))
    elif tamper == "extra":
        _rewrite_tensors(copy, lambda s: s.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(128, 64)}))
    elif tamper == "missing":
        _rewrite_tensors(copy, lambda s: s.pop("model.layers.0.self_attn.q_proj.weight"))
    elif tamper == "config":
        cfg = json.loads((copy / "config.json").read_text())
        cfg["architectures"] = ["Qwen2ForCausalLM"]
        (copy / "config.json").write_text(json.dumps(cfg))
    elif tamper == "manifest-folder":
        data = json.loads((copy / MANIFEST).read_text())
        data["donors"][0]["folder"] = "../../elsewhere"
        (copy / MANIFEST).write_text(json.dumps(data))
    elif tamper == "manifest-version":  # a newer organ format: one line, exit 2
        data = json.loads((copy / MANIFEST).read_text())
        data["format_version"] = 2
        (copy / MANIFEST).write_text(json.dumps(data))
        result = CliRunner().invoke(main, ["organ", "verify", str(copy)])
        assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
        assert result.output.startswith("error: ") and message in result.output
    if tamper.startswith("manifest-"):
        with pytest.raises(TransplantError, match=re.escape(message)):
            verify_organ(copy)
        return
    report = verify_organ(copy)
    assert not report.ok and any(message in e for e in report.errors), report.errors


def test_organ_refused_for_a_target_it_does_not_fit(organ, tmp_path):
    other_arch = make_model(tmp_path / "qwen", "qwen2", seed=0, tokenizer=False)
    report = verify_organ("organs/math", target=str(other_arch))
    assert not report.ok and "this organ was made for LlamaForCausalLM" in report.errors[0]
    narrow = make_model(tmp_path / "narrow", "llama", seed=0, tokenizer=False, intermediate=96)
    report = verify_organ("organs/math", target=str(narrow))
    assert report.errors == [
        f"shape mismatch for model.layers.1.mlp.down_proj.weight: target {narrow} [64, 96], organ [64, 128]"]
    result = CliRunner().invoke(main, ["organ", "apply", "organs/math", str(tmp_path / "o"), "--target", str(narrow)])
    assert result.exit_code == 2 and "shape mismatch" in result.output and not (tmp_path / "o").exists()
    # same architecture and shapes, different weights: fits, with a warning
    sibling = make_model(tmp_path / "sibling", "llama", seed=5, tokenizer=False)
    report = verify_organ("organs/math", target=str(sibling))
    assert report.ok and report.warnings == []  # same layout and config: only the weights differ
    cfg = json.loads((sibling / "config.json").read_text())
    cfg["rope_theta"] = 5000.0
    (sibling / "config.json").write_text(json.dumps(cfg))
    report = verify_organ("organs/math", target=str(sibling))
    assert report.ok and "config.json differs" in report.warnings[0]


def test_organ_apply_from_anywhere(organ, tmp_path):
    """A stranger's use: another cwd, the target given explicitly; output equals the full merge."""
    reference = tensor_sha256(merged_in_process(Path("recipe.yml"), tmp_path / "full"))
    organ_dir, target = Path("organs/math").resolve(), Path("models/target").resolve()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(main, ["organ", "apply", str(organ_dir), "out", "--target", str(target)])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert tensor_sha256(load_state(out)) == reference
    assert (out / "README.md").is_file() and (out / "mergekit_config.yml").is_file()


def test_output_is_atomic_and_never_clobbered(work, organ, tmp_path, monkeypatch):
    with pytest.raises(TransplantError, match="not empty"):
        extract_organ("recipe.yml", "organs/math")
    with pytest.raises(TransplantError, match="overlaps the model folder"):
        extract_organ("recipe.yml", "models/donor", overwrite=True)
    result = CliRunner().invoke(main, ["organ", "extract", "recipe.yml", "-o", "organs/math"])
    assert result.exit_code == 2 and "--overwrite" in result.output

    calls = {"n": 0}
    real = tensor_io._write_safetensors

    def fail_midway(file, entries, progress=None):
        calls["n"] += 1
        real(file, entries[:1], progress)
        raise KeyboardInterrupt("simulated Ctrl-C")

    monkeypatch.setattr(tensor_io, "_write_safetensors", fail_midway)
    dst = tmp_path / "new" / "organ"
    with pytest.raises(KeyboardInterrupt):
        extract_organ("recipe.yml", dst)
    assert calls["n"] == 1 and not dst.exists() and os.listdir(dst.parent) == []


def test_names_never_become_paths(tmp_path):
    """Tensor names are keys inside safetensors; only names chosen here reach the filesystem."""
    src = tmp_path / "src.safetensors"
    save_file({"../../escape/x.weight": torch.ones(3), "/abs/y": torch.zeros(2)}, src)
    from mergekit_transplant.checkpoint import read_header

    infos = list(read_header(src).values())
    write_tensor_folder(tmp_path / "organ", infos, max_shard_bytes=8)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "organ", "organ/model-00001-of-00002.safetensors", "organ/model-00002-of-00002.safetensors",
        "organ/model.safetensors.index.json", "src.safetensors"]
    state = load_state(tmp_path / "organ")
    assert torch.equal(state["../../escape/x.weight"], torch.ones(3))


# --------------------------------------------------------------------------- recipe sharing


@pytest.mark.slow
def test_check_offline_lists_the_files_a_hub_recipe_needs(tmp_path):
    """Hub ids, HF_HUB_OFFLINE=1, an empty HF cache: `check` names what to download."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / "hub.yml").write_text(recipe_text("acme/tiny-target", f"acme/tiny-donor@{sha}",
                                                  {"model.layers.1.mlp.down_proj.weight": 1}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([str(BIN / "mergekit-transplant"), "check", "hub.yml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "model 'acme/tiny-target' is a Hub id that is not available here" in errors[0]
    assert "config.json" in errors[0] and "model.safetensors" in errors[0]
    assert "hf download acme/tiny-target" in errors[0]
    assert f"hf download acme/tiny-donor --revision {sha}" in errors[1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "hf-home" / "hub").exists()


def test_organ_needs_the_read_planning_hook(organ, tmp_path, monkeypatch):
    """An organ lacks the zero-strength tensors; with the hook switched off mergekit would want them."""
    from mergekit_transplant.adapter import registration

    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    with pytest.raises(TransplantError, match="unset it"):
        run_transplant("organs/math/recipe.yml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["merge", "block.yml"], ["organ", "apply", "organ-dir"]])
def test_a_bad_mergekit_shard_size_is_a_usage_error_not_a_bug(work, tmp_path, command):
    """mergekit's own --out-shard-size type raises ValueError on '5G' (exit 1, 'a bug'); ours exits 2."""
    Path("block.yml").write_text(recipe_text("models/target", "models/donor", {LAYER1: 1.0}))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, command + [str(out), "--out-shard-size", "5G"])
    assert result.exit_code == 2 and "'5G' is not a size" in result.output, result.output
    assert not out.exists()
