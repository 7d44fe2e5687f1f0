"""``TrainRecord``: what ``organ.json`` says about how a trained organ was made (versioned JSON)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mergekit_transplant import versioned
from mergekit_transplant.errors import TransplantError

RECORD_VERSION = 1


def _finite(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class TrainRecord:
    """The ``training`` section of a trained organ's manifest."""

    base_model: Dict[str, Any]  # ref, revision, architecture, fingerprint, parameters
    block: Dict[str, Any]  # Block.to_json()
    corpus: Dict[str, Any]  # PackedCorpus.describe(): path, kind, sha256, documents, tokens, sequences
    hyperparameters: Dict[str, Any]  # OrganTrainSettings.hyperparameters()
    seed: int
    steps: int
    tokens_trained: int
    trainable_parameters: int
    loss_curve: List[List[float]] = field(default_factory=list)  # [step, mean loss of that step]
    evals: List[List[float]] = field(default_factory=list)  # [step, eval perplexity]
    perplexity_before: Optional[float] = None
    perplexity_after: Optional[float] = None
    eval_corpus: Optional[Dict[str, Any]] = None
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    runtime: Dict[str, Any] = field(default_factory=dict)  # processes, device, mixed precision, library versions

    def to_json(self) -> dict:
        data = asdict(self)
        data["perplexity_before"] = _finite(self.perplexity_before)
        data["perplexity_after"] = _finite(self.perplexity_after)
        data["evals"] = [[int(s), _finite(p)] for s, p in self.evals]
        return {"record_version": RECORD_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, where: str = "organ.json") -> "TrainRecord":
        if not isinstance(data, dict):
            raise TransplantError(f"{where}: the training record is not an object")
        versioned.schema_of(data, (RECORD_VERSION,), where, "training record", key="record_version", missing=None)
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise TransplantError(f"{where}: malformed training record ({error})") from None
