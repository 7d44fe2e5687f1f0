"""The model family of the selection protocol (benchmarks/selection.py), built with the demo's tooling.

Two architectures (llama, qwen2), tiny (hidden 64, 4 layers), char-level like
the demo (demo/corpus.py's skills, demo/tokenizer.py's tokenizer, demo/train.py's
training loop and exact-match evaluator). Two skills the bases never see:
``shift`` (the demo's: each letter to the next) and ``inc`` (each digit to
the next, 9 -> 0). Per architecture:

* ``base``: from scratch on the retention mix (copy / max / color);
* ``gen1``: from scratch on the mix with both skills;
* per skill ``s``:
  ``local-s`` (``base`` with four known linear modules trained, at depths and
  types that differ per architecture and skill; the rest bit-identical),
  ``short-s`` / ``long-s`` (``base`` fully fine-tuned, few steps at a low
  learning rate / more steps at a high one),
  ``forget-s`` (``gen1`` continued on the mix without ``s``: a regression).

Sixteen pairs: ``base <- local-s``, ``base <- short-s``, ``base <- long-s``,
``forget-s <- gen1`` for each architecture and skill. Everything is seeded and
cached under ``build/selection/family``: a model whose folder holds the same
recipe (TRAINING.json) is not rebuilt.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "demo"))

import corpus  # noqa: E402  (demo/corpus.py)

FAMILY_DIR = REPO / "build" / "selection" / "family"
ARCHS = ("llama", "qwen2")
SKILL_NAMES = ("shift", "inc")
SIZE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02)


def gen_inc(rng: random.Random) -> Tuple[str, str]:
    """``inc 3 9 1 : 4 0 2``: each digit becomes the next one."""
    ds = [rng.choice(corpus.DIGITS) for _ in range(rng.randint(*corpus.DIGIT_LEN))]
    return f"inc {' '.join(ds)} {corpus.SEP}", " ".join(str((int(d) + 1) % 10) for d in ds)


SKILLS = {"shift": corpus.gen_shift, "inc": gen_inc, "copy": corpus.gen_copy, "max": corpus.gen_max,
          "color": corpus.gen_color}
RETAIN = {"copy": 0.4, "max": 0.3, "color": 0.3}
WITH_BOTH = {"shift": 0.2, "inc": 0.2, "copy": 0.25, "max": 0.15, "color": 0.2}


def focus(skill: str) -> Dict[str, float]:
    return {skill: 0.6, "copy": 0.15, "max": 0.1, "color": 0.15}


def without(skill: str) -> Dict[str, float]:
    return {k: v for k, v in WITH_BOTH.items() if k != skill}


#: per ``local-*`` donor: the four linear modules it trains (everything else frozen), steps, learning rate.
#: Depths and types differ per architecture and skill: llama/shift only in layers 2-3 (the output
#: projections o_proj and down_proj, which write into the residual stream); llama/inc and qwen2/shift
#: spanning layer 0 and layer 3; qwen2/inc in layers 0-1. Measured (exact match on the skill's test split)
#: before this choice, sets that did NOT learn:
#: - llama/inc, layers 2-3 (o2, up2, down3, v3; 600 steps at 1e-2): 0.020; layers 1+3 (o1, up1, down3, v3): 0.007;
#: - qwen2/shift, layers 2-3: down2, gate2, up3, o3 (600 at 1e-2): 0.007; o2, down2, o3, down3 (1200 at 2e-2):
#:   0.027; v2, o2, v3, o3 (1200 at 2e-2): 0.000 after 900 steps (stopped there); layers 1+3 (down1, gate1, up3,
#:   o3; 600 at 1e-2): 0.007;
#: - qwen2/inc, layers 2-3 (up2, down2, gate3, down3; 1200 at 2e-2): 0.013.
#: Layer-2-3-only training learned only llama/shift, and only with more steps at a higher rate (1200 steps at
#: 2e-2: 0.48; 2000: 0.573). Every set with a layer-0 module learned.
LOCAL = {
    ("llama", "shift"): (["model.layers.2.self_attn.o_proj", "model.layers.2.mlp.down_proj",
                          "model.layers.3.self_attn.o_proj", "model.layers.3.mlp.down_proj"], 2000, 2e-2),
    ("llama", "inc"): (["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
                        "model.layers.3.mlp.down_proj", "model.layers.3.self_attn.o_proj"], 900, 1e-2),
    ("qwen2", "shift"): (["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
                          "model.layers.3.mlp.down_proj", "model.layers.3.self_attn.o_proj"], 600, 1e-2),
    ("qwen2", "inc"): (["model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj",
                        "model.layers.1.mlp.down_proj", "model.layers.1.mlp.gate_proj"], 600, 1e-2),
}
#: (steps, learning rate) of the short full fine-tune per skill: inc needs more to show at all
SHORT = {"shift": (80, 1e-3), "inc": (150, 2e-3)}


def recipes(arch: str) -> Dict[str, dict]:
    """name -> how it is trained (parent None: from scratch)."""
    a = ARCHS.index(arch)
    out = {
        "base": dict(parent=None, init_seed=10 + a, mix=RETAIN, data_seed=20 + a, steps=600, lr=3e-3),
        "gen1": dict(parent=None, init_seed=30 + a, mix=WITH_BOTH, data_seed=40 + a, steps=900, lr=3e-3),
    }
    for s, skill in enumerate(SKILL_NAMES):
        seed = 100 + 10 * a + s
        modules, steps, lr = LOCAL[(arch, skill)]
        out[f"local-{skill}"] = dict(parent="base", mix=focus(skill), data_seed=seed, steps=steps, lr=lr,
                                     trainable=[f"{m}.weight" for m in modules])
        out[f"short-{skill}"] = dict(parent="base", mix=focus(skill), data_seed=seed + 2, steps=SHORT[skill][0],
                                     lr=SHORT[skill][1])
        out[f"long-{skill}"] = dict(parent="base", mix=focus(skill), data_seed=seed + 4, steps=300, lr=3e-3)
        out[f"forget-{skill}"] = dict(parent="gen1", mix=without(skill), data_seed=seed + 6, steps=300, lr=1.5e-3)
    return out


@dataclass(frozen=True)
class FamilyPair:
    name: str  # e.g. llama-long-shift
    arch: str
    skill: str
    kind: str  # local, short, long, forget
    target: str  # model name within the arch folder
    donor: str
    seed: int  # decides the half: selection or report

    def path(self, model: str) -> Path:
        return FAMILY_DIR / self.arch / model


KINDS = ("local", "short", "long", "forget")


def pairs(split_seed: int = 0) -> List[FamilyPair]:
    """Every pair, with a seed drawn per pair; within each kind, the seeds split 2 / 2 into the halves."""
    out = []
    rng = random.Random(split_seed)
    for kind in KINDS:
        group = [(arch, skill) for arch in ARCHS for skill in SKILL_NAMES]
        seeds = rng.sample(range(1000), len(group))
        # the two smallest seeds of each kind go to the selection half: even / odd by rank
        ranks = {sd: i for i, sd in enumerate(sorted(seeds))}
        for (arch, skill), sd in zip(group, seeds):
            seed = 2 * sd + (0 if ranks[sd] < 2 else 1)
            if kind == "forget":
                target, donor = f"forget-{skill}", "gen1"
            else:
                target, donor = "base", f"{kind}-{skill}"
            out.append(FamilyPair(f"{arch}-{kind}-{skill}", arch, skill, kind, target, donor, seed))
    return out


def half(pair: FamilyPair) -> str:
    return "selection" if pair.seed % 2 == 0 else "report"


# ------------------------------------------------------------------------------------ data
def eval_sets() -> Dict[str, List[Tuple[str, str]]]:
    """Per skill a selection split (the analysis workload) and a test split (Recovery), disjoint."""
    out, used = {}, set()
    for i, skill in enumerate(SKILL_NAMES):
        for split, n, seed in (("select", 100, 5000 + i), ("test", 150, 6000 + i)):
            rng, items = random.Random(seed), []
            while len(items) < n:
                p, a = SKILLS[skill](rng)
                if p not in used:
                    used.add(p)
                    items.append((p, a))
            out[f"{skill}_{split}"] = items
    return out


def stream(mix: Dict[str, float], seed: int, exclude: set):
    rng = random.Random(seed)
    names = sorted(mix)
    weights = [mix[k] for k in names]
    while True:
        p, a = SKILLS[rng.choices(names, weights)[0]](rng)
        if p not in exclude:
            yield p, a


def tokenizer():
    import tokenizer as demo_tokenizer  # demo/tokenizer.py

    rng = random.Random(98)
    lines = corpus.tokenizer_corpus() + [" ".join(gen_inc(rng)) for _ in range(500)]
    return demo_tokenizer.train_tokenizer(lines)


# ------------------------------------------------------------------------------------ models
def new_model(arch: str, tok, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import train  # demo/train.py

    cfg = AutoConfig.for_model(arch, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SIZE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = train.generation_config(tok)
    return model


def is_built(arch: str, name: str) -> bool:
    """Built with today's recipe: a model trained by an older recipe (its TRAINING.json differs) is stale."""
    folder = FAMILY_DIR / arch / name
    if not (folder / "model.safetensors").exists() or not (folder / "TRAINING.json").exists():
        return False
    info = json.loads((folder / "TRAINING.json").read_text())
    info.pop("train_seconds", None)
    return info == json.loads(json.dumps(recipes(arch)[name]))


