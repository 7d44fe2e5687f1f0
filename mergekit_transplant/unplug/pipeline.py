"""``unplug(settings)``: score the neurons, keep each layer's best, write the expert.

Everything that can be refused is refused before the model is loaded and
before anything is written: the keep ratio against the model's width, the
architecture's MLP layout, the workload, the output folder, pickle weights
and custom code.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.unplug.config import UnplugSettings, kept_count
from mergekit_transplant.unplug.layout import MlpLayout, check_tensors, layout_for
from mergekit_transplant.unplug.report import UnplugReport
from mergekit_transplant.unplug.scores import NeuronScores, score_neurons


@dataclass
class BaseModel:
    """What the headers say about the model to unplug."""

    index: object  # checkpoint.ModelIndex
    layout: MlpLayout
    num_layers: int
    hidden_size: int
    intermediate_size: int


def inspect_base(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> BaseModel:
    """Headers and config only: the layout, sizes and the checks on pickle and custom code."""
    from mergekit_transplant.checkpoint import read_index
    from mergekit_transplant.evaluation.compare import check_model

    check_model(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    index = read_index(ref, allow_pickle=allow_pickle)
    cfg = index.config
    layout = layout_for(cfg)
    layers, hidden, inter = cfg.get("num_hidden_layers"), cfg.get("hidden_size"), cfg["intermediate_size"]
    if not isinstance(layers, int) or not isinstance(hidden, int):
        raise TransplantError(f"model {ref}: config.json lacks num_hidden_layers / hidden_size")
    check_tensors(layout, {n: t.shape for n, t in index.all_tensors().items()}, layers, inter, hidden, ref)
    return BaseModel(index, layout, layers, hidden, inter)


def check_keep_fits(keep: float, base: BaseModel, option: str = "--keep") -> int:
    k = kept_count(keep, base.intermediate_size)
    if k < 1:
        raise TransplantError(
            f"{option} {keep:g} keeps round({keep:g} × {base.intermediate_size}) = 0 neurons per layer; "
            f"the smallest ratio that keeps one is {0.5 / base.intermediate_size:.3g}")
    return k


def check_output(path: Optional[str], overwrite: bool) -> Path:
    if not path:
        raise TransplantError("-o/--output is required: the folder to write the expert to")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise TransplantError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TransplantError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
    return out


def load_scoring_model(settings, base: BaseModel):
    from mergekit_transplant.checkpoint.environment import check_device
    from mergekit_transplant.loading import load_causal_lm

    device = check_device(settings.device)
    return load_causal_lm(settings.model, device=device, dtype=settings.dtype,
                          trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle)


def tokenised(workload, model, tokenizer, max_length: int):
    from mergekit_transplant.analysis.tokens import context_limit, encode

    limit = context_limit(model, max_length)
    seqs = encode(tokenizer, workload.samples, limit)
    truncated = sum(s.truncated for s in seqs)
    notes = [f"{truncated} of {len(seqs)} workload samples were longer than {limit} tokens and lost tokens from "
             "the start of the prompt"] if truncated else []
    return seqs, notes


def read_workload(settings, *, limit: Optional[int]):
    from mergekit_transplant.analysis.workload import load_workload

    return load_workload(settings.workload, lm_eval_task=settings.lm_eval_task,
                         include_path=settings.include_path, limit=limit, seed=settings.seed)


def model_parameters(index, layout: MlpLayout, layers: int, inter: int, kept: int) -> Tuple[int, int]:
    """(base, expert) parameter counts from the headers."""
    total = index.num_parameters
    removed = 0
    tensors = index.all_tensors()
    for i in range(layers):
        for name in layout.tensor_names(i):
            info = tensors.get(name)
            if info is not None and not name.endswith(f"{layout.down}.bias"):
                removed += info.numel * (inter - kept) // inter
    return total, total - removed


def base_fingerprint(settings, base: BaseModel) -> dict:
    """The config/tensor-table hashes of the headers plus a digest of the weight and tokenizer files."""
    from mergekit_transplant.evaluation.fingerprint import model_fingerprint

    fingerprint = dict(base.index.fingerprint())
    fingerprint["model_sha256"] = model_fingerprint(settings.model, allow_pickle=settings.allow_pickle)
    return fingerprint


def make_report(settings, base: BaseModel, workload, scores: NeuronScores, keep: float, kept_size: int,
                timing: dict, fingerprint: Optional[dict] = None) -> UnplugReport:
    from mergekit_transplant._version import __version__

    kept = scores.kept(kept_size)
    total, expert = model_parameters(base.index, base.layout, base.num_layers, base.intermediate_size, kept_size)
    fingerprint = fingerprint if fingerprint is not None else base_fingerprint(settings, base)
    public = {k: v for k, v in asdict(settings).items() if k not in ("output", "report", "overwrite")}
    return UnplugReport(
        base=settings.model, architecture=base.layout.architecture,
        layout={k: getattr(base.layout, k) for k in ("layers", "mlp", "gate", "up", "gate_up", "down")},
        num_layers=base.num_layers, hidden_size=base.hidden_size, intermediate_size=base.intermediate_size,
        keep=keep, kept_size=kept_size, score=scores.score, seed=settings.seed, kept=kept,
        workload=workload.describe(), base_fingerprint=fingerprint,
        parameters={"base": total, "expert": expert},
        score_kept_share=[round(x, 6) for x in scores.kept_share(kept)], settings=public,
        timing={k: round(v, 3) for k, v in timing.items()}, created_by=f"mergekit-transplant {__version__}",
    )


@dataclass
class UnplugResult:
    report: UnplugReport
    output: Path
    notes: List[str]


def unplug(settings: UnplugSettings, *, command: Optional[str] = None, progress: bool = True) -> UnplugResult:
    """Score ``settings.model``'s MLP neurons on the workload and write the expert to ``settings.output``."""
    import torch

    from mergekit_transplant import atomic
    from mergekit_transplant.analysis.pipeline import _pad_id
    from mergekit_transplant.analysis.streaming import pickled_index
    from mergekit_transplant.unplug.card import build_unplug_card

    start = time.perf_counter()
    out = check_output(settings.output, settings.overwrite)
    base = inspect_base(settings.model, allow_pickle=settings.allow_pickle,
                        trust_remote_code=settings.trust_remote_code)
    kept_size = check_keep_fits(settings.keep, base)
    workload = read_workload(settings, limit=settings.limit)
    timing = {}
    torch.manual_seed(settings.seed)
    notes: List[str] = []
    if settings.score == "random":
        from mergekit_transplant.loading import load_tokenizer

        tokenizer = load_tokenizer(settings.model, trust_remote_code=settings.trust_remote_code)
        scores = score_neurons(None, base.layout, [], score="random", layers=base.num_layers,
                               intermediate=base.intermediate_size, seed=settings.seed)
    else:
        t0 = time.perf_counter()
        model, tokenizer = load_scoring_model(settings, base)
        timing["load_s"] = time.perf_counter() - t0
        seqs, notes = tokenised(workload, model, tokenizer, settings.max_length)
        scores = score_neurons(model, base.layout, seqs, score=settings.score, layers=base.num_layers,
                               intermediate=base.intermediate_size, batch_size=settings.batch_size,
                               pad_id=_pad_id(tokenizer), seed=settings.seed, progress=progress)
        timing.update(score_s=scores.seconds, tokens=scores.tokens, positions=scores.positions)
        del model
    pickled = None
    if not base.index.tensors and base.index.pickled:
        pickled = pickled_index(base.index, allow_pickle=True)
    timing["total_s"] = time.perf_counter() - start
    report = make_report(settings, base, workload, scores, settings.keep, kept_size, timing)
    card = build_unplug_card(report, name=out.name or "expert", hub_id=settings.hub_id, command=command)
    if "base_model:" not in card.split("\n---", 1)[0]:
        notes.append(f"{settings.model} is a local folder with no Hub id: the card's base_model is left out "
                     "(pass --hub-id org/name to set it)")
    from mergekit_transplant.unplug.slicing import write_expert

    write_expert(base.index, pickled, base.layout, report, out, tokenizer=tokenizer, card_text=card,
                 overwrite=settings.overwrite)
    if settings.report:
        atomic.write_text(settings.report, report.to_json())
    return UnplugResult(report, out, notes)
