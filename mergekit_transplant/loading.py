"""Load a causal LM and its tokenizer from a local folder or a Hub id (``id@revision``).

One place for the rules every command shares: safetensors only unless the user
allows pickle, no remote code unless asked, explicit device / dtype / device
map (accelerate's ``auto`` for models larger than one device).
"""

from __future__ import annotations

from typing import Optional, Tuple

from mergekit_transplant.checkpoint import resolve_model_dir, split_revision, weight_files
from mergekit_transplant.checkpoint.dtypes import MODEL_DTYPE_SPELLINGS
from mergekit_transplant.errors import TransplantError

#: every --dtype spelling -> torch's name (a view of ``checkpoint.dtypes.DTYPES``)
DTYPES = MODEL_DTYPE_SPELLINGS


def torch_dtype(name: Optional[str]):
    import torch

    if name in (None, "", "auto"):
        return None
    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise TransplantError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}") from None


def load_tokenizer(ref: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    root = resolve_model_dir(ref, need_weights=False)
    try:
        return AutoTokenizer.from_pretrained(str(root), trust_remote_code=trust_remote_code)
    except Exception as error:
        raise TransplantError(f"model {ref}: cannot load its tokenizer ({error})") from None


def load_causal_lm(
    ref: str,
    *,
    device: str = "cpu",
    dtype: Optional[str] = None,
    device_map: Optional[str] = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    with_tokenizer: bool = True,
) -> Tuple["torch.nn.Module", object]:  # noqa: F821
    """Return ``(model, tokenizer)`` in eval mode; tokenizer is None if not asked for."""
    from transformers import AutoModelForCausalLM

    path, _rev = split_revision(ref)
    root = resolve_model_dir(ref)
    files = weight_files(root, allow_pickle=allow_pickle)
    use_safetensors = all(f.suffix == ".safetensors" for f in files)
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=use_safetensors)
    if dtype not in (None, "auto"):
        kwargs["dtype"] = torch_dtype(dtype)
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(root), **kwargs)
    except Exception as error:
        raise TransplantError(f"model {ref}: cannot load it with transformers ({error})") from None
    if not device_map:
        model = model.to(device)
    model.eval()
    tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code) if with_tokenizer else None
    return model, tokenizer
