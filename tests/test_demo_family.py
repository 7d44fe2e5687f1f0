"""Fast checks of the bundled demo model family (demo/models) and its lm-eval tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import safetensors.torch as safetensors_torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
MODELS_DIR = DEMO / "models"
TASKS_DIR = DEMO / "tasks"
MODELS = ["base", "tuned", "tuned-local", "gen1", "gen2"]
PAIRS = [("base", "tuned"), ("base", "tuned-local"), ("gen2", "gen1")]  # (target, donor)
TASKS = ["demo_skill_select", "demo_skill_test", "demo_retain_copy", "demo_retain_max", "demo_retain_color"]



def test_the_bundled_family_is_complete():
    """The family is committed with the project; a missing model is a broken checkout, not a skip."""
    missing = [m for m in MODELS if not (MODELS_DIR / m / "model.safetensors").exists()]
    assert missing == [], f"demo models missing: {missing} (rebuild: python demo/build_family.py)"


def _tensors(name: str) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(MODELS_DIR / name / "model.safetensors"))


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for m in MODELS:
        tok = AutoTokenizer.from_pretrained(MODELS_DIR / m)
        model = AutoModelForCausalLM.from_pretrained(MODELS_DIR / m, dtype=torch.float32)
        model.eval()
        out[m] = (model, tok)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_model_loads_with_special_ids(loaded, name):
    model, tok = loaded[name]
    assert type(model).__name__ == "LlamaForCausalLM"
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token} == {"<s>", "</s>", "<pad>", "<unk>"}
    for cfg in (model.config, model.generation_config):
        assert cfg.bos_token_id == tok.bos_token_id
        assert cfg.eos_token_id == tok.eos_token_id
        assert cfg.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert next(model.parameters()).dtype == torch.float32
    n = sum(p.numel() for p in model.parameters())
    assert 5e5 < n < 3e6
    assert (MODELS_DIR / name / "model.safetensors").stat().st_size < 16 * 2**20


def test_family_shares_architecture_and_tokenizer():
    ref_cfg = json.loads((MODELS_DIR / "base" / "config.json").read_text())
    ref_tok = (MODELS_DIR / "base" / "tokenizer.json").read_text()
    ref = {k: v.shape for k, v in _tensors("base").items()}
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    for m in MODELS[1:]:
        cfg = json.loads((MODELS_DIR / m / "config.json").read_text())
        assert {k: cfg[k] for k in keys} == {k: ref_cfg[k] for k in keys}
        assert (MODELS_DIR / m / "tokenizer.json").read_text() == ref_tok
        assert {k: v.shape for k, v in _tensors(m).items()} == ref


def test_tokenizer_round_trip(loaded):
    _, tok = loaded["base"]
    for text in ["shift k a t e : l b u f", "copy z y x w : z y x w", "max 3 7 2 : 7", "color of voda : black"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    digit_ids = tok.convert_tokens_to_ids([str(d) for d in range(10)])
    assert len(set(digit_ids)) == 10 and tok.unk_token_id not in digit_ids


def test_local_pair_differs_exactly_in_trained_modules():
    trained = json.loads((MODELS_DIR / "tuned-local" / "TRAINED_MODULES.json").read_text())
    assert len(trained) == 4 and all(n.endswith(".weight") for n in trained)
    base, local = _tensors("base"), _tensors("tuned-local")
    assert base.keys() == local.keys()
    assert set(trained) <= base.keys()
    changed = {k for k in base if not torch.equal(base[k], local[k])}
    assert changed == set(trained)
    for k in base:  # bit for bit, not just numerically equal
        if k not in trained:
            assert base[k].dtype == local[k].dtype == torch.float32
            assert base[k].view(torch.int32).equal(local[k].view(torch.int32))


@pytest.mark.parametrize("target,donor", [p for p in PAIRS if p[1] != "tuned-local"])
def test_other_pairs_change_every_module(target, donor):
    a, b = _tensors(target), _tensors(donor)
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert len(changed) > 0.9 * len(a)


@torch.no_grad()
def _greedy(model, tok, prompt: str) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_generation_smoke(loaded):
    # Stops at </s> thanks to eos_token_id in generation_config.
    assert _greedy(*loaded["base"], "copy q w e r :") == "q w e r"
    assert _greedy(*loaded["gen1"], "shift q w e r :") == "r x f s"
    assert _greedy(*loaded["tuned"], "shift a b y z :") == "b c z a"


def test_task_data_splits_are_disjoint():
    def prompts(stem):
        with open(TASKS_DIR / "data" / f"{stem}.jsonl") as f:
            return [json.loads(line)["prompt"] for line in f]

    select, test = prompts("skill_select"), prompts("skill_test")
    assert len(select) >= 100 and len(test) >= 100
    assert len(set(select)) == len(select) and len(set(test)) == len(test)
    assert not set(select) & set(test)


def test_tasks_load_in_lm_eval():
    import lm_eval.tasks as lm_eval_tasks
    tm = lm_eval_tasks.TaskManager(include_path=str(TASKS_DIR))
    for t in TASKS:
        assert t in tm.all_tasks
    assert "demo_transplant" in tm.all_tags
    task_dict = lm_eval_tasks.get_task_dict(["demo_transplant"], tm)  # the tag expands to all
    assert set(task_dict) == set(TASKS)
    sizes = {name: len(list(task.test_docs())) for name, task in task_dict.items()}
    assert sizes == {
        "demo_skill_select": 200,
        "demo_skill_test": 200,
        "demo_retain_copy": 150,
        "demo_retain_max": 150,
        "demo_retain_color": 48,
    }
    assert task_dict["demo_retain_max"].OUTPUT_TYPE == "multiple_choice"
    assert task_dict["demo_skill_test"].OUTPUT_TYPE == "generate_until"
