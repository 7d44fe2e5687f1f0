"""Tiny models built on the spot, for tests, benchmarks and examples.

There is no Hub in CI, so every test builds its own models: a transformers
config of the requested architecture with random (seeded) weights, a small
word-level tokenizer, and helpers that make a donor differ from its target
in known tensors only, which gives the analysis a ground truth.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

ARCHITECTURES = ("llama", "qwen2", "gemma2", "phi3")
WORDS = (
    "the a an of to and in is was for on that with as it by at from this be are or "
    "one two three four five six seven eight nine ten plus minus equals answer question "
    "red green blue cat dog bird fish tree house car book"
).split()


def make_tokenizer(out_dir: Path):
    """A word-level fast tokenizer with bos/eos/pad/unk, saved as HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    digits = [str(d) for d in range(10)]
    vocab = {tok: i for i, tok in enumerate(specials + digits + WORDS + [":", ".", "?", ","])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)
    return fast


def make_config(arch: str = "llama", *, vocab_size: int = 96, hidden: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int = 128, tie: bool = False,
                max_positions: int = 256):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=max_positions, tie_word_embeddings=tie,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if arch == "gemma2":
        common.update(head_dim=hidden // heads, sliding_window=max_positions, query_pre_attn_scalar=hidden // heads)
    if arch == "phi3":
        common.update(original_max_position_embeddings=max_positions)
    return AutoConfig.for_model(arch, **common)


def make_model(out_dir: Path, arch: str = "llama", *, seed: int = 0, dtype: str = "float32",
               tokenizer: bool = True, **config_kwargs) -> Path:
    """Save a randomly initialised (seeded) model, optionally with a tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    cfg = make_config(arch, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default init so differences show in logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir)
    if tokenizer:
        make_tokenizer(out_dir)
    return out_dir


def perturbed_copy(src: Path, dst: Path, tensors: Iterable[str], *, scale: float = 0.5,
                   seed: int = 1) -> Path:
    """Copy a model folder, adding seeded noise to exactly ``tensors`` (ground truth)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    state = load_file(src / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    for name in tensors:
        t = state[name]
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * scale * t.float().std()
        state[name] = (t.float() + noise).to(t.dtype).contiguous()
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def load_state(model_dir: Path) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """Every tensor of a (possibly sharded) safetensors model folder."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    state = {}
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    for f in files:
        state.update(load_file(model_dir / f))
    return state


def linear_weight_names(model_dir: Path, optional_filter: Optional[str] = None) -> list:
    """Names of 2-D ``*_proj.weight`` tensors (the transplant candidates)."""
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as fh:
        names = [n for n in fh.keys() if n.endswith("proj.weight")]
    return sorted(n for n in names if optional_filter is None or optional_filter in n)


#: ``body`` of ``write_task`` for a perplexity task over a ``text`` field (lower is better)
PERPLEXITY_TASK = (
    "output_type: loglikelihood_rolling\n"
    'doc_to_text: "{{text}}"\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
)


def write_task(folder: Path, name: str, rows: Iterable[dict], body: str = PERPLEXITY_TASK) -> Path:
    """A local lm-eval task: ``NAME.jsonl`` holding ``rows`` and ``NAME.yaml`` reading it as its test split.

    ``body`` is the rest of the YAML (output type, templates, metrics). The
    task needs no Hub: lm-eval's ``json`` loader reads the file beside it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_file = folder / f"{name}.yaml"
    yaml_file.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                         "test_split: test\n" + body)
    return yaml_file


_NUMBERS = "one two three four five six seven eight nine ten".split()


def write_tiny_tasks(root: Path) -> Path:
    """Four tiny lm-eval tasks over local JSONL, 12 documents each, in ``root``.

    ``tiny_gen`` (generate_until, exact_match), ``tiny_mc`` and ``tiny_retain``
    (multiple_choice, acc) and ``tiny_ppl`` (loglikelihood_rolling,
    word_perplexity: lower is better), all over number-word sums.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"q": f"the answer is {w} plus {_NUMBERS[(i + 1) % 10]} equals", "a": _NUMBERS[(i + 2) % 10],
         "choices": ["red", "green", "blue"], "label": i % 3}
        for i, w in enumerate(_NUMBERS + _NUMBERS[:2])
    ]
    write_task(root, "tiny_gen", rows,
               body='output_type: generate_until\ndoc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
                    'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 3\n  do_sample: false\n'
                    "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    for name, text in (("tiny_mc", "{{q}}"), ("tiny_retain", "the {{a}} is")):
        write_task(root, name, rows,
                   body=f'output_type: multiple_choice\ndoc_to_text: "{text}"\ndoc_to_choice: "{{{{choices}}}}"\n'
                        'doc_to_target: "{{label}}"\n'
                        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    write_task(root, "tiny_ppl", rows,
               body='output_type: loglikelihood_rolling\ndoc_to_text: "{{q}} {{a}}"\ndoc_to_target: "{{q}} {{a}}"\n'
                    "metric_list:\n  - metric: word_perplexity\n")
    return root


#: the words of the tests' random workloads (all in ``make_tokenizer``'s vocabulary)
SAMPLE_WORDS = "the a cat dog red blue one two three tree house car book".split()


def workload_rows(n: int, seed: int, *, max_words: int, continuation_every: int = 3,
                  words: Sequence[str] = SAMPLE_WORDS) -> List[dict]:
    """``n`` seeded workload rows: a text of 2..``max_words`` words; every row whose index is not a multiple
    of ``continuation_every`` also gets a continuation of 1..5 words (the scored part)."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"text": " ".join(rnd.choice(words) for _ in range(rnd.randint(2, max_words)))}
        if i % continuation_every:
            row["continuation"] = " " + " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 5)))
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """``rows`` as JSON lines (a workload file ``analyze --workload`` reads)."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
