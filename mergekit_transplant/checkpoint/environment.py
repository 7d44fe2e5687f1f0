"""Where the bytes and the arithmetic may go: offline mode and the compute device, decided once.

- ``hub_offline``: huggingface_hub's own offline switch (``HF_HUB_OFFLINE`` or
  ``TRANSFORMERS_OFFLINE``, the values huggingface_hub accepts: 1/on/yes/true),
  as it saw it at import or as set now;
- ``resolve_device`` / ``check_device``: ``--device`` for every command that
  takes one: ``auto`` picks the accelerator as mergekit's ``--device auto``
  does (cuda, then xpu, then cpu), and a missing GPU is named in one line
  before any model is read (torch would fail deep inside loading, mergekit
  mid-merge).
"""

from __future__ import annotations

import os
from typing import Optional

from mergekit_transplant.errors import TransplantError

AUTO = "auto"


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is off limits (huggingface_hub's rule and values)."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or now.strip().upper() in constants.ENV_VARS_TRUE_VALUES


def resolve_device(device: Optional[str]) -> str:
    """``auto`` (or nothing): cuda when torch sees a GPU, then xpu, else cpu; any other device unchanged."""
    if device not in (None, "", AUTO):
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    return "cpu"


def check_device(device: Optional[str], *, remedy: str = "use --device cpu") -> str:
    """The device to use (``auto`` resolved); one clear error when it is not there."""
    import torch

    device = resolve_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise TransplantError(f"--device {device!r}: not a device torch knows ({error})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TransplantError(f"device {device} was asked for, but torch sees no CUDA GPU here ({remedy})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TransplantError(f"device {device} was asked for, but torch sees only "
                                  f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TransplantError(f"device {device} was asked for, but MPS is not available here")
    return device
