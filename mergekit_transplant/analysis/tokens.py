"""Token sequences, padded batches, and the positions each statistic is read at.

The *scored positions* of a sequence are the positions whose next-token
prediction the workload cares about: with a continuation (given, or
generated), every position that predicts a continuation token; without one,
the last prompt token. Padding may sit on either side; position ids are
computed from the attention mask so a left-padded row sees exactly the
positions it would see alone, and "last" means the last real token of a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

from mergekit_transplant.analysis.workload import Sample


@dataclass
class TokenSequence:
    ids: List[int]
    prompt_len: int  # tokens of ids that are prompt; the rest is continuation
    truncated: bool = False

    @property
    def scored(self) -> List[int]:
        """Positions (in ``ids``) whose next-token prediction is scored."""
        if len(self.ids) > self.prompt_len:
            return list(range(self.prompt_len - 1, len(self.ids) - 1))
        return [len(self.ids) - 1]

    @property
    def labels(self) -> List[Optional[int]]:
        """The token each scored position predicts (None: no continuation)."""
        if len(self.ids) > self.prompt_len:
            return self.ids[self.prompt_len:]
        return [None]


def context_limit(model, max_length: int) -> int:
    """The longest sequence to feed: ``max_length`` capped by the model's context.

    ``model`` is a model or its config as a dict (``config.json``, before loading).
    """
    if isinstance(model, dict):
        cfg = model.get("text_config") or model
        limit = cfg.get("max_position_embeddings")
        return min(max_length, int(limit)) if limit else max_length
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    limit = getattr(cfg, "max_position_embeddings", None)
    return min(max_length, int(limit)) if limit else max_length


def encode(tokenizer, samples: Sequence[Sample], max_length: int) -> List[TokenSequence]:
    """Tokenise prompts and continuations; keep the last ``max_length`` tokens.

    Overlong sequences lose tokens from the start of the prompt (the scored
    end is kept); a continuation longer than the window keeps its first
    ``max_length - 1`` tokens after one prompt token.
    """
    out = []
    for sample in samples:
        prompt = list(tokenizer(sample.text, add_special_tokens=True)["input_ids"])
        if not prompt:
            prompt = [_fallback_token(tokenizer)]
        cont = list(tokenizer(sample.continuation, add_special_tokens=False)["input_ids"]) if sample.continuation else []
        out.append(fit(prompt, cont, max_length))
    return out


def fit(prompt: List[int], cont: List[int], max_length: int) -> TokenSequence:
    if len(prompt) + len(cont) <= max_length:
        return TokenSequence(prompt + cont, len(prompt))
    if len(cont) >= max_length:
        cont = cont[: max_length - 1]
        prompt = prompt[-1:]
    else:
        prompt = prompt[len(prompt) + len(cont) - max_length:]
    return TokenSequence(prompt + cont, len(prompt), truncated=True)


def _fallback_token(tokenizer) -> int:
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@dataclass
class Batch:
    """Padded inputs plus the scored positions, flattened row-major."""

    sample_ids: List[int]
    input_ids: "torch.Tensor"  # noqa: F821  [B, T]
    attention_mask: "torch.Tensor"  # noqa: F821
    position_ids: "torch.Tensor"  # noqa: F821
    rows: "torch.Tensor"  # noqa: F821  [P] batch row of each scored position
    cols: "torch.Tensor"  # noqa: F821  [P] its time index in the padded batch
    weights: "torch.Tensor"  # noqa: F821  [P] 1 / (scored positions in its row)
    labels: "torch.Tensor"  # noqa: F821  [P] next token, -1 where none is given
    tokens: int  # real (non-pad) tokens in the batch

    @property
    def size(self) -> int:
        return len(self.sample_ids)


def make_batch(seqs: Sequence[TokenSequence], sample_ids: Sequence[int], *, pad_id: int, padding_side: str,
               device) -> Batch:
    import torch

    width = max(len(s.ids) for s in seqs)
    ids, mask, rows, cols, weights, labels = [], [], [], [], [], []
    for r, seq in enumerate(seqs):
        pad = width - len(seq.ids)
        left = pad if padding_side == "left" else 0
        ids.append([pad_id] * left + seq.ids + [pad_id] * (pad - left))
        mask.append([0] * left + [1] * len(seq.ids) + [0] * (pad - left))
        scored = seq.scored
        for pos, label in zip(scored, seq.labels):
            rows.append(r)
            cols.append(left + pos)
            weights.append(1.0 / len(scored))
            labels.append(-1 if label is None else label)
    mask_t = torch.tensor(mask, dtype=torch.long)
    position_ids = (mask_t.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        sample_ids=list(sample_ids),
        input_ids=torch.tensor(ids, dtype=torch.long).to(device),
        attention_mask=mask_t.to(device),
        position_ids=position_ids.to(device),
        rows=torch.tensor(rows, dtype=torch.long).to(device),
        cols=torch.tensor(cols, dtype=torch.long).to(device),
        weights=torch.tensor(weights, dtype=torch.float32).to(device),
        labels=torch.tensor(labels, dtype=torch.long).to(device),
        tokens=int(mask_t.sum()),
    )


def batches(seqs: Sequence[TokenSequence], batch_size: int, *, pad_id: int, padding_side: str,
            device) -> Iterator[Batch]:
    """Batches of similar length (less padding), in a fixed order: by length, then index."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i].ids), i))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield make_batch([seqs[i] for i in chunk], chunk, pad_id=pad_id, padding_side=padding_side,
                         device=device)


def likelihood_view(seqs: Sequence[TokenSequence]) -> List[Optional[TokenSequence]]:
    """Each sequence as a log-likelihood to measure: its continuation, or else its own text.

    ``gain`` and greedy selection measure log p(continuation | prompt); a
    sample without a continuation is measured on its whole text (every token
    after the first). ``None`` where there is nothing to measure (one token,
    no continuation).
    """
    out: List[Optional[TokenSequence]] = []
    for seq in seqs:
        if len(seq.ids) > seq.prompt_len:
            out.append(seq)
        elif len(seq.ids) >= 2:
            out.append(TokenSequence(list(seq.ids), 1, truncated=seq.truncated))
        else:
            out.append(None)
    return out
