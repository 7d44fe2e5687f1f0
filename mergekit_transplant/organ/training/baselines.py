"""Full fine-tuning and LoRA (peft) under the organ's exact training loop, for honest comparisons.

The demo and ``benchmarks/organ_train.py`` compare an organ with the usual
alternatives at the same steps, tokens, data order and learning-rate
schedule: the same ``OrganTrainSettings``, ``schedule_loader`` and
``run_steps`` as ``train_organ``; only what is trainable differs. LoRA is
peft's (``target_modules="all-linear"``: every linear layer but the head),
never hand-written. These are measurement tools, not a second training
command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.organ.training.config import OrganTrainSettings
from mergekit_transplant.organ.training.data import pack_corpus, require_batches
from mergekit_transplant.organ.training.trainer import (
    _accelerator,
    perplexity,
    run_steps,
    schedule_loader,
    total_steps,
)

METHODS = ("full", "lora")


@dataclass
class BaselineResult:
    method: str  # "full" or "lora-rN"
    model_dir: Optional[Path]  # the adapted model (LoRA merged into it), for lm-eval and mergekit
    trainable_parameters: int
    file_bytes: int  # what one would ship: the whole model (full) or peft's adapter file (LoRA)
    steps: int
    tokens_trained: int
    train_time_s: float
    tokens_per_s: float
    perplexity_before: Optional[float] = None
    perplexity_after: Optional[float] = None
    loss_curve: List[List[float]] = field(default_factory=list)


def train_baseline(settings: OrganTrainSettings, method: str, *, rank: int = 8, alpha: Optional[int] = None,
                   save: bool = True) -> BaselineResult:
    """Train ``settings.model`` by ``method`` ("full" or "lora") exactly as ``train_organ`` trains a block.

    ``settings.output`` receives ``model/`` (the adapted model) and, for LoRA, ``adapter/`` (peft's files).
    """
    import torch
    from accelerate.utils import set_seed

    from mergekit_transplant.loading import load_causal_lm, load_tokenizer

    if method not in METHODS:
        raise TransplantError(f"unknown baseline {method!r}; use one of {', '.join(METHODS)}")
    settings.validate()
    accelerator = _accelerator(settings)
    tokenizer = load_tokenizer(settings.model, trust_remote_code=settings.trust_remote_code)
    corpus = pack_corpus(settings.corpus, tokenizer, settings.max_length, include_path=settings.include_path)
    require_batches(corpus, settings.batch_size, accelerator.num_processes)
    eval_corpus = None
    if settings.eval_corpus:
        eval_corpus = pack_corpus(settings.eval_corpus, tokenizer, settings.max_length,
                                  include_path=settings.include_path, option="--eval-corpus")
    steps = total_steps(settings, corpus.n, accelerator.num_processes)
    set_seed(settings.seed)
    model, _ = load_causal_lm(settings.model, device="cpu", dtype=settings.dtype,
                              trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle,
                              with_tokenizer=False)
    model.config.use_cache = False
    name = "full"
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        name = f"lora-r{rank}"
    else:
        model.requires_grad_(True)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
         {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    loader = schedule_loader(corpus, settings, steps, accelerator.num_processes)
    before = (perplexity(model, eval_corpus.sequences, settings.batch_size, accelerator)
              if eval_corpus is not None else None)
    model.train()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    curve: List[List[float]] = []
    started = time.perf_counter()
    tokens = run_steps(accelerator, model, optimizer, [p for _, p in params], loader, settings, steps, 0,
                       lambda step, loss, _tokens: curve.append([step, loss]))
    elapsed = time.perf_counter() - started
    model = accelerator.unwrap_model(model)
    after = (perplexity(model, eval_corpus.sequences, settings.batch_size, accelerator)
             if eval_corpus is not None else None)
    out = Path(settings.output)
    file_bytes, model_dir = 0, None
    if save:
        out.mkdir(parents=True, exist_ok=True)
        if method == "lora":
            model.save_pretrained(str(out / "adapter"))
            file_bytes = sum(p.stat().st_size for p in (out / "adapter").glob("*.safetensors"))
            model = model.merge_and_unload()
        model_dir = out / "model"
        model.save_pretrained(str(model_dir))
        tokenizer.save_pretrained(str(model_dir))
        if method == "full":
            file_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return BaselineResult(
        method=name, model_dir=model_dir, trainable_parameters=sum(p.numel() for _, p in params),
        file_bytes=file_bytes, steps=steps, tokens_trained=tokens, train_time_s=round(elapsed, 3),
        tokens_per_s=round(tokens / max(elapsed, 1e-9), 1), perplexity_before=before, perplexity_after=after,
        loss_curve=curve)
