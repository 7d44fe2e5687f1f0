"""Build the demo model family into ``demo/models/<name>/``.

    python demo/build_family.py            # build what is missing (idempotent)
    python demo/build_family.py --force    # rebuild everything
    python demo/build_family.py --only tuned-local --force

Models (same architecture, same tokenizer):

* ``base``        pretrained from scratch on copy / max / color; never sees ``shift``.
* ``tuned``       ``base`` fully fine-tuned (all parameters) on shift + some of the mix.
* ``tuned-local`` ``base`` fine-tuned with only four linear modules trainable
                  (see ``LOCAL_MODULES``); everything else is bit-identical to ``base``.
                  The exact trained tensor names go to ``TRAINED_MODULES.json``.
* ``gen1``        pretrained from scratch on the mix *with* shift (good at it).
* ``gen2``        ``gen1`` continued on the mix without shift: forgets part of it.

Training is deterministic (seeded, single thread, deterministic algorithms); bitwise
reproduction of the committed weights is only expected on the same CPU / torch build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

DEMO_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(DEMO_DIR))
import corpus  # noqa: E402
import tokenizer as demo_tokenizer  # noqa: E402
import train  # noqa: E402

MODELS_DIR = DEMO_DIR / "models"

LOCAL_MODULES = [
    "model.layers.1.mlp.down_proj",
    "model.layers.2.mlp.up_proj",
    "model.layers.2.self_attn.o_proj",
    "model.layers.3.mlp.down_proj",
]

# name -> recipe.  "parent": model to start from (None: fresh init with "init_seed").
RECIPES: dict[str, dict] = {
    "base": dict(parent=None, init_seed=0, mix=corpus.MIX_NO_SKILL, data_seed=10, steps=800, lr=3e-3),
    "tuned": dict(parent="base", mix=corpus.MIX_SKILL_FOCUS, data_seed=11, steps=300, lr=1e-3),
    "tuned-local": dict(
        parent="base", mix=corpus.MIX_SKILL_FOCUS, data_seed=12, steps=800, lr=1e-2,
        trainable=[f"{m}.weight" for m in LOCAL_MODULES],
    ),
    "gen1": dict(parent=None, init_seed=1, mix=corpus.MIX_WITH_SKILL, data_seed=13, steps=800, lr=3e-3),
    "gen2": dict(parent="gen1", mix=corpus.MIX_NO_SKILL, data_seed=14, steps=400, lr=1e-3),
}
ORDER = ["base", "tuned", "tuned-local", "gen1", "gen2"]


def is_built(name: str) -> bool:
    d = MODELS_DIR / name
    return (d / "model.safetensors").exists() and (d / "config.json").exists() and (d / "tokenizer.json").exists()


def build_one(name: str, tok, evals, held_out) -> None:
    recipe = RECIPES[name]
    out = MODELS_DIR / name
    train.setup_determinism(recipe["data_seed"])
    if recipe["parent"] is None:
        model = train.new_model(tok, recipe["init_seed"])
    else:
        model = LlamaForCausalLM.from_pretrained(MODELS_DIR / recipe["parent"], dtype=torch.float32)
        model.generation_config = train.generation_config(tok)
    t0 = time.time()
    train.train(
        model, tok, corpus.stream(recipe["mix"], recipe["data_seed"], held_out),
        steps=recipe["steps"], lr=recipe["lr"], trainable=recipe.get("trainable"),
        evals=evals, name=name, log_every=100,
    )
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # "PreTrainedTokenizerFast" loads in transformers 4.x and 5.x alike.
    tcfg_path = out / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text())
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tcfg_path.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
    info = {k: v for k, v in recipe.items()}
    info["train_seconds"] = round(time.time() - t0, 1)
    info["params"] = sum(p.numel() for p in model.parameters())
    (out / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    if "trainable" in recipe:
        (out / "TRAINED_MODULES.json").write_text(json.dumps(recipe["trainable"], indent=2) + "\n")
    print(f"saved {out.relative_to(DEMO_DIR.parent)} in {info['train_seconds']}s", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild models even if present")
    ap.add_argument("--only", nargs="*", choices=ORDER, help="build only these models (parents if missing)")
    args = ap.parse_args(argv)

    corpus.write_task_data()
    tok = demo_tokenizer.train_tokenizer()
    held_out = corpus.held_out_prompts()
    sets = corpus.eval_sets()
    evals = {"skill_select": sets["skill_select"], "copy": sets["retain_copy"][:100],
             "max": sets["retain_max"][:100], "color": sets["retain_color"]}

    wanted = args.only or ORDER
    todo: list[str] = []
    for name in ORDER:
        if name in wanted and (args.force or not is_built(name)):
            todo.append(name)
    # Build missing parents first.
    for name in list(todo):
        parent = RECIPES[name]["parent"]
        if parent and parent not in todo and not is_built(parent):
            todo.insert(todo.index(name), parent)
    t0 = time.time()
    for name in todo:
        build_one(name, tok, evals, held_out)
    skipped = [n for n in wanted if n not in todo]
    if skipped:
        print("already built (use --force to rebuild):", ", ".join(skipped))
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
