"""The training corpus: documents read like ``analyze`` workloads, tokenised, packed into fixed-length sequences.

Documents come from ``analysis.workload.load_workload`` (``.jsonl`` with a
``"text"`` field, ``.txt`` one per line, or ``lm-eval:TASK``), each is
tokenised with the model's own tokenizer and ended with its EOS token, and the
stream is cut into ``--max-length`` sequences (the tail shorter than one
sequence is dropped). The order the sequences are visited in is a pure
function of the seed and the step, so a resumed run sees exactly the batches
the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from mergekit_transplant.analysis.workload import load_workload
from mergekit_transplant.errors import TransplantError


@dataclass
class PackedCorpus:
    """``sequences`` is a (n, max_length) LongTensor; the rest is what organ.json records."""

    sequences: "torch.Tensor"  # noqa: F821
    source: str
    kind: str
    sha256: str
    documents: int
    tokens: int  # tokens in the corpus, EOS included, before packing

    @property
    def n(self) -> int:
        return int(self.sequences.shape[0])

    def describe(self) -> dict:
        return {"path": self.source, "kind": self.kind, "sha256": self.sha256, "documents": self.documents,
                "tokens": self.tokens, "sequences": self.n,
                "max_length": int(self.sequences.shape[1]) if self.n else 0}


def pack_corpus(path: str, tokenizer, max_length: int, *, include_path: Optional[str] = None,
                option: str = "--corpus") -> PackedCorpus:
    """Read, tokenise and pack ``path``; an unreadable or empty corpus is one line naming ``option``."""
    import torch

    try:
        workload = load_workload(path, include_path=include_path)
    except TransplantError as error:
        raise TransplantError(f"{option}: {error}") from None
    eos = tokenizer.eos_token_id
    stream: List[int] = []
    for sample in workload.samples:
        text = sample.text + (sample.continuation or "")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        stream.extend(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            stream.append(eos)
    n = len(stream) // max_length
    sequences = torch.tensor(stream[: n * max_length], dtype=torch.long).view(n, max_length)
    return PackedCorpus(sequences=sequences, source=workload.source, kind=workload.kind, sha256=workload.sha256,
                        documents=workload.n, tokens=len(stream))


def require_batches(corpus: PackedCorpus, batch_size: int, processes: int, option: str = "--corpus") -> None:
    """A corpus must fill one batch on every process; say how far short it falls."""
    need = batch_size * processes
    if corpus.n < need:
        raise TransplantError(
            f"{option} {corpus.source}: {corpus.tokens} tokens pack into {corpus.n} sequence(s) of "
            f"--max-length {corpus.sequences.shape[1]}, fewer than one batch ({need}: --batch-size "
            f"{batch_size} x {processes} process(es)); add text or lower --max-length / --batch-size"
        )


def visit_order(n_sequences: int, total: int, seed: int) -> "torch.Tensor":  # noqa: F821
    """The first ``total`` sequence indices of a seeded reshuffle per epoch (epoch e uses seed + e)."""
    import torch

    chunks, left, epoch = [], total, 0
    while left > 0:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_sequences, generator=gen)
        chunks.append(perm[:left])
        left -= len(chunks[-1])
        epoch += 1
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)


class ScheduledSequences:
    """A map-style dataset: item i is the i-th sequence of the run's visit order (no shuffling left to do)."""

    def __init__(self, corpus: PackedCorpus, order):
        self.sequences = corpus.sequences
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        return self.sequences[self.order[i]]
