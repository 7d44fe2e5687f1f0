"""``train_organ``: train one block of decoder layers on a corpus with everything else frozen, write the organ.

Built on accelerate's ``Accelerator``: device placement, mixed precision
(``--mixed-precision``) and gradient accumulation come from it, and the same
command runs data-parallel under ``accelerate launch``. Only the block's
parameters require gradients and only they are given to the optimizer, so
no gradient flows below the block and AdamW's memory is the block's.

Determinism: the data order and learning rate are functions of the seed and
the step; the block's weights, AdamW's state and torch's RNG are saved in
``OUTPUT.partial/`` every ``--save-every`` steps. Two CPU runs with one seed,
or a run and its ``--resume``, give byte-identical organ weights.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from mergekit_transplant.checkpoint import read_index
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.organ.extract import _ensure_free, refuse_clobbering
from mergekit_transplant.organ.manifest import OrganManifest
from mergekit_transplant.organ.training.blocks import Block, layer_prefix, parse_layers
from mergekit_transplant.organ.training.config import OrganTrainSettings
from mergekit_transplant.organ.training.data import (
    PackedCorpus,
    ScheduledSequences,
    pack_corpus,
    require_batches,
    visit_order,
)
from mergekit_transplant.organ.training.record import TrainRecord
from mergekit_transplant.organ.training.state import ResumeState, load_state, partial_dir, run_key, save_state
from mergekit_transplant.organ.training.writer import write_trained_organ

#: settings that do not change the trained bytes, so a resumed run may change them
_NOT_IN_KEY = ("eval_every", "save_every")


@dataclass
class TrainResult:
    organ_dir: Path
    manifest: OrganManifest
    record: TrainRecord
    block: Block


def lr_at(step: int, settings: OrganTrainSettings, total: int) -> float:
    """Linear warmup over ``--warmup`` steps, then cosine decay to 10% of ``--lr`` at the last step (0-based)."""
    if settings.warmup and step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    span = max(1, total - settings.warmup)
    progress = min(1.0, (step - settings.warmup) / span)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def total_steps(settings: OrganTrainSettings, n_sequences: int, processes: int) -> int:
    if settings.steps is not None:
        return settings.steps
    per_step = settings.batch_size * settings.grad_accum * processes
    return max(1, math.ceil((settings.epochs or 1.0) * n_sequences / per_step))


def block_parameters(model, block: Block) -> List[tuple]:
    """(name, parameter) of the block, in the model's order; their names are the checkpoint's."""
    return [(n, p) for n, p in model.named_parameters() if block.contains(n)]


def freeze_all_but(model, block: Block) -> List[tuple]:
    """Everything frozen, then the block's parameters trainable; returns them."""
    model.requires_grad_(False)
    params = block_parameters(model, block)
    if not params:
        raise TransplantError(f"the model has no parameters in {block.describe()}")
    for _, p in params:
        p.requires_grad_(True)
    return params


def perplexity(model, sequences, batch_size: int, accelerator) -> float:
    """exp(mean next-token loss) over packed sequences, every token weighted equally."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, sequences.shape[0], batch_size):
            batch = sequences[i:i + batch_size].to(accelerator.device)
            loss = model(input_ids=batch, labels=batch).loss.float().item()
            n = batch.numel() - batch.shape[0]
            total += loss * n
            count += n
    model.train(was_training)
    return math.exp(total / max(count, 1)) if total / max(count, 1) < 700 else math.inf


def _accelerator(settings: OrganTrainSettings):
    try:
        from accelerate import Accelerator
    except ImportError:
        raise TransplantError("organ train needs accelerate: pip install 'mergekit-transplant[train]'") from None

    device = (settings.device or "auto").lower()
    if device not in ("auto", "cpu"):
        import torch

        ok = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}.get(device.split(":")[0])
        if ok is None:
            raise TransplantError(f"--device {settings.device!r}: use auto, cpu, cuda or mps "
                                  "(pick a GPU with CUDA_VISIBLE_DEVICES or accelerate launch)")
        if not ok:
            raise TransplantError(f"--device {settings.device}: not available on this machine")
    _fresh_single_process_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=settings.mixed_precision,
                       gradient_accumulation_steps=settings.grad_accum)


def _fresh_single_process_state() -> None:
    """Let a second ``train_organ`` in one process (tests, notebooks, the demo) pick its own mixed precision.

    accelerate keeps its state in process-wide singletons and refuses a second
    Accelerator with other settings. A single, non-distributed process owns
    that state alone, so it is cleared there (as accelerate's own test helpers
    do); under ``accelerate launch`` nothing is touched.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DistributedType

    partial = PartialState._shared_state
    if partial and partial.get("distributed_type") not in (None, DistributedType.NO):
        return
    AcceleratorState._reset_state()
    GradientState._reset_state()


