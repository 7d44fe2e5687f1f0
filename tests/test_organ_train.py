"""``organ train``: only the block learns, the organ is the existing format, runs are reproducible and resumable."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_transplant.organ.training import OrganTrainSettings, train_organ
from mergekit_transplant.organ.training import trainer as trainer_module
from mergekit_transplant.testing import WORDS, load_state, make_model, perturbed_copy
from mergekit_transplant.testing_cli import assert_clean_error, default_sigint, invoke, leftovers

BIN = Path(sys.executable).parent
FAST = ["--steps", "3", "--batch-size", "2", "--max-length", "16", "--lr", "1e-2", "--quiet"]


def corpus_file(path: Path, docs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = WORDS[:12]  # a narrow "domain": a few words in a random order
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(20))}) + "\n"
                            for _ in range(docs)))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("organtrain")
    for arch in ("llama", "qwen2", "gemma2", "phi3"):
        make_model(root / arch, arch, layers=4, seed=3)
    corpus_file(root / "corpus.jsonl")
    (root / "eval.txt").write_text("\n".join(json.loads(l)["text"] for l in
                                             corpus_file(root / "e.jsonl", 6, seed=9).read_text().splitlines()))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings(work: Path, out: Path, model: str = "llama", **kw) -> OrganTrainSettings:
    base = dict(model=str(work / model), corpus=str(work / "corpus.jsonl"), output=str(out), steps=3, batch_size=2,
                max_length=16, lr=1e-2)
    base.update(kw)
    return OrganTrainSettings(**base)


@pytest.fixture
def captured(monkeypatch):
    """The model and optimizer the trainer builds, to look at them after training."""
    seen = {}
    load = trainer_module.__dict__.get("load_causal_lm")
    from mergekit_transplant import loading

    real_load = loading.load_causal_lm

    def spy_load(*a, **k):
        model, tok = real_load(*a, **k)
        seen["model"] = model
        return model, tok

    monkeypatch.setattr(loading, "load_causal_lm", spy_load)
    real_adamw = torch.optim.AdamW

    class SpyAdamW(real_adamw):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["optimizer"] = self

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    assert load is None  # the trainer imports it at call time, so the spy above is what it gets
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "phi3"])
def test_only_the_block_learns(work, tmp_path, arch, captured):
    base = load_state(work / arch)
    result = train_organ(settings(work, tmp_path / "organ", arch), progress=False)
    assert (result.block.start, result.block.end) == (1, 3)  # auto on 4 layers: floor(4/3)=1, 3 layers
    trained = {n: p.detach() for n, p in captured["model"].named_parameters()}
    inside = [n for n in trained if result.block.contains(n)]
    assert inside and len(inside) < len(trained)
    for name, value in trained.items():
        if name in inside:
            continue
        assert value.dtype == base[name].dtype and torch.equal(value, base[name]), f"{name} changed"
    assert any(not torch.equal(trained[n], base[n]) for n in inside), "the block did not learn"
    # optimizer state exists for the block's parameters and nothing else
    opt = captured["optimizer"]
    with_state = {id(p) for p in opt.state}
    block_ids = {id(p) for n, p in captured["model"].named_parameters() if n in inside}
    assert with_state == block_ids
    assert all(not p.requires_grad for n, p in captured["model"].named_parameters() if n not in inside)
    # the organ holds exactly the block's tensors, as trained (in the base model's dtype)
    organ = load_state(tmp_path / "organ")
    assert sorted(organ) == sorted(inside)
    assert all(torch.equal(organ[n], trained[n]) for n in organ)


def test_organ_json_records_the_training(work, tmp_path):
    out = tmp_path / "organ"
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", work / "corpus.jsonl", "-o", out,
                           "--eval-corpus", work / "eval.txt", "--eval-every", "2", "--layers", "2-3", "--seed", "7",
                           *FAST])
    assert code == 0, output
    assert "layers 2-3 of 4" in output.splitlines()[0]  # the block is printed before training
    data = json.loads((out / "organ.json").read_text())
    assert data["kind"] == "trained"
    t = data["training"]
    from mergekit_transplant.checkpoint import read_index

    assert t["base_model"]["fingerprint"] == read_index(str(work / "llama")).fingerprint()
    assert (t["block"]["start"], t["block"]["end"], t["block"]["auto"]) == (2, 3, False)
    assert t["corpus"]["sha256"] == sha(work / "corpus.jsonl") and t["corpus"]["tokens"] > 0
    assert t["hyperparameters"]["lr"] == 1e-2 and t["hyperparameters"]["max_length"] == 16
    assert t["seed"] == 7 and t["steps"] == 3 and [s for s, _ in t["loss_curve"]] == [1, 2, 3]
    assert [s for s, _ in t["evals"]] == [0, 2, 3]
    assert t["perplexity_after"] < t["perplexity_before"]
    assert t["wall_time_s"] > 0 and t["trainable_parameters"] == data["parameters"]
    import re

    from mergekit_transplant.errors import TransplantError
    from mergekit_transplant.organ.training import TrainRecord

    assert TrainRecord.from_json(t).to_json() == t
    with pytest.raises(TransplantError, match=re.escape(
            "organ.json: training record version 2 is not one this version reads (1); upgrade mergekit-transplant")):
        TrainRecord.from_json({**t, "record_version": 2})
    recipe = yaml.safe_load((out / "recipe.yml").read_text())
    assert recipe["base_model"] == str(work / "llama")
    assert [c.get("filter") for c in recipe["models"][0]["parameters"]["strength"]] == [
        "model.layers.2.", "model.layers.3.", None]
    assert [c["value"] for c in recipe["models"][0]["parameters"]["strength"]] == [1.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def organ(work, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "organ"
    train_organ(settings(work, out, eval_corpus=str(work / "eval.txt")), progress=False)
    return out


@pytest.mark.slow
def test_mergekit_yaml_gives_the_adapted_model(work, organ, tmp_path):
    merged = tmp_path / "merged"
    proc = subprocess.run([str(BIN / "mergekit-yaml"), str(organ / "recipe.yml"), str(merged), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    base, out, parts = load_state(work / "llama"), load_state(merged), load_state(organ)
    assert sorted(out) == sorted(base)
    for name in base:
        assert torch.equal(out[name], parts.get(name, base[name])), name
    card = (merged / "README.md").read_text()
    corpus_sha = json.loads((organ / "organ.json").read_text())["training"]["corpus"]["sha256"]
    assert "A trained organ was applied" in card and corpus_sha in card and str(work / "llama") in card
    assert "No training was involved" not in card


def test_verify_apply_check_card_work_on_it(work, organ, tmp_path):
    code, output = invoke(["organ", "verify", organ, "--target", work / "llama"])
    assert code == 0 and "27 tensor(s) match" in output, output
    code, output = invoke(["organ", "apply", organ, tmp_path / "out"])
    assert code == 0, output
    card = (tmp_path / "out" / "README.md").read_text()
    assert "A trained organ was applied" in card
    assert json.loads((organ / "organ.json").read_text())["training"]["corpus"]["sha256"] in card
    code, output = invoke(["card", tmp_path / "out"])
    assert code == 0 and "A trained organ was applied" in (tmp_path / "out" / "README.md").read_text(), output
    (tmp_path / "r.yml").write_text(yaml.safe_dump({**yaml.safe_load((organ / "recipe.yml").read_text()),
                                                    "models": [{"model": str(organ), "parameters": yaml.safe_load(
                                                        (organ / "recipe.yml").read_text())["models"][0]["parameters"]}]}))
    code, output = invoke(["check", tmp_path / "r.yml"])
    assert code == 0 and "model.layers.3.mlp.down_proj.weight" in output, output


def test_apply_into_a_sibling(work, organ, tmp_path):
    sibling = perturbed_copy(work / "llama", tmp_path / "sibling", ["model.layers.0.mlp.up_proj.weight",
                                                                     "model.layers.2.mlp.up_proj.weight",
                                                                     "model.norm.weight"])
    code, output = invoke(["organ", "apply", organ, tmp_path / "out", "--target", sibling])
    assert code == 0, output
    out, sib, parts = load_state(tmp_path / "out"), load_state(sibling), load_state(organ)
    for name in sib:
        assert torch.equal(out[name], parts.get(name, sib[name])), name
    assert not torch.equal(out["model.layers.0.mlp.up_proj.weight"], load_state(work / "llama")[
        "model.layers.0.mlp.up_proj.weight"])


def test_apply_at_another_layer_leaves_the_organ_unchanged(work, organ, tmp_path):
    before = {p.name: sha(p) for p in organ.iterdir()}
    code, output = invoke(["organ", "apply", organ, tmp_path / "out", "--at", "0"])
    assert code == 0, output
    assert {p.name: sha(p) for p in organ.iterdir()} == before
    out, base, parts = load_state(tmp_path / "out"), load_state(work / "llama"), load_state(organ)
    for name, value in parts.items():  # layers 1-3 of the organ are layers 0-2 of the output
        layer = int(name.split(".")[2])
        moved = name.replace(f"layers.{layer}.", f"layers.{layer - 1}.", 1)
        assert torch.equal(out[moved], value), moved
    for name in base:
        if name.startswith("model.layers.3."):
            assert torch.equal(out[name], base[name]), name
    assert "inserted here at layers 0-2" in (tmp_path / "out" / "README.md").read_text()
    code, output = invoke(["organ", "apply", organ, tmp_path / "out2", "--at", "2"])
    assert_clean_error(code, output, "--at 2", "layers 0-3")
    assert not (tmp_path / "out2").exists()


def test_incompatible_recipient_is_refused_naming_tensor_and_shapes(work, organ, tmp_path):
    other = make_model(tmp_path / "wide", "llama", layers=4, intermediate=96)
    code, output = invoke(["organ", "apply", organ, tmp_path / "out", "--target", other])
    assert_clean_error(code, output, "model.layers.1.mlp.down_proj.weight", "[64, 96]", "[64, 128]")
    assert not (tmp_path / "out").exists()
    data = yaml.safe_load((organ / "recipe.yml").read_text())
    data["base_model"], data["models"][0]["model"] = str(other), str(organ)
    (tmp_path / "r.yml").write_text(yaml.safe_dump(data))
    code, output = invoke(["check", tmp_path / "r.yml"])
    assert_clean_error(code, output, "shape mismatch for model.layers.1.mlp.down_proj.weight", "[64, 96]",
                       "[64, 128]")


def test_two_runs_with_one_seed_give_identical_bytes(work, tmp_path):
    for name in ("a", "b"):
        train_organ(settings(work, tmp_path / name, grad_accum=2, steps=2), progress=False)
    assert sha(tmp_path / "a" / "model.safetensors") == sha(tmp_path / "b" / "model.safetensors")
    train_organ(settings(work, tmp_path / "c", grad_accum=2, steps=2, seed=1), progress=False)
    assert sha(tmp_path / "a" / "model.safetensors") != sha(tmp_path / "c" / "model.safetensors")


def test_resume_reaches_the_same_bytes(work, tmp_path, monkeypatch):
    kw = dict(steps=5, save_every=2, warmup=2)
    train_organ(settings(work, tmp_path / "whole", **kw), progress=False)
    real_save = trainer_module.save_state

    def save_then_die(folder, state):
        real_save(folder, state)
        if state.step == 4:
            raise KeyboardInterrupt("simulated Ctrl-C after the step-4 save")

    monkeypatch.setattr(trainer_module, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_organ(settings(work, tmp_path / "cut", **kw), progress=False)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial" / "state.json").is_file()
    monkeypatch.setattr(trainer_module, "save_state", real_save)
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", work / "corpus.jsonl",
                           "-o", tmp_path / "cut", "--steps", "5", "--save-every", "2", "--warmup", "2",
                           "--batch-size", "2", "--max-length", "16", "--lr", "1e-2"])
    assert_clean_error(code, output, "cut.partial", "--resume")  # a saved state is not silently discarded
    result = train_organ(settings(work, tmp_path / "cut", resume=True, **kw), progress=False)
    assert sha(tmp_path / "whole" / "model.safetensors") == sha(tmp_path / "cut" / "model.safetensors")
    assert [s for s, _ in result.record.loss_curve] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "cut.partial").exists()
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", work / "corpus.jsonl",
                           "-o", tmp_path / "none", "--resume", *FAST])
    assert_clean_error(code, output, "--resume", "none.partial")


def test_resume_refuses_other_settings(work, tmp_path, monkeypatch):
    real_save = trainer_module.save_state

    def save_then_die(folder, state):
        real_save(folder, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_organ(settings(work, tmp_path / "o", steps=4, save_every=1), progress=False)
    monkeypatch.setattr(trainer_module, "save_state", real_save)
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", work / "corpus.jsonl",
                           "-o", tmp_path / "o", "--steps", "4", "--lr", "5e-3", "--resume", "--batch-size", "2",
                           "--max-length", "16"])
    assert_clean_error(code, output, "--resume", "other settings")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_leaves_no_half_written_organ(work, tmp_path, sig):
    out = tmp_path / "organ"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [str(BIN / "mergekit-transplant"), "organ", "train", "--model", str(work / "llama"), "--corpus",
         str(work / "corpus.jsonl"), "-o", str(out), "--steps", "100000", "--save-every", "1", "--batch-size", "2",
         "--max-length", "16", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=default_sigint)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "organ.partial" / "state.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 100000-step run behind when an assertion or a timeout fails
    assert proc.returncode == 130, err
    assert "nothing was half-written" in err and "--resume" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []
    state = json.loads((tmp_path / "organ.partial" / "state.json").read_text())
    assert state["step"] >= 1


def test_settings_and_cli_options_agree():
    from dataclasses import fields

    from mergekit_transplant.cli.organ import train

    options = {p.name: p for p in train.params}
    for f in fields(OrganTrainSettings):
        assert f.name in options, f.name
        assert options[f.name].help == f.metadata["help"]
        assert f.metadata["help"].strip()


def test_gradient_accumulation_and_bf16_autocast_run(work, tmp_path):
    result = train_organ(settings(work, tmp_path / "o", grad_accum=2, mixed_precision="bf16", steps=2),
                         progress=False)
    assert result.record.tokens_trained == 2 * 2 * 2 * 16
    assert result.record.runtime["mixed_precision"] == "bf16"


# --------------------------------------------------------------------------- bad input


def _train(work, out, *extra, corpus=None, model="llama"):
    return invoke(["organ", "train", "--model", work / model if isinstance(model, str) else model,
                   "--corpus", corpus or work / "corpus.jsonl", "-o", out, *FAST, *extra])


def test_bad_corpus(work, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    code, output = _train(work, tmp_path / "o", corpus=tmp_path / "empty.jsonl")
    assert_clean_error(code, output, "--corpus", "no prompts")
    (tmp_path / "short.txt").write_text("the cat\n")
    code, output = _train(work, tmp_path / "o", corpus=tmp_path / "short.txt")
    assert_clean_error(code, output, "--corpus", "fewer than one batch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "short.txt"]


@pytest.mark.parametrize("layers, needle", [("1-9", "out of range, the model has layers 0-3"),
                                            ("3-1", "start 3 is after end 1"), ("-1-2", "out of range"),
                                            ("x", "expected S-E")])
def test_bad_layers(work, tmp_path, layers, needle):
    code, output = _train(work, tmp_path / "o", "--layers", layers)
    assert_clean_error(code, output, "--layers", needle)
    assert list(tmp_path.iterdir()) == []


def test_custom_code_and_pickle_need_consent(work, tmp_path):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(work / "llama", custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (custom / "config.json").write_text(json.dumps(cfg))
    code, output = _train(work, tmp_path / "o", model=custom)
    assert_clean_error(code, output, "--model", "--trust-remote-code")
    pick = tmp_path / "pick"
    shutil.copytree(work / "llama", pick)
    from safetensors.torch import load_file

    torch.save(load_file(pick / "model.safetensors"), pick / "pytorch_model.bin")
    (pick / "model.safetensors").unlink()
    code, output = _train(work, tmp_path / "o", model=pick)
    assert_clean_error(code, output, "--model", "--allow-pickle")
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(work, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    code, output = _train(work, tmp_path / "o")
    assert_clean_error(code, output, "--overwrite")
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]
    code, output = _train(work, tmp_path / "o", "--overwrite")
    assert code == 0 and (tmp_path / "o" / "organ.json").is_file(), output


def test_nonfinite_loss_stops_naming_the_step(work, tmp_path):
    code, output = _train(work, tmp_path / "o", "--lr", "1e30", "--max-grad-norm", "0", "--save-every", "1")
    assert_clean_error(code, output, "at step 2")
    assert [l for l in output.splitlines() if l.startswith("error:")] == [
        next(l for l in output.splitlines() if l.startswith("error:"))]
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_bad_settings_are_one_line(work, tmp_path):
    for extra, needle in ((["--batch-size", "0"], "--batch-size 0 must be positive"),
                          (["--epochs", "1"], "--steps or --epochs, not both"),
                          (["--mixed-precision", "fp8"], "--mixed-precision"),
                          (["--eval-every", "2"], "--eval-every needs --eval-corpus")):
        code, output = _train(work, tmp_path / "o", *extra)
        assert_clean_error(code, output, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layers, block", [(1, (0, 0)), (2, (0, 1)), (3, (0, 2)), (4, (1, 3)), (12, (4, 6)),
                                           (32, (10, 12))])
def test_auto_block_is_three_layers_from_a_third(layers, block):
    from mergekit_transplant.organ.training import auto_block

    assert auto_block(layers) == block


def test_baselines_train_under_the_same_loop(work, tmp_path):
    """peft LoRA and full fine-tuning see the organ's batches: at step 1 all three models are the base model."""
    from mergekit_transplant.organ.training.baselines import train_baseline

    organ = train_organ(settings(work, tmp_path / "organ"), progress=False).record
    lora = train_baseline(settings(work, tmp_path / "lora"), "lora", rank=4)
    full = train_baseline(settings(work, tmp_path / "full"), "full")
    assert organ.loss_curve[0][1] == pytest.approx(lora.loss_curve[0][1], abs=1e-6)
    assert organ.loss_curve[0][1] == pytest.approx(full.loss_curve[0][1], abs=1e-6)
    assert organ.tokens_trained == lora.tokens_trained == full.tokens_trained
    base = load_state(work / "llama")
    assert full.trainable_parameters == sum(t.numel() for t in base.values())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert sum(1 for n in names if "lora_A" in n) == 7 * 4  # every linear module of 4 layers, not the head
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"))
    assert lora.trainable_parameters == sum(t.numel() for t in adapter.values())


