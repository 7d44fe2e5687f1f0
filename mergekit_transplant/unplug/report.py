"""``unplug.json``: which neurons an expert kept, how they were chosen, and from which model.

The report is what the runtime (``unplugged``) applies to a live model and what
a reader checks an expert against: the kept neuron indices of every layer,
the score and keep ratio, the workload's sha256 and the base model's
fingerprint. Versioned through ``versioned.py``, like every report file:
``from_json`` refuses a schema it does not know and names what is missing or
malformed, in one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mergekit_transplant import versioned
from mergekit_transplant.errors import TransplantError

SCHEMA = 1
READABLE_SCHEMAS = (1,)
REPORT_FILE = "unplug.json"


def versioned_object(data: Any, source: str, readable: Sequence[int], what: str) -> Dict[str, Any]:
    """A JSON object (from text or parsed) of a ``readable`` schema; every failure is one line naming ``source``."""
    data = versioned.parsed(data, source)
    if not isinstance(data, dict):
        raise TransplantError(f"{source}: expected a JSON object")
    versioned.schema_of(data, readable, source, what)
    return data


@dataclass
class UnplugReport:
    """The expert's definition: per layer, the neurons kept (ascending indices into the base's MLP)."""

    base: str  # the --model reference
    architecture: str
    layout: Dict[str, Optional[str]]  # module names of the MLP (layers, mlp, gate, up, gate_up, down)
    num_layers: int
    hidden_size: int
    intermediate_size: int  # the base's
    keep: float
    kept_size: int  # round(keep × intermediate_size), the expert's intermediate_size
    score: str
    seed: int
    kept: List[List[int]]  # kept[layer] = sorted neuron indices
    workload: Dict[str, Any]  # path, kind, sha256, n, total
    base_fingerprint: Dict[str, Any]  # config_sha256, tensor_index_sha256, revision, weights_sha256
    parameters: Dict[str, int] = field(default_factory=dict)  # base, expert
    score_kept_share: List[float] = field(default_factory=list)  # per layer: share of the score kept
    settings: Dict[str, Any] = field(default_factory=dict)
    timing: Dict[str, float] = field(default_factory=dict)
    created_by: str = ""
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: Any, source: str = "unplug report") -> "UnplugReport":
        data = versioned_object(text, source, READABLE_SCHEMAS, "unplug report")
        names = {f for f in cls.__dataclass_fields__}
        required = [f for f, spec in cls.__dataclass_fields__.items()
                    if spec.default is MISSING and spec.default_factory is MISSING]
        missing = [f for f in required if f not in data]
        if missing:
            raise TransplantError(f"{source}: missing field(s) {', '.join(missing)}")
        report = cls(**{k: v for k, v in data.items() if k in names and k != "schema"})
        report.check(source)
        return report

    @classmethod
    def load(cls, path: os.PathLike | str) -> "UnplugReport":
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILE
        return versioned.load(path, "unplug report", lambda text, source: cls.from_json(text, f"unplug report {source}"))

    def check(self, source: str = "unplug report") -> None:
        """The kept lists agree with the sizes: one per layer, kept_size sorted unique in-range indices."""
        if not isinstance(self.kept, list) or len(self.kept) != self.num_layers:
            raise TransplantError(f"{source}: 'kept' must list {self.num_layers} layers")
        for i, idx in enumerate(self.kept):
            if (not isinstance(idx, list) or len(idx) != self.kept_size
                    or not all(isinstance(j, int) and 0 <= j < self.intermediate_size for j in idx)
                    or idx != sorted(set(idx))):
                raise TransplantError(
                    f"{source}: layer {i} must keep {self.kept_size} sorted distinct neuron indices in "
                    f"[0, {self.intermediate_size})"
                )