def _check_outputs(settings: OrganTrainSettings) -> Path:
    out = Path(settings.output)
    if "@" in str(out) or "+" in str(out):
        raise TransplantError(f"organ folder {out}: mergekit reads '@' as a revision and '+' as a LoRA in model "
                              "paths; choose a path without them")
    _ensure_free(out, settings.overwrite)
    refuse_clobbering(out, [settings.model])
    partial = partial_dir(out)
    if settings.resume and not partial.is_dir():
        raise TransplantError(f"--resume: there is no saved state in {partial}")
    if partial.exists() and not settings.resume and not settings.overwrite:
        raise TransplantError(f"{partial} holds a saved training state: pass --resume to continue it or "
                              "--overwrite to start over")
    return out


def _check_model(settings: OrganTrainSettings):
    from mergekit_transplant.evaluation.compare import check_model

    try:
        check_model(settings.model, allow_pickle=settings.allow_pickle, trust_remote_code=settings.trust_remote_code)
        return read_index(settings.model, allow_pickle=settings.allow_pickle)
    except TransplantError as error:
        raise TransplantError(f"--model: {error}") from None


def schedule_loader(corpus: PackedCorpus, settings: OrganTrainSettings, steps: int, processes: int):
    """A DataLoader over the run's visit order: ``steps`` x batch x accumulation x processes sequences."""
    import torch

    per_step = settings.batch_size * settings.grad_accum * processes
    dataset = ScheduledSequences(corpus, visit_order(corpus.n, steps * per_step, settings.seed))
    return torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=False)