def test_corpus_from_an_lm_eval_task_and_a_txt_file(work, tmp_path):
    from mergekit_transplant.testing import write_task

    rows = [{"text": l} for l in (work / "eval.txt").read_text().splitlines()] * 4
    write_task(tmp_path / "tasks", "domain_docs", rows)
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", "lm-eval:domain_docs",
                           "--include-path", tmp_path / "tasks", "-o", tmp_path / "o", "--eval-corpus",
                           work / "eval.txt", *FAST])
    assert code == 0, output
    corpus = json.loads((tmp_path / "o" / "organ.json").read_text())["training"]["corpus"]
    assert corpus["path"] == "lm-eval:domain_docs" and corpus["kind"] == "lm-eval" and corpus["documents"] == 24
    code, output = invoke(["organ", "train", "--model", work / "llama", "--corpus", work / "eval.txt",
                           "-o", tmp_path / "t", *FAST])
    assert code == 0, output
    assert json.loads((tmp_path / "t" / "organ.json").read_text())["training"]["corpus"]["kind"] == "txt"


def test_epochs_set_the_number_of_steps(work, tmp_path):
    from mergekit_transplant.organ.training.data import pack_corpus
    from mergekit_transplant.loading import load_tokenizer

    n = pack_corpus(str(work / "corpus.jsonl"), load_tokenizer(str(work / "llama")), 16).n
    result = train_organ(settings(work, tmp_path / "o", steps=None, epochs=0.1, batch_size=4), progress=False)
    import math

    assert result.record.steps == math.ceil(0.1 * n / 4) == result.record.tokens_trained // (4 * 16)
