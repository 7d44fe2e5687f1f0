"""``analyze()``: run the passes, score, select, and render the recipe.

Only one model is resident at a time: the target runs first (its pass
yields the target's activations and, streaming the donor's tensors one at a
time, the ``local`` score), is freed, and then the donor runs if a score
needs it (``activation``, ``attribution``). The passes each score needs:

=============  ============================  ==================================
score          passes                        cost
=============  ============================  ==================================
local          target                        1 forward + donor tensors streamed
activation     target, donor                 2 forwards
attribution    donor (with gradients)        1 forward + 1 backward + target
                                             tensors streamed
gain           target (with gradients)       1 forward + 1 backward + donor
                                             tensors streamed
=============  ============================  ==================================

``select="greedy"`` then loads the target once more (after the donor, if
the donor ran) and measures candidates in it (``analysis.greedy``).

Whenever both models run, ``activation`` comes for free and is reported
too; other scores are computed only when named (``also=``).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from mergekit_transplant.analysis import capture as capture_mod
from mergekit_transplant.analysis.candidates import Candidate, find_candidates
from mergekit_transplant.analysis.greedy import DEFAULT_PREFILTER_ALL, DEFAULT_SELECT, SelectConfig
from mergekit_transplant.analysis.plan import MemoryPlan, Planner
from mergekit_transplant.analysis.scores import REPORTED, SCORES, ScoreTable, module_scores
from mergekit_transplant.analysis.report import AnalysisReport, build_report
from mergekit_transplant.analysis.selection import Picked, pick, selections, validate
from mergekit_transplant.analysis.settings import CAPTURE_MODES, DEFAULT_TOP_K, GRANULARITIES, AnalyzeSettings
from mergekit_transplant.analysis.streaming import TensorStreamer
from mergekit_transplant.analysis.tokens import TokenSequence, context_limit, encode, likelihood_view
from mergekit_transplant.analysis.units import UNITS
from mergekit_transplant.analysis.workload import Workload, load_workload
from mergekit_transplant.checkpoint import ModelIndex, read_index
from mergekit_transplant.checkpoint.dtypes import MODEL_DTYPE_OF_CODE
from mergekit_transplant.checkpoint.environment import check_device
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.recipe import Selection, render_recipe


@dataclass
class AnalysisResult:
    report: AnalysisReport
    selections: List[Selection]
    recipe_text: str
    table: ScoreTable = field(repr=False, default=None)
    warnings: List[str] = field(default_factory=list)

    def ranking(self, score: Optional[str] = None) -> List[str]:
        """Units (tensor names, or layer prefixes) best first by ``score``."""
        score = score or self.report.score
        try:
            return list(self.report.ranking[score])
        except KeyError:
            raise TransplantError(
                f"score {score!r} was not computed; computed: {', '.join(sorted(self.report.ranking))}"
            ) from None


def analyze(
    target: Union[str, AnalyzeSettings],
    donor: Optional[str] = None,
    workload: Union[Workload, str, Path, None] = None,
    *,
    command: Optional[str] = None,
    progress: bool = True,
    on_plan: Optional[Callable[["MemoryPlan"], None]] = None,
    plan_only: bool = False,
    **settings_kw,
) -> "AnalysisResult":
    """Score every candidate module of ``target`` against ``donor`` on ``workload``.

    Returns the report (see docs/analysis.md for its schema), the selected
    tensors, and the recipe text that ``mergekit-yaml`` runs. Selection is
    ``top_k`` and/or ``param_budget`` (a fraction of the target's
    parameters); with neither, the best ``DEFAULT_TOP_K`` units.
    ``select`` defaults to ``DEFAULT_SELECT`` (``"top"``; always ``"top"``
    with ``granularity="layer"`` or proportional strengths);
    ``select="greedy"`` measures instead of ranking (``analysis.greedy``;
    ``prefilter``, ``min_gain``, ``holdout_fraction``); ``controls`` random
    unit sets of the selection's size are compared with it.

    Before any model loads, the memory plan (``plan.MemoryPlan``) is
    estimated, handed to ``on_plan`` and stored in the report; when it
    exceeds the device's free memory the run stops with the largest batch
    size (or length) that fits, unless ``force``. With ``plan_only`` the
    plan is returned and nothing loads (``plan_analysis``). The gradient
    scores run forward + backward over micro-batches of ``gradient_batch_size``
    rows (default: sized by the plan so that every layer's saved activations
    fit in three quarters of the weights' size), or, with ``recompute``, over whole batches
    with each decoder layer recomputed in the backward pass (memory bounded by
    one layer, one more forward pass; ``recompute.py``).
    ``command`` is the command line recorded in the recipe header and report
    (default: ``settings.to_cli()``).
    """
    if isinstance(target, AnalyzeSettings):
        settings = dataclasses.replace(target, **settings_kw) if settings_kw else target
    else:
        if isinstance(workload, (str, Path)):
            settings_kw.setdefault("workload", str(workload))
        settings = AnalyzeSettings(target=target, donor=donor, **settings_kw)
    if workload is None:
        workload = load_workload(settings.workload, lm_eval_task=settings.lm_eval_task,
                                 include_path=list(settings.include_path) or None, limit=settings.limit,
                                 seed=settings.seed)
    return _analyze(settings, workload, command=command, progress=progress, on_plan=on_plan, plan_only=plan_only)


def _analyze(settings: AnalyzeSettings, workload: Union[Workload, str, Path], *, command: Optional[str],
             progress: bool, on_plan: Optional[Callable[["MemoryPlan"], None]], plan_only: bool) -> "AnalysisResult":
    s = settings
    target, donor, score, also, top_k, param_budget = s.target, s.donor, s.score, s.also, s.top_k, s.param_budget
    strength, strength_mode, modules, include_embeddings = s.strength, s.strength_mode, s.modules or None, \
        s.include_embeddings
    granularity, capture, max_new_tokens, device, dtype = s.granularity, s.capture, s.max_new_tokens, s.device, \
        s.dtype
    device_map, batch_size, max_length, padding_side, limit = s.device_map, s.batch_size, s.max_length, \
        s.padding_side, s.limit
    seed, trust_remote_code, allow_pickle, select, prefilter = s.seed, s.trust_remote_code, s.allow_pickle, \
        s.select, s.prefilter
    min_gain, holdout_fraction, controls, recompute, force = s.min_gain, s.holdout_fraction, s.controls, \
        s.recompute, s.force
    gradient_batch_size = s.gradient_batch_size
    import torch

    t_start = time.perf_counter()
    if isinstance(modules, str):
        modules = [modules]
    _validate(score, also, capture, granularity, padding_side, batch_size, max_length, max_new_tokens,
              gradient_batch_size)
    validate(top_k=top_k, param_budget=param_budget, strength=strength, strength_mode=strength_mode)
    if select is None:  # greedy selects modules, with constant strength: top otherwise
        select = "top" if granularity == "layer" or strength_mode != "constant" else DEFAULT_SELECT
    choosing = SelectConfig(select=select, prefilter=prefilter, min_gain=min_gain,
                            holdout_fraction=holdout_fraction, controls=controls)
    choosing.validate()
    if select == "greedy" and granularity == "layer":
        raise TransplantError("--select greedy selects modules; it does not combine with --granularity layer")
    if select == "greedy" and strength_mode != "constant":
        raise TransplantError("--strength-mode proportional scales by the score; with --select greedy use "
                              "--strength")
    if top_k is None and param_budget is None:
        top_k = DEFAULT_TOP_K
    if not isinstance(workload, Workload):
        workload = load_workload(workload, limit=limit, seed=seed)
    elif limit is not None and limit < workload.n:
        raise TransplantError("pass limit to load_workload() when giving a Workload object")
    torch.manual_seed(seed)

    wanted = {score, *also}
    need_local = "local" in wanted
    need_attr = "attribution" in wanted
    need_gain = "gain" in wanted
    run_target = need_local or "activation" in wanted or need_gain
    run_donor = "activation" in wanted or need_attr
    if run_target and run_donor:
        wanted.add("activation")

    device = check_device(device)  # auto -> cuda/xpu/cpu; a missing GPU named before loading
    target_index, target_pickled = _read(target, allow_pickle)
    donor_index, donor_pickled = _read(donor, allow_pickle)
    warnings: List[str] = []
    if target_index.architecture != donor_index.architecture:
        raise TransplantError(
            f"target is {target_index.architecture} but donor is {donor_index.architecture}: "
            "transplants need structurally identical models"
        )
    if target_index.vocab_size != donor_index.vocab_size:
        raise TransplantError(
            f"vocab size mismatch: target {target} has {target_index.vocab_size} tokens, donor {donor} has "
            f"{donor_index.vocab_size}; the analysis runs both models on the target's tokenizer, so they must "
            "share it"
        )
    timing: Dict[str, float] = {}
    load = dict(device=device, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle)

    state: Dict[str, object] = {}
    target_stats: Dict[str, "torch.Tensor"] = {}
    donor_stats: Dict[str, "torch.Tensor"] = {}
    generations: Dict[str, List[str]] = {}

    # Tokenise once (always with the target's tokenizer) and plan the memory, before any model loads.
    tokenizer = _tokenizer(target, trust_remote_code)
    limit_len = context_limit(target_index.config, max_length)
    seqs = encode(tokenizer, workload.samples, limit_len)
    if capture != "generate":
        _check_continuations(tokenizer, workload, limit_len)
    truncated = sum(s.truncated for s in seqs)
    if truncated:
        warnings.append(f"{truncated} of {len(seqs)} workload samples were longer than {limit_len} "
                        "tokens and lost tokens from the start of the prompt")
    state.update(seqs=seqs, tokenizer=tokenizer, max_len=limit_len, pad_id=_pad_id(tokenizer))
    # what greedy (and teacher-forced gain) will score, checked before the plan and before loading
    for needs, what in ((select == "greedy", "--select greedy"), (need_gain and capture != "generate", "score gain")):
        if needs and all(s is None for s in likelihood_view(seqs)):
            raise TransplantError(f"{what}: the workload has no continuation and no text of at least 2 tokens "
                                  "to score")
    planner = _planner(target_index, donor_index, seqs, score=score, also=also, capture=capture,
                       max_new_tokens=max_new_tokens, max_len=limit_len, modules=modules,
                       include_embeddings=include_embeddings, dtype=dtype, device=device, device_map=device_map,
                       trust_remote_code=trust_remote_code, recompute=recompute, greedy=select == "greedy",
                       gradient_batch_size=gradient_batch_size)
    plan = planner.plan(batch_size)
    if on_plan is not None:
        on_plan(plan)
    if plan_only:
        return plan
    if plan.fits() is False:
        _refuse(plan, planner, batch_size, limit_len, force, warnings)

    def prepare(model, role: str):
        """Find the candidates (on the first model loaded)."""
        if "candidates" not in state:
            state["eos_ids"] = _eos_ids(tokenizer, model)
            cands, skipped = find_candidates(model, target_index, donor_index, modules=modules,
                                             include_embeddings=include_embeddings)
            state.update(candidates=cands, skipped=skipped)
            if skipped:
                shapes = [s for s in skipped if " has shape " in s]
                what = f"{len(shapes)} differ in shape between target and donor" if shapes else "are not in both checkpoints"
                warnings.append(f"{len(skipped)} linear modules are not candidates: {what} "
                                f"(first: {skipped[0]}); see the report's skipped_modules")
        return state["seqs"]

    def sequences_for(model, role: str) -> List[TokenSequence]:
        seqs = state["seqs"]
        if capture != "generate":
            return seqs
        generated, seconds = capture_mod.generate(
            model, seqs, max_new_tokens=max_new_tokens, max_length=state["max_len"], batch_size=batch_size,
            pad_id=state["pad_id"], eos_ids=state["eos_ids"], desc=f"{role}: generate", progress=progress)
        timing[f"{role}_generate_s"] = seconds
        tok = state["tokenizer"]
        generations[role] = [tok.decode(s.ids[s.prompt_len:]) for s in generated]
        return generated

    streams = {"target": (target_index, target_pickled), "donor": (donor_index, donor_pickled)}

    def run_model(role: str, ref: str, passes: Sequence["_Pass"]) -> Dict[str, "torch.Tensor"]:
        """Load one model, run its passes over the workload (the other checkpoint streamed), free it."""
        t0 = time.perf_counter()
        model = _load(ref, load)
        timing[f"{role}_load_s"] = time.perf_counter() - t0
        prepare(model, role)
        _check_modules(model, state["candidates"])
        seqs = sequences_for(model, role)
        stats: Dict[str, "torch.Tensor"] = {}
        for p in passes:
            fed = seqs
            if p.gain:
                fed = [s for s in likelihood_view(seqs) if s is not None]
                if not fed:
                    raise TransplantError("score gain: the workload has no continuation and no text of at least "
                                          "2 tokens to score")
            with TensorStreamer(*streams["donor"]) as donor_files, TensorStreamer(*streams["target"]) as target_files:
                files = {"target": target_files, "donor": donor_files}
                other = files[p.other] if p.other else None
                # the unit strategy says what the pass hooks (analysis.units: modules, for module and layer units)
                probes = UNITS[granularity].probes(state["candidates"], p.stats, other=other, own_files=files[role],
                                                   attribution=p.attribution, gain=p.gain)
                result = capture_mod.run_pass(
                    model, (), fed, stats=(), units=probes, batch_size=batch_size, pad_id=state["pad_id"],
                    padding_side=padding_side, recompute=recompute,
                    gradient_batch_size=plan.gradient_batch_size if (p.gain or p.attribution) else None,
                    desc=p.desc, progress=progress,
                    sources=[(role, files[role])] + ([(p.other, other)] if other else []))
            stats.update(result.stats)
            seconds_key, tokens_key, streamed_key = p.timing
            timing.update({seconds_key: result.seconds, tokens_key: result.tokens})
            if streamed_key:
                timing[streamed_key] = result.streamed_bytes
        del model
        _free(device)
        return stats

    # the target runs first (its own statistics, local streaming the donor; gain with gradients), then the donor
    target_passes: List[_Pass] = []
    if need_local or "activation" in wanted:
        target_passes.append(_Pass(["activation"] + (["local"] if need_local else []), "donor" if need_local else None,
                                   desc="target pass",
                                   timing=("target_pass_s", "target_tokens", "donor_streamed_bytes")))
    if need_gain:
        target_passes.append(_Pass([], "donor", gain=True, desc="target pass (gradients)",
                                   timing=("gain_pass_s", "gain_tokens", "gain_streamed_bytes")))
    if run_target:
        target_stats = run_model("target", target, target_passes)
    if run_donor:
        donor_stats = run_model("donor", donor, [_Pass(
            ["activation"], "target" if need_attr else None, attribution=need_attr,
            desc="donor pass" + (" (gradients)" if need_attr else ""),
            timing=("donor_pass_s", "donor_tokens", "target_streamed_bytes" if need_attr else None))])

    candidates: List[Candidate] = state["candidates"]
    modules_table = module_scores(candidates, target_stats, donor_stats)
    computed = [s for s in REPORTED if s in modules_table.scores]
    units = UNITS[granularity].group(candidates, modules_table, target_index)  # analysis.units: module or layer
    table, parameters_of, tensors_of, units_info = units.table, units.parameters, units.tensors, units.info
    score_of = dict(zip(table.units, table.scores[score]))
    greedy_result = None
    if select == "greedy":
        greedy_result, picked = _greedy(
            target, donor, load, state, table.ranking(score), score_of, tensors_of, parameters_of,
            top_k=top_k, param_budget=param_budget, target_parameters=target_index.num_parameters,
            strength=strength, config=choosing, seed=seed, batch_size=batch_size, padding_side=padding_side,
            allow_pickle=allow_pickle, progress=progress, timing=timing, device=device)
        selected_value = dict(zip(greedy_result.units, [r.gain for r in greedy_result.rounds]))
        if greedy_result.stopped == "min_gain":
            warnings.append(greedy_result.message)
        chosen = selections(picked, tensors_of, selected_value, donor)
        controls_report = _measured_controls(greedy_result)
    else:
        picked = pick(table.ranking(score), score_of, parameters_of, top_k=top_k, param_budget=param_budget,
                      target_parameters=target_index.num_parameters, strength=strength,
                      strength_mode=strength_mode)
        chosen = selections(picked, tensors_of, score_of, donor)
        predicted = "gain" if "gain" in table.scores else score
        controls_report = _predicted_controls(picked.units, dict(zip(table.units, table.scores[predicted])),
                                              table.units, predicted, controls, seed)
    warnings.extend(picked.notes)
    if controls_report and not controls_report["clearly_above"]:
        warnings.append(controls_report["message"])

    resolved = dataclasses.replace(settings, select=select, top_k=top_k).with_workload(workload.describe())
    command = command or resolved.to_cli()
    header = _header(command, resolved, workload, picked, target_index, len(chosen))
    recipe_text = render_recipe(target, chosen, header=header, out_dtype=_out_dtype(target_index, donor_index))
    timing["total_s"] = time.perf_counter() - t_start
    timing["peak_rss_mb"] = _peak_rss_mb()
    timing["plan_peak_mb"] = round(plan.peak_bytes / 2**20, 1)  # with the measured baseline: not deterministic
    report = build_report(
        settings=resolved, workload=workload.describe(), command=command, target_index=target_index, donor_index=donor_index, candidates=candidates,
        modules_table=modules_table, table=table, units_info=units_info, picked=picked, chosen=chosen,
        computed=computed, skipped=state["skipped"], warnings=warnings, timing=timing,
        generations=generations,
    )
    if greedy_result is not None:
        report.greedy = greedy_result.to_json()
    if controls_report:
        report.controls = controls_report
    report.plan = plan.to_json()
    return AnalysisResult(report=report, selections=chosen, recipe_text=recipe_text, table=table,
                          warnings=warnings)


@dataclass
class _Pass:
    """One pass of a loaded model over the workload: the statistics it takes, the checkpoint it streams
    (``other``: the other role's), whether it runs a backward pass, and the timing keys it reports."""

    stats: List[str]
    other: Optional[str]
    attribution: bool = False
    gain: bool = False
    desc: str = "pass"
    timing: tuple = ("pass_s", "tokens", None)


def plan_analysis(target: str, donor: str, workload: Union[Workload, str, Path], **settings) -> MemoryPlan:
    """The memory plan of ``analyze(target, donor, workload, **settings)``; no model is loaded."""
    return analyze(target, donor, workload, plan_only=True, **settings)


def _planner(target_index: ModelIndex, donor_index: ModelIndex, seqs: Sequence[TokenSequence], *, score, also,
             capture, max_new_tokens, max_len, modules, include_embeddings, dtype, device, device_map,
             trust_remote_code, recompute=False, greedy=False, gradient_batch_size=None) -> Planner:
    """The plan's view of the workload: tokens fed and positions scored per sample."""
    if capture == "generate":  # each prompt (cut to leave room) plus up to max_new_tokens generated
        room = max_len - max_new_tokens
        lengths = [min(s.prompt_len, room) + max_new_tokens for s in seqs]
        scored = [max_new_tokens] * len(seqs)
    else:
        lengths = [len(s.ids) for s in seqs]
        scored = [len(s.scored) for s in seqs]
    return Planner(target_index, donor_index, score=score, also=also, lengths=lengths, scored=scored,
                   modules=modules, include_embeddings=include_embeddings, dtype=dtype, device=device,
                   device_map=device_map, trust_remote_code=trust_remote_code, recompute=recompute,
                   greedy=greedy, gradient_batch_size=gradient_batch_size)


def _check_continuations(tokenizer, workload: Workload, max_len: int) -> None:
    """A continuation is scored whole: the context must hold it and one prompt token."""
    longest, where = 0, None
    for i, sample in enumerate(workload.samples):
        if sample.continuation:
            n = len(tokenizer(sample.continuation, add_special_tokens=False)["input_ids"])
            if n > longest:
                longest, where = n, i
    if longest + 1 > max_len:
        raise TransplantError(
            f"--max-length {max_len} is below the longest continuation ({longest} tokens, workload sample "
            f"{where + 1}) plus one prompt token; use --max-length {longest + 1} or more")


def _refuse(plan: MemoryPlan, planner: Planner, batch_size: int, max_len: int, force: bool,
            warnings: List[str]) -> None:
    """Stop before loading when the plan exceeds the device's free memory (``force`` warns instead)."""
    from mergekit_transplant.analysis.plan import _mib

    need = f"estimated {_mib(plan.added_bytes)} on {plan.device} but {_mib(plan.free_bytes)} is free"
    if force:
        warnings.append(f"memory plan: {need}; running anyway (--force)")
        return
    min_len = max(2, max(planner.scored) + 1)
    advice = planner.advice(batch_size, max_len, min_len)
    if advice is None:
        raise TransplantError(f"memory plan: {need}, and it cannot fit even at --batch-size 1 "
                              f"(the model's weights alone are {_mib(planner.weight_bytes)}); use a larger "
                              "device, --device-map auto across several, or --force to try anyway")
    raise TransplantError(f"memory plan: {need}; {advice} (or pass --force to run anyway)")


def _validate(score, also, capture, granularity, padding_side, batch_size, max_length, max_new_tokens,
              gradient_batch_size=None) -> None:
    for name in [score, *also]:
        if name not in SCORES:
            raise TransplantError(f"unknown score {name!r}; use one of {', '.join(SCORES)}")
    if capture not in CAPTURE_MODES:
        raise TransplantError(f"unknown capture mode {capture!r}; use one of {', '.join(CAPTURE_MODES)}")
    if granularity not in GRANULARITIES:
        raise TransplantError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
    if padding_side not in ("left", "right"):
        raise TransplantError(f"padding side must be left or right, got {padding_side!r}")
    if batch_size < 1:
        raise TransplantError(f"--batch-size must be at least 1, got {batch_size}")
    if gradient_batch_size is not None and gradient_batch_size < 1:
        raise TransplantError(f"--gradient-batch-size must be at least 1, got {gradient_batch_size}")
    if max_length < 2:
        raise TransplantError(f"--max-length must be at least 2, got {max_length}")
    if capture == "generate" and max_new_tokens < 1:
        raise TransplantError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


def _read(ref: str, allow_pickle: bool):
    """Header index of a checkpoint; for pickle-only weights (``allow_pickle``), their mmapped tensors too."""
    from mergekit_transplant.analysis.streaming import pickled_index

    index = read_index(ref, allow_pickle=allow_pickle)
    pickled = pickled_index(index, allow_pickle=allow_pickle) if not index.tensors else None
    return index, pickled


def _load(ref: str, load: dict):
    from mergekit_transplant.loading import load_causal_lm

    return load_causal_lm(ref, with_tokenizer=False, **load)[0]


def _tokenizer(ref: str, trust_remote_code: bool):
    from mergekit_transplant.loading import load_tokenizer

    return load_tokenizer(ref, trust_remote_code=trust_remote_code)


def _check_modules(model, candidates: Sequence[Candidate]) -> None:
    names = dict(model.named_modules())
    missing = [c.module for c in candidates if c.module not in names]
    if missing:
        raise TransplantError(f"donor has no module {missing[0]} (and {len(missing) - 1} more) that the target has")


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _eos_ids(tokenizer, model) -> List[int]:
    ids = set()
    for source in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _free(device: str) -> None:
    """Release the first model before the second loads (the two are never resident together)."""
    import torch

    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # hand freed heap pages back to the OS (glibc keeps them otherwise)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _peak_rss_mb() -> float:
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    except Exception:  # pragma: no cover - not on every platform
        return float("nan")


def _out_dtype(target: ModelIndex, donor: ModelIndex) -> Optional[str]:
    """The target's dtype when the donor's differs (mergekit needs it for mixed dtypes)."""
    t = {i.dtype for i in target.tensors.values()}
    d = {i.dtype for i in donor.tensors.values()}
    if t == d:
        return None
    return MODEL_DTYPE_OF_CODE.get(sorted(t)[0]) if len(t) == 1 else None


def _header(command: str, settings: AnalyzeSettings, workload: Workload, picked: Picked, target: ModelIndex,
            n_tensors: int) -> List[str]:
    from mergekit_transplant._version import __version__

    share = 100.0 * picked.parameters / max(target.num_parameters, 1)
    what = "layers" if settings.granularity == "layer" else "tensors"
    return [
        f"Written by mergekit-transplant {__version__} analyze:",
        f"  {command}",
        f"score: {settings.score} (capture {settings.capture}, granularity {settings.granularity})"
        + (", selected greedily by measured log-likelihood" if settings.select == "greedy" else ""),
        f"workload: {workload.source}: {workload.n} of {workload.total} samples, sha256 {workload.sha256}",
        f"selected: {len(picked.units)} {what} ({n_tensors} filters), {picked.parameters:,} parameters = "
        f"{share:.3f}% of the target",
    ]


def _greedy(target, donor, load, state, ranking, score_of, tensors_of, parameters_of, *, top_k, param_budget,
            target_parameters, strength, config: SelectConfig, seed, batch_size, padding_side, allow_pickle,
            progress, timing, device):
    """Load the target once more and choose units by measuring them in it (``analysis.greedy``)."""
    import sys

    from mergekit_transplant.analysis.greedy import LogLikelihood, greedy_select, split
    from mergekit_transplant.inplace import DonorTensors, LiveTransplant

    measurable = [s for s in likelihood_view(state["seqs"]) if s is not None]
    if not measurable:
        raise TransplantError("--select greedy: the workload has no continuation and no text of at least 2 tokens "
                              "to score")
    keep, held = split(len(measurable), config.holdout_fraction, seed)
    t0 = time.perf_counter()
    model = _load(target, load)
    timing["greedy_load_s"] = time.perf_counter() - t0
    donor_files = DonorTensors(donor, allow_pickle=allow_pickle)
    try:
        live = LiveTransplant(model, donor_files)
        live.check([t for u in ranking for t in tensors_of[u]])
        # a unit whose tensors the donor shares bit for bit cannot change anything: not worth a pass
        changed = [u for u in ranking if _differs(live, donor_files, tensors_of[u])]
        limit = config.prefilter or min(len(changed), DEFAULT_PREFILTER_ALL)
        candidates = changed[:limit]
        if not candidates:
            raise TransplantError("no candidate differs between donor and target: nothing to select")
        budget = None if param_budget is None else param_budget * target_parameters
        if budget is not None and min(parameters_of[u] for u in candidates) > budget:
            raise TransplantError(f"--param-budget {param_budget:g} ({int(budget):,} parameters) is smaller than "
                                  "every candidate")
        dev = capture_mod._input_device(model)
        kw = dict(batch_size=batch_size, pad_id=state["pad_id"], padding_side=padding_side, device=dev)
        select_ll = LogLikelihood(model, [measurable[i] for i in keep], **kw)
        held_ll = LogLikelihood(model, [measurable[i] for i in held], **kw) if held else None
        echo = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
        result = greedy_select(live, select_ll, held_ll, candidates, tensors_of, parameters_of, top_k=top_k,
                               budget=budget, min_gain=config.min_gain, strength=strength,
                               controls=config.controls, seed=seed, pool=ranking, progress=progress, echo=echo)
    finally:
        donor_files.close()
        del model
        _free(device)
    timing.update(greedy_s=result.seconds, greedy_evaluations=result.evaluations,
                  greedy_forward_s=result.forward_s)
    if not result.units:
        raise TransplantError(f"--select greedy: nothing to transplant: {result.message}")
    parameters = sum(parameters_of[u] for u in result.units)
    return result, Picked(list(result.units), {u: strength for u in result.units}, parameters)


def _differs(live, donor_files, tensors) -> bool:
    import torch

    for name in tensors:
        mine = live.tensors[name]
        if not torch.equal(mine.detach(), donor_files.get(name).to(device=mine.device, dtype=mine.dtype)):
            return True
    return False


def _clearly_above(selected: float, others: Sequence[float]) -> bool:
    """Above every random set, and (when they gain on average) at least 1.5x their mean."""
    if not others:
        return True
    mean = sum(others) / len(others)
    return selected > 0 and selected > max(others) and (mean <= 0 or selected >= 1.5 * mean)


def _measured_controls(result) -> Optional[dict]:
    if not result.controls or not result.rounds:
        return None
    part = "held-out part" if result.held_out_baseline is not None else "selection part"
    last = result.rounds[-1]
    selected = last.held_out if result.held_out_baseline is not None else last.total
    values = [c["gain"] for c in result.controls]
    above = _clearly_above(selected, values)
    k = len(result.units)
    return {
        "kind": "measured", "metric": f"log-likelihood gain, nats per sample ({part})", "selected": selected,
        "random": [{"units": c["units"], "value": c["gain"]} for c in result.controls], "clearly_above": above,
        "message": (f"the {k} greedily selected modules raise the workload's log-likelihood by {selected:+.4g} "
                    f"nats per sample on the {part}, not clearly above {len(values)} random {k}-module sets "
                    f"({', '.join(f'{v:+.4g}' for v in values)}): the selection may not carry the donor's "
                    "advantage on this workload"),
    }


def _predicted_controls(units, value_of, pool, metric, controls, seed) -> Optional[dict]:
    from mergekit_transplant.analysis.greedy import _control_sets

    sets = _control_sets(pool, len(units), controls, seed, avoid=units)
    if not sets:
        return None
    selected = sum(value_of[u] for u in units)
    values = [sum(value_of[u] for u in s) for s in sets]
    above = _clearly_above(selected, values)
    k = len(units)
    return {
        "kind": "predicted", "metric": f"sum of {metric}", "selected": selected,
        "random": [{"units": s, "value": v} for s, v in zip(sets, values)], "clearly_above": above,
        "message": (f"the selected {k} units' summed {metric} ({selected:.4g}) is not clearly above that of "
                    f"{len(values)} random {k}-unit sets ({', '.join(f'{v:.4g}' for v in values)}): the donor's "
                    f"advantage looks spread over many modules; compare with --select greedy or a sweep"),
    }
