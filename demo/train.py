"""Deterministic CPU training loops for the demo family (single thread)."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Architecture shared by every model of the family.
ARCH = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    hidden_act="silu",
    initializer_range=0.02,
)


def setup_determinism(seed: int, threads: int = 1) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_config(tok: PreTrainedTokenizerFast) -> LlamaConfig:
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **ARCH,
    )
    cfg.dtype = torch.float32
    return cfg


def generation_config(tok: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )


def new_model(tok: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(tok)).float()
    model.generation_config = generation_config(tok)
    return model


# ------------------------------------------------------------------------ batching
def encode_example(tok: PreTrainedTokenizerFast, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of ``<s> prompt answer </s>`` and the length of ``<s> prompt``."""
    p = tok.convert_tokens_to_ids(prompt.split())
    a = tok.convert_tokens_to_ids(answer.split())
    return [tok.bos_token_id, *p, *a, tok.eos_token_id], 1 + len(p)


def collate(tok: PreTrainedTokenizerFast, examples: list[tuple[str, str]]):
    enc = [encode_example(tok, p, a) for p, a in examples]
    width = max(len(ids) for ids, _ in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, (seq, plen) in enumerate(enc):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, plen : len(seq)] = torch.tensor(seq[plen:])  # answer + </s>
    return ids, mask, labels


# ------------------------------------------------------------------------ training
def train(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    data: Iterator[tuple[str, str]],
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    warmup: int = 50,
    weight_decay: float = 0.01,
    trainable: Iterable[str] | None = None,
    log_every: int = 100,
    evals: dict[str, list[tuple[str, str]]] | None = None,
    name: str = "",
) -> LlamaForCausalLM:
    """AdamW + linear warmup + cosine decay, loss on answer tokens only.

    ``trainable``: if given, the exact parameter names to train; everything else is frozen
    (``requires_grad=False`` and not handed to the optimizer, so it stays bit-identical).
    """
    params = dict(model.named_parameters())
    if trainable is not None:
        trainable = list(trainable)
        missing = [n for n in trainable if n not in params]
        if missing:
            raise KeyError(f"unknown parameters: {missing}")
        for n, p in params.items():
            p.requires_grad_(n in trainable)
        opt_params = [params[n] for n in trainable]
    else:
        opt_params = list(params.values())
    decay = [p for p in opt_params if p.ndim >= 2]
    no_decay = [p for p in opt_params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    t0 = time.time()
    running = 0.0
    for step in range(steps):
        batch = [next(data) for _ in range(batch_size)]
        ids, mask, labels = collate(tok, batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(opt_params, 1.0)
        opt.step()
        running += out.loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            msg = f"[{name}] step {step + 1}/{steps} loss {running / n:.4f} ({time.time() - t0:.0f}s)"
            running = 0.0
            if evals:
                msg += " " + " ".join(f"{k}={v:.3f}" for k, v in evaluate(model, tok, evals).items())
                model.train()
            print(msg, flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model


@torch.no_grad()
def exact_match(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, items: list[tuple[str, str]], bs: int = 100) -> float:
    """Teacher-forced argmax on answer + </s>: equals greedy-decoding exact match."""
    model.eval()
    hits = 0
    for i in range(0, len(items), bs):
        ids, mask, labels = collate(tok, items[i : i + bs])
        logits = model(input_ids=ids, attention_mask=mask).logits
        pred = logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        ok = ((pred == tgt) | (tgt == -100)).all(dim=1)
        hits += int(ok.sum())
    return hits / len(items)


def evaluate(model, tok, evals: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    return {k: exact_match(model, tok, v) for k, v in evals.items()}