def run_steps(accelerator, model, optimizer, trainable, loader, settings: OrganTrainSettings, steps: int,
              start: int, after_step: Callable[[int, float, int], None]) -> int:
    """Optimizer steps ``start`` … ``steps`` (1-based as reported) over a prepared loader; returns tokens seen.

    The one training loop: the organ, and the demo's and benchmark's full fine-tuning and LoRA baselines, use
    it, so they share the data order, the learning-rate schedule and the accumulation. A NaN or Inf loss on
    any process stops every process at that step with one line naming it.
    """
    import torch

    batches = iter(accelerator.skip_first_batches(loader, start * settings.grad_accum) if start else loader)
    tokens = 0
    for step in range(start, steps):
        lr = lr_at(step, settings, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for _ in range(settings.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = model(input_ids=batch, labels=batch).loss
                seen = accelerator.gather(loss.detach().float().reshape(1))
                if not torch.isfinite(seen).all():
                    raise TransplantError(
                        f"the training loss became {'NaN' if torch.isnan(seen).any() else 'Inf'} at step "
                        f"{step + 1} (lr {lr:.3g}); nothing was written. Lower --lr or check the corpus and --dtype")
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += seen.mean().item() / settings.grad_accum
            tokens += batch.numel() * accelerator.num_processes
        after_step(step + 1, step_loss, tokens)
    return tokens


def train_organ(settings: OrganTrainSettings, *, progress: bool = True,
                log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> TrainResult:
    """Train ``settings.layers`` of ``settings.model`` on ``settings.corpus``; write the organ to ``settings.output``."""
    import torch
    from accelerate.utils import set_seed

    from mergekit_transplant.loading import load_causal_lm, load_tokenizer

    settings.validate()
    out = _check_outputs(settings)
    partial = partial_dir(out)
    index = _check_model(settings)
    prefix, num_layers = layer_prefix(index.all_tensors())
    block = parse_layers(settings.layers, num_layers, prefix)
    accelerator = _accelerator(settings)
    say = log if accelerator.is_main_process else (lambda m: None)
    names = [n for n in index.all_tensors() if block.contains(n)]
    say(f"organ: {block.describe()} of {settings.model}: {len(names)} tensors, "
        f"{sum(index.all_tensors()[n].numel for n in names):,} parameters")

    tokenizer = load_tokenizer(settings.model, trust_remote_code=settings.trust_remote_code)
    if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
        say("warning: the tokenizer has no EOS token; documents are packed without a separator")
    corpus = pack_corpus(settings.corpus, tokenizer, settings.max_length, include_path=settings.include_path)
    require_batches(corpus, settings.batch_size, accelerator.num_processes)
    eval_corpus: Optional[PackedCorpus] = None
    if settings.eval_corpus:
        eval_corpus = pack_corpus(settings.eval_corpus, tokenizer, settings.max_length,
                                  include_path=settings.include_path, option="--eval-corpus")
        require_batches(eval_corpus, 1, 1, option="--eval-corpus")
    steps = total_steps(settings, corpus.n, accelerator.num_processes)

    key_data = {k: v for k, v in settings.hyperparameters().items() if k not in _NOT_IN_KEY}
    key = run_key({**key_data, "model": index.fingerprint(), "corpus": corpus.sha256, "steps": steps,
                   "processes": accelerator.num_processes})
    resumed: Optional[ResumeState] = load_state(partial, key) if settings.resume else None

    set_seed(settings.seed)
    model, _ = load_causal_lm(settings.model, device="cpu", dtype=settings.dtype,
                              trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle,
                              with_tokenizer=False)
    model.config.use_cache = False
    params = freeze_all_but(model, block)
    unknown = [n for n, _ in params if n not in index.all_tensors()]
    if unknown:
        raise TransplantError(f"--model: parameter {unknown[0]!r} of the block is not in the checkpoint")
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    if resumed is not None:
        with torch.no_grad():
            for n, p in params:
                p.copy_(resumed.weights[n])
        optimizer.load_state_dict(resumed.trainer["optimizer"])
        torch.set_rng_state(resumed.trainer["rng"])

    loader = schedule_loader(corpus, settings, steps, accelerator.num_processes)
    model.train()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainable = [p for _, p in params]

    start = resumed.step if resumed else 0
    loss_curve = list(resumed.loss_curve) if resumed else []
    evals = list(resumed.evals) if resumed else []
    before = resumed.perplexity_before if resumed else None
    if eval_corpus is not None and resumed is None:
        before = perplexity(accelerator.unwrap_model(model), eval_corpus.sequences, settings.batch_size, accelerator)
        evals.append([0, before])
        say(f"eval perplexity before training: {before:.4g}")
    per_step = settings.batch_size * settings.grad_accum * accelerator.num_processes
    say(f"training {steps} step(s) of {per_step} x {settings.max_length} tokens"
        + (f", resuming at step {start}" if start else ""))

    tokens_before = resumed.tokens_trained if resumed else 0
    clock = {"started": time.perf_counter(), "tokens": 0}
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="organ train", unit="step", dynamic_ncols=True)

    def state_now(step: int) -> ResumeState:
        return ResumeState(
            step=step, key=key, loss_curve=loss_curve, evals=evals, perplexity_before=before,
            wall_time_s=(resumed.wall_time_s if resumed else 0.0) + time.perf_counter() - clock["started"],
            tokens_trained=tokens_before + clock["tokens"],
            weights={n: p for n, p in block_parameters(accelerator.unwrap_model(model), block)},
            trainer={"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()})

    def after_step(step: int, loss: float, tokens: int) -> None:
        clock["tokens"] = tokens
        loss_curve.append([step, loss])
        if bar is not None:
            rate = tokens / max(time.perf_counter() - clock["started"], 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            bar.update(1)
        if eval_corpus is not None and settings.eval_every and step % settings.eval_every == 0 and step < steps:
            ppl = perplexity(accelerator.unwrap_model(model), eval_corpus.sequences, settings.batch_size, accelerator)
            evals.append([step, ppl])
            say(f"step {step}: eval perplexity {ppl:.4g}")
        if settings.save_every and step % settings.save_every == 0 and step < steps:
            if accelerator.is_main_process:
                save_state(partial, state_now(step))
            accelerator.wait_for_everyone()

    try:
        tokens_now = run_steps(accelerator, model, optimizer, trainable, loader, settings, steps, start, after_step)
    except KeyboardInterrupt:
        if partial.is_dir():
            say(f"interrupted at step {len(loss_curve)}; the state saved in {partial} continues with --resume")
        raise
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - clock["started"]
    after = None
    if eval_corpus is not None:
        after = perplexity(accelerator.unwrap_model(model), eval_corpus.sequences, settings.batch_size, accelerator)
        evals.append([steps, after])
        say(f"eval perplexity after training: {after:.4g}" + (f" (before: {before:.4g})" if before else ""))

    import accelerate
    import transformers

    record = TrainRecord(
        base_model={"ref": settings.model, "architecture": index.architecture, "fingerprint": index.fingerprint(),
                    "parameters": index.num_parameters},
        block=block.to_json(), corpus=corpus.describe(), hyperparameters=settings.hyperparameters(),
        seed=settings.seed, steps=steps, tokens_trained=tokens_before + tokens_now,
        trainable_parameters=sum(p.numel() for p in trainable), loss_curve=loss_curve, evals=evals,
        perplexity_before=before, perplexity_after=after,
        eval_corpus=eval_corpus.describe() if eval_corpus is not None else None,
        wall_time_s=round((resumed.wall_time_s if resumed else 0.0) + elapsed, 3),
        tokens_per_s=round(tokens_now / max(elapsed, 1e-9), 1),
        runtime={"processes": accelerator.num_processes, "device": str(accelerator.device),
                 "mixed_precision": settings.mixed_precision, "torch": torch.__version__,
                 "transformers": transformers.__version__, "accelerate": accelerate.__version__},
    )
    manifest = None
    if accelerator.is_main_process:
        tensors = {n: p for n, p in block_parameters(accelerator.unwrap_model(model), block)}
        manifest = write_trained_organ(out, index=index, base_ref=settings.model, block=block, tensors=tensors,
                                       record=record, overwrite=settings.overwrite)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(organ_dir=out, manifest=manifest, record=record, block=block)
