"""``OrganTrainSettings``: every setting of ``organ train`` in one dataclass, help text in field metadata.

The click options of ``mergekit-transplant organ train`` are generated from
these fields (``cli/organ.py``), so the command line, the Python API and the
``hyperparameters`` recorded in ``organ.json`` cannot drift apart. Validation
that needs no model or file happens here (``validate``); the rest (layer range
against the model, corpus size against a batch) where the model and corpus are read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional

from mergekit_transplant.errors import TransplantError

MIXED_PRECISION = ("no", "fp16", "bf16")


def _opt(help: str, *, flags: Optional[tuple] = None, record: bool = True,
         show_default: bool = True) -> Dict[str, Any]:
    """Field metadata (``options.py``): the option's help, its flags (default ``--field-name``), whether
    organ.json records it."""
    meta = {"help": help, "record": record, "show_default": show_default}
    return {**meta, "flags": flags} if flags else meta


@dataclass
class OrganTrainSettings:
    """How to train one contiguous block of decoder layers (an organ) on a corpus, everything else frozen."""

    model: str = field(metadata=_opt("Base model to train the organ in (local folder or Hub id[@revision]).",
                                     record=False))
    corpus: str = field(metadata=_opt(
        "Domain corpus: .jsonl with a \"text\" field per line, .txt (one document per line), or "
        "lm-eval:TASK (that task's documents; with --include-path).", record=False))
    output: str = field(metadata=_opt("Organ folder to write (appears whole or not at all).", flags=("--output", "-o"),
                                      record=False))
    layers: str = field(default="auto", metadata=_opt(
        "Decoder layers to train: S-E (inclusive, 0-based) or auto: 3 layers starting at floor(L/3), "
        "clipped to fit (the NOT paper's default block)."))
    steps: Optional[int] = field(default=None, metadata=_opt(
        "Optimizer steps (default: 1 epoch when neither --steps nor --epochs is given).", show_default=False))
    epochs: Optional[float] = field(default=None, metadata=_opt(
        "Passes over the corpus instead of --steps (may be fractional).", show_default=False))
    lr: float = field(default=1e-4, metadata=_opt("Peak learning rate (AdamW; linear warmup, cosine decay to 10%)."))
    batch_size: int = field(default=8, metadata=_opt("Sequences per micro-batch (per process)."))
    grad_accum: int = field(default=1, metadata=_opt("Micro-batches per optimizer step (gradient accumulation)."))
    max_length: int = field(default=512, metadata=_opt("Tokens per packed training sequence."))
    warmup: int = field(default=0, metadata=_opt("Linear warmup steps."))
    weight_decay: float = field(default=0.0, metadata=_opt("AdamW weight decay on the block's matrices."))
    max_grad_norm: float = field(default=1.0, metadata=_opt("Clip the block's gradient norm (0: no clipping)."))
    seed: int = field(default=0, metadata=_opt("Seed of the data order and of torch: a CPU run is reproducible "
                                               "byte for byte."))
    eval_corpus: Optional[str] = field(default=None, metadata=_opt(
        "Held-out corpus (same formats as --corpus) for perplexity before, during and after training.",
        record=False, show_default=False))
    eval_every: int = field(default=0, metadata=_opt("Evaluate on --eval-corpus every N steps (0: only before "
                                                     "and after)."))
    save_every: int = field(default=0, metadata=_opt(
        "Save a resumable state to OUTPUT.partial/ every N steps (0: never)."))
    include_path: Optional[str] = field(default=None, metadata=_opt(
        "Folder of local lm-eval task YAMLs, for lm-eval:TASK corpora.", record=False, show_default=False))
    device: Optional[str] = field(default=None, metadata=_opt(
        "cpu, cuda, mps... (default: what accelerate picks: the GPU of this process when there is one).",
        record=False, show_default=False))
    dtype: str = field(default="float32", metadata=_opt(
        "Dtype the model is loaded and the organ trained in (float32, bfloat16, float16). The organ is saved "
        "in the base model's own dtype."))
    mixed_precision: str = field(default="no", metadata=_opt("accelerate's autocast: no, fp16 or bf16."))
    trust_remote_code: bool = field(default=False, metadata=_opt(
        "Allow a model whose config maps to custom code (auto_map).", record=False))
    allow_pickle: bool = field(default=False, metadata=_opt(
        "Accept a model whose only weights are pickle files. Only for sources you trust.", record=False))
    overwrite: bool = field(default=False, metadata=_opt(
        "Replace OUTPUT if it exists; discard an OUTPUT.partial/ state instead of refusing.", record=False))
    resume: bool = field(default=False, metadata=_opt(
        "Continue from OUTPUT.partial/ (same settings); reaches the same bytes as an uninterrupted run.",
        record=False))

    def validate(self) -> None:
        """Refuse settings that make no sense before anything is loaded (one line naming the option)."""
        def positive(name: str, value, allow_zero: bool = False):
            if value is None:
                return
            ok = value >= 0 if allow_zero else value > 0
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                need = "at least 0" if allow_zero else "positive"
                raise TransplantError(f"--{name.replace('_', '-')} {value} must be {need}")

        if self.steps is not None and self.epochs is not None:
            raise TransplantError("give --steps or --epochs, not both")
        for name in ("steps", "epochs", "lr", "batch_size", "grad_accum", "max_length"):
            positive(name, getattr(self, name))
        for name in ("warmup", "eval_every", "save_every", "weight_decay", "max_grad_norm"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.max_length < 2:
            raise TransplantError(f"--max-length {self.max_length} must be at least 2 (a token and its successor)")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TransplantError(f"--mixed-precision {self.mixed_precision!r}: use one of {', '.join(MIXED_PRECISION)}")
        if self.resume and self.overwrite:
            raise TransplantError("--resume continues OUTPUT.partial/ and --overwrite discards it: give one")
        if self.eval_every and not self.eval_corpus:
            raise TransplantError("--eval-every needs --eval-corpus")

    def hyperparameters(self) -> Dict[str, Any]:
        """What organ.json records: every setting that changes the trained bytes."""
        data = asdict(self)
        return {f.name: data[f.name] for f in fields(self) if f.metadata.get("record", True)}

    def training_key(self) -> Dict[str, Any]:
        """Settings a resumed run must share with the run it continues."""
        key = self.hyperparameters()
        key.update(model=self.model, corpus=self.corpus)
        return key

