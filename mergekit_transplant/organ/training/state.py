"""The resumable state in ``OUTPUT.partial/``: block weights, optimizer, step, RNG, written whole or not at all.

Saved every ``--save-every`` steps by replacing the folder atomically
(``atomic.replacing_dir``), so an interrupt leaves the previous state intact.
Only state that changes the bytes of the result is kept, exactly: the block's
weights in the dtype they train in, AdamW's moments, the step, torch's RNG. The
data order and the learning rate are functions of the seed and step, so a
resumed run reaches the same final bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from mergekit_transplant import atomic
from mergekit_transplant.errors import TransplantError

STATE_VERSION = 1
WEIGHTS = "block.safetensors"
TRAINER = "trainer.pt"
STATE = "state.json"


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def run_key(key: Dict[str, Any]) -> str:
    """A hash of everything a resumed run must share with the one it continues."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ResumeState:
    step: int
    key: str
    loss_curve: List[List[float]] = field(default_factory=list)
    evals: List[List[float]] = field(default_factory=list)
    perplexity_before: Optional[float] = None
    wall_time_s: float = 0.0
    tokens_trained: int = 0
    weights: Dict[str, Any] = field(default_factory=dict)  # name -> tensor
    trainer: Dict[str, Any] = field(default_factory=dict)  # optimizer, rng


def save_state(folder: Path, state: ResumeState) -> None:
    import torch
    from safetensors.torch import save_file

    meta = {"state_version": STATE_VERSION, "step": state.step, "key": state.key, "loss_curve": state.loss_curve,
            "evals": state.evals, "perplexity_before": state.perplexity_before,
            "wall_time_s": state.wall_time_s, "tokens_trained": state.tokens_trained}
    with atomic.replacing_dir(folder, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.weights.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        torch.save(state.trainer, tmp / TRAINER)
        (tmp / STATE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_state(folder: Path, key: str) -> ResumeState:
    """Read ``folder``; refuse a state from another run (other settings, model or corpus) or a damaged one."""
    import torch
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / STATE).read_text(encoding="utf-8"))
        if meta.get("state_version") != STATE_VERSION:
            raise ValueError(f"state version {meta.get('state_version')!r}")
        weights = load_file(str(folder / WEIGHTS))
        trainer = torch.load(folder / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise TransplantError(f"--resume: {folder} is not a complete training state ({Path(error.filename).name} "
                              "is missing)") from None
    except Exception as error:
        raise TransplantError(f"--resume: {folder} cannot be read ({type(error).__name__}: {error})") from None
    if meta.get("key") != key:
        raise TransplantError(
            f"--resume: {folder} was saved by a run with other settings, model or corpus; resume with the same "
            "options, or pass --overwrite to start over")
    return ResumeState(step=int(meta["step"]), key=key, loss_curve=meta.get("loss_curve", []),
                       evals=meta.get("evals", []), perplexity_before=meta.get("perplexity_before"),
                       wall_time_s=float(meta.get("wall_time_s", 0.0)),
                       tokens_trained=int(meta.get("tokens_trained", 0)), weights=weights, trainer=trainer)
