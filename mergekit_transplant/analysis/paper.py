"""Memory plans on paper: real architectures built on the ``meta`` device from their configs.

There is no Hub in the test environment, so the configs below are the
published ``config.json`` values of each model (the fields the plan and the
model classes read), copied by hand. ``plan_on_paper`` builds the model on the
``meta`` device (no weights, no memory), finds its candidates as ``analyze``
would, and returns the plan for a given batch, length and score.
docs/performance.md's table of GPUs per model comes from
``benchmarks/plan_table.py``, which calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

from mergekit_transplant.analysis.plan import MemoryPlan, Planner, meta_model
from mergekit_transplant.checkpoint import ModelIndex, TensorInfo

#: published config.json values (Hugging Face model repositories, as of 2024-2025)
PUBLISHED: Dict[str, dict] = {
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    },
    "Qwen/Qwen2.5-7B": {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28,
        "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    },
    "google/gemma-2-9b": {
        "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 14336, "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8,
        "head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "sliding_window": 4096, "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "torch_dtype": "float32",
    },
    "meta-llama/Meta-Llama-3-70B": {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
        "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    },
}

_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def index_from_model(model, name: str, dtype: str = "bfloat16") -> ModelIndex:
    """A ``ModelIndex`` whose tensor table is the (meta) model's state dict, stored in ``dtype``.

    Tied weights appear once, as in a checkpoint: the first name that holds them.
    """
    code = _CODES[dtype]
    size = {"F32": 4, "BF16": 2, "F16": 2}[code]
    tensors, seen = {}, set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        n = tensor.numel()
        tensors[key] = TensorInfo(key, tuple(tensor.shape), code, "", 0, n * size)
    config = model.config.to_dict()
    return ModelIndex(ref=name, root=Path("."), config=config, tensors=tensors)


def plan_on_paper(name_or_config, *, score: str = "attribution", batch: int = 8, length: int = 512,
                  scored_per_row: int = 64, dtype: str = "bfloat16", also: Sequence[str] = (),
                  modules: Optional[Sequence[str]] = None, recompute: bool = False,
                  gradient_batch_size: Optional[int] = None) -> MemoryPlan:
    """The plan of ``analyze --score SCORE`` on a published architecture, for a uniform batch.

    Every row holds ``length`` tokens, the last ``scored_per_row`` of them
    scored (a continuation of that many tokens). Device memory is not
    measured: the plan's baseline is 0 and it has no free memory to compare.
    """
    config = PUBLISHED[name_or_config] if isinstance(name_or_config, str) else dict(name_or_config)
    name = name_or_config if isinstance(name_or_config, str) else config.get("_name_or_path", "config")
    model = meta_model(config)
    index = index_from_model(model, name, dtype)
    planner = Planner(index, index, score=score, also=also, lengths=[length] * batch,
                      scored=[scored_per_row] * batch, modules=modules, dtype=dtype, device="cuda",
                      model=model, measure=False, recompute=recompute,
                      gradient_batch_size=gradient_batch_size)
    return planner.plan(batch)