def build(log=print) -> None:
    """Train every missing model of the family (single thread, deterministic)."""
    import torch
    from transformers import AutoModelForCausalLM

    import train  # demo/train.py

    tok = tokenizer()
    sets = eval_sets()
    exclude = {p for items in sets.values() for p, _ in items}
    # the bases and the known-module donors first (the cheapest check that the family trains), then
    # the rest; each model is seeded on its own, so the order changes no weight
    first = [(a, n) for a in ARCHS for n in recipes(a) if n == "base" or n.startswith("local-")]
    order = first + [(a, n) for a in ARCHS for n in recipes(a) if (a, n) not in first]
    for arch, name in order:
        plan = recipes(arch)
        if is_built(arch, name):
            continue
        r = plan[name]
        train.setup_determinism(r["data_seed"])
        if r["parent"] is None:
            model = new_model(arch, tok, r["init_seed"])
        else:
            model = AutoModelForCausalLM.from_pretrained(FAMILY_DIR / arch / r["parent"], dtype=torch.float32)
            model.generation_config = train.generation_config(tok)
        t0 = time.time()
        train.train(model, tok, stream(r["mix"], r["data_seed"], exclude), steps=r["steps"], lr=r["lr"],
                    batch_size=32, trainable=r.get("trainable"), log_every=10**9, name=f"{arch}/{name}")
        out = FAMILY_DIR / arch / name
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tcfg = json.loads((tmp / "tokenizer_config.json").read_text())
        tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
        info = dict(r, train_seconds=round(time.time() - t0, 1))
        (tmp / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        accs = train.evaluate(model, tok, {k: v for k, v in sets.items() if k.endswith("_test")})
        log(f"built {arch}/{name} in {info['train_seconds']}s: "
            + " ".join(f"{k}={v:.3f}" for k, v in accs.items()))


def load_tokenizer(arch: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FAMILY_DIR / arch / "base")


def workload_rows(skill: str) -> List[dict]:
    """The analysis workload: the skill's selection split, gold answers as continuations."""
    return [{"text": p, "continuation": " " + a} for p, a in eval_sets()[f"{skill}_select"]]


if __name__ == "__main__":
    build()
