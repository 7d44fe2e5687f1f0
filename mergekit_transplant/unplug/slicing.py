"""Write the expert: the base's tensors with each layer's unplugged neurons cut out.

Works on the checkpoint files, not on a loaded model, so that every tensor
outside the MLPs is copied byte for byte (same name, dtype, bytes) and the
MLP tensors keep the checkpoint's dtype whatever ``--dtype`` the scoring pass
ran in. Shards are planned from the headers (``huggingface_hub``'s splitter,
5 GB shards) and written one at a time, so memory holds one shard, not the
model. The folder is Hub-ready: safetensors (with an index when sharded),
``config.json`` with the smaller ``intermediate_size`` (nothing else
changes), ``generation_config.json``, the tokenizer, ``unplug.json`` and a
model card. It appears atomically when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

from mergekit_transplant import atomic
from mergekit_transplant.checkpoint import DTYPE_BYTES, ModelIndex
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.unplug.layout import MlpLayout
from mergekit_transplant.unplug.report import REPORT_FILE, UnplugReport

MAX_SHARD_SIZE = "5GB"


def sliced_shapes(index: ModelIndex, layout: MlpLayout, report: UnplugReport) -> Dict[str, Tuple[int, ...]]:
    """Every tensor's shape in the expert (names as in the base)."""
    out = {}
    k, f = report.kept_size, report.intermediate_size
    for name, info in index.all_tensors().items():
        shape = tuple(info.shape)
        layer = _mlp_layer(name, layout, report.num_layers)
        if layer is not None:
            p = layout.mlp_prefix(layer)
            if name == f"{p}.{layout.down}.weight":
                shape = (shape[0], k)
            elif any(name in (f"{p}.{m}.weight", f"{p}.{m}.bias") for m in layout.row_modules()):
                shape = (shape[0] * k // f,) + shape[1:]
        out[name] = shape
    return out


def _mlp_layer(name: str, layout: MlpLayout, layers: int) -> Optional[int]:
    head = f"{layout.layers}."
    if not name.startswith(head):
        return None
    number, _, rest = name[len(head):].partition(".")
    if not number.isdigit() or not rest.startswith(f"{layout.mlp}."):
        return None
    layer = int(number)
    return layer if layer < layers and name in layout.tensor_names(layer) else None


def expert_tensors(index: ModelIndex, pickled: Optional[dict], layout: MlpLayout, report: UnplugReport,
                   names: Sequence[str]) -> Iterator[Tuple[str, "torch.Tensor"]]:  # noqa: F821
    """``(name, tensor)`` for ``names``: MLP tensors sliced to the kept neurons, the rest as stored."""
    from safetensors import safe_open

    handles: Dict[str, object] = {}
    try:
        for name in names:
            if pickled is not None and name in pickled:
                tensor = pickled[name].clone()  # a pickle's tensors may share storage; save_file refuses that
            else:
                info = index.tensors[name]
                handle = handles.get(info.file)
                if handle is None:
                    handle = handles[info.file] = safe_open(info.file, "pt")
                tensor = handle.get_tensor(name)
            layer = _mlp_layer(name, layout, report.num_layers)
            if layer is not None:
                sliced = layout.slice_tensor(name, tensor, layer, report.kept[layer], report.intermediate_size)
                if sliced is not None:
                    tensor = sliced
            yield name, tensor
    finally:
        handles.clear()


def write_expert(index: ModelIndex, pickled: Optional[dict], layout: MlpLayout, report: UnplugReport,
                 out_dir: os.PathLike | str, *, tokenizer, card_text: str, overwrite: bool = False) -> Path:
    """Write the expert folder atomically; returns its path."""
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    shapes = sliced_shapes(index, layout, report)
    infos = index.all_tensors()

    def size(name: str) -> int:
        n = 1
        for d in shapes[name]:
            n *= d
        return n * DTYPE_BYTES.get(infos[name].dtype, 4)

    # the splitter skips str values (it takes them for already-moved tensors): pass each name in a tuple
    split = split_state_dict_into_shards_factory(
        {n: (n,) for n in sorted(shapes)}, get_storage_size=lambda t: size(t[0]), get_storage_id=lambda t: None,
        filename_pattern="model{suffix}.safetensors", max_shard_size=MAX_SHARD_SIZE)
    with atomic.replacing_dir(out_dir, overwrite=overwrite) as tmp:
        for filename, names in split.filename_to_tensors.items():
            shard = dict(expert_tensors(index, pickled, layout, report, names))
            save_file(shard, str(tmp / filename), metadata={"format": "pt"})
            del shard
        if split.is_sharded:
            total = sum(size(n) for n in shapes)
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}, indent=2,
                sort_keys=True) + "\n")
        config = dict(index.config)
        config["intermediate_size"] = report.kept_size
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _generation_config(index).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / REPORT_FILE).write_text(report.to_json())
        (tmp / "README.md").write_text(card_text, encoding="utf-8")
    return out_dir


def _generation_config(index: ModelIndex):
    """The base's generation config, or one built from its config's token ids."""
    from transformers import GenerationConfig

    if (index.root / "generation_config.json").is_file():
        try:
            return GenerationConfig.from_pretrained(str(index.root))
        except Exception as error:
            raise TransplantError(f"model {index.ref}: cannot read generation_config.json ({error})") from None
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return GenerationConfig(**{k: index.config[k] for k in keys if index.config.get(k) is not None})
