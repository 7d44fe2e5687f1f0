"""The one dtype table: safetensors codes, torch names, element sizes, the names users type.

Every other view (bytes per safetensors element, the torch dtype of a stored
tensor, the dtypes a model may be loaded in, the dtypes mergekit accepts in a
recipe, a config's ``torch_dtype`` in bytes) is derived from ``DTYPES`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Dtype:
    code: str  # safetensors' name ("BF16")
    name: str  # torch's and transformers' name ("bfloat16")
    nbytes: int
    #: other spellings a user may type (``--dtype bf16``)
    aliases: Tuple[str, ...] = ()
    #: a floating-point type a model can be loaded, merged and trained in (mergekit's ``dtype``/``out_dtype``)
    model_dtype: bool = False
    #: whether a stored tensor can be read as raw bytes into a tensor of this dtype (float8: via safetensors)
    byte_view: bool = True

    @property
    def floating(self) -> bool:
        return self.code.startswith(("F", "BF"))


DTYPES: Tuple[Dtype, ...] = (
    Dtype("F64", "float64", 8, model_dtype=True),
    Dtype("F32", "float32", 4, ("fp32",), model_dtype=True),
    Dtype("F16", "float16", 2, ("fp16",), model_dtype=True),
    Dtype("BF16", "bfloat16", 2, ("bf16",), model_dtype=True),
    Dtype("F8_E4M3", "float8_e4m3fn", 1, byte_view=False),
    Dtype("F8_E5M2", "float8_e5m2", 1, byte_view=False),
    Dtype("I64", "int64", 8),
    Dtype("I32", "int32", 4),
    Dtype("I16", "int16", 2),
    Dtype("I8", "int8", 1),
    Dtype("U8", "uint8", 1),
    Dtype("BOOL", "bool", 1),
)

#: bytes per element of each safetensors dtype code
BYTES_PER_CODE: Dict[str, int] = {d.code: d.nbytes for d in DTYPES}
#: safetensors code -> torch name, for the codes read as raw bytes
TORCH_NAME_OF_CODE: Dict[str, str] = {d.code: d.name for d in DTYPES if d.byte_view}
#: safetensors code -> torch name of the types a model is stored in and loaded as
MODEL_DTYPE_OF_CODE: Dict[str, str] = {d.code: d.name for d in DTYPES if d.model_dtype}
#: the dtype names mergekit accepts for ``dtype``/``out_dtype``, sorted
MODEL_DTYPE_NAMES: Tuple[str, ...] = tuple(sorted(d.name for d in DTYPES if d.model_dtype))
#: every spelling of a model dtype a user may type -> its torch name (``--dtype bf16``)
MODEL_DTYPE_SPELLINGS: Dict[str, str] = {
    spelling: d.name for d in DTYPES if d.model_dtype for spelling in (d.name, *d.aliases)
}
#: a config's ``torch_dtype`` (floating types) -> bytes per parameter
BYTES_PER_FLOAT_NAME: Dict[str, int] = {d.name: d.nbytes for d in DTYPES if d.floating}


def torch_dtype_of_code(code: str, default: Optional[str] = None):
    """The torch dtype of a safetensors code read as raw bytes; ``default``'s (or None) when there is none."""
    import torch

    name = TORCH_NAME_OF_CODE.get(code, default)
    return getattr(torch, name, None) if name else None


def code_of_torch_dtype() -> Dict[object, str]:
    """torch dtype -> safetensors code (for tables built from tensors already loaded)."""
    import torch

    return {getattr(torch, d.name): d.code for d in DTYPES if d.byte_view}
