"""Score target, donor and merged model with the same lm-eval settings; derive TIR and Recovery.

This is the Python API behind ``mergekit-transplant eval``. Each model is
scored by lm-eval itself (``hf`` or ``vllm`` backend, so lm-eval's own
parallelism applies); per-task results are cached by model fingerprint and
task configuration, so re-running after a new merge re-scores only the
merged model. Retain tasks are scored on target and merged model only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from mergekit_transplant.checkpoint import read_index, split_revision
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation import metrics as M
from mergekit_transplant.evaluation.cache import ResultCache, cache_key
from mergekit_transplant.evaluation.fingerprint import model_fingerprint
from mergekit_transplant.evaluation.results import EvalReport
from mergekit_transplant.evaluation.runner import PromptOptions, TaskScores, extract, run_lm_eval
from mergekit_transplant.evaluation.tasks import TaskSet, find_tasks, split_names

BACKENDS = ("hf", "vllm")
ROLES = ("target", "donor", "merged")


@dataclass
class EvalSettings:
    """Everything that must be identical across the models being compared.

    The ``eval`` command's options are generated from these fields (``options.py``; help text in the
    metadata); the models and the output file are the command's own options."""

    tasks: List[str] = field(metadata={
        "parse": split_names, "help": "Comma-separated lm-eval task names (tags expand to their tasks)."})
    retain_tasks: List[str] = field(default_factory=list, metadata={
        "parse": split_names, "help": "Comma-separated tasks the target should not get worse at; scored on target "
                                      "and merged model only, reported as merged − target."})
    include_path: Optional[str] = field(default=None, metadata={"help": "Folder of local lm-eval task YAMLs."})
    limit: Optional[float] = field(default=None, metadata={
        "help": "Documents per task (below 1: a fraction). For quick checks only."})
    num_fewshot: Optional[int] = field(default=None, metadata={
        "help": "Few-shot examples (default: each task's own setting)."})
    batch_size: Any = field(default=8, metadata={"help": "lm-eval batch size, or 'auto'."})
    device: Optional[str] = field(default=None, metadata={
        "help": "Device for the hf backend (default, or auto: a GPU when torch sees one, else cpu)."})
    backend: str = field(default="hf", metadata={"choices": BACKENDS, "help": "lm-eval model backend."})
    model_args: Optional[str] = field(default=None, metadata={
        "help": "Extra lm-eval model_args for every model, e.g. 'dtype=bfloat16,parallelize=True' or "
                "'tensor_parallel_size=4' (vllm)."})
    metric: Optional[str] = field(default=None, metadata={
        "help": "Headline metric (e.g. acc_norm); default: each task's first metric."})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Result cache folder (default ~/.cache/mergekit-transplant/eval, or "
                "$MERGEKIT_TRANSPLANT_EVAL_CACHE)."})
    use_cache: bool = field(default=True, metadata={
        "flags": ("--cache/--no-cache",), "show_default": False,
        "help": "Reuse and store results per model fingerprint and task configuration (--no-cache: score every "
                "model again and store nothing)."})
    bootstrap_iters: int = field(default=100000, metadata={
        "help": "lm-eval bootstrap iterations for stderrs of non-mean metrics (0: none)."})
    seed: int = field(default=0, metadata={"help": "lm-eval's random seeds (few-shot sampling)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    allow_pickle: bool = field(default=False, metadata={
        "help": "Accept models whose only weights are pickle files (pytorch_model.bin); transformers loads them "
                "with torch's weights-only unpickler. Only for sources you trust."})
    prompt: PromptOptions = field(default_factory=PromptOptions)  # lm-eval's prompt options (cli: prompt_options)

    def __post_init__(self):
        if isinstance(self.prompt, dict):  # from asdict / JSON
            self.prompt = PromptOptions(**self.prompt)
        self.tasks = split_names(self.tasks)
        self.retain_tasks = split_names(self.retain_tasks)
        if self.backend not in BACKENDS:
            raise TransplantError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.model_args and "pretrained=" in self.model_args:
            raise TransplantError("--model-args must not set pretrained= (the models are given by --target/--donor/--merged)")
        self.limit = normalize_limit(self.limit)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise TransplantError(f"--num-fewshot {self.num_fewshot} is negative")


def _prompt_key(prompt: PromptOptions) -> Dict[str, Any]:
    """The prompt options in the cache key; none when they are lm-eval's defaults (old entries stay valid)."""
    return {} if prompt == PromptOptions() else {"prompt": asdict(prompt)}


def normalize_limit(limit: Optional[float]) -> Optional[float]:
    """lm-eval's limit: a document count (int) or, below 1, a fraction of the task."""
    if limit is None:
        return None
    if limit <= 0:
        raise TransplantError(f"--limit {limit} must be positive")
    return int(limit) if float(limit).is_integer() else float(limit)


def backend_model_args(ref: str, settings: EvalSettings) -> str:
    """lm-eval ``model_args`` for one model: its location plus the shared extra arguments."""
    path, revision = split_revision(ref)
    pretrained = str(Path(path).resolve()) if os.path.isdir(path) else path
    args = [f"pretrained={pretrained}"]
    if revision:
        args.append(f"revision={revision}")
    if settings.trust_remote_code:
        args.append("trust_remote_code=True")
    if settings.model_args:
        args.append(settings.model_args)
    return ",".join(args)


def default_device() -> str:
    """``--device auto``: a GPU when torch sees one, else cpu (lm-eval's hf backend assumes cuda otherwise)."""
    from mergekit_transplant.checkpoint.environment import resolve_device

    return resolve_device("auto")


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


MODEL_OPTIONS = {"target": "--target", "donor": "--donor", "merged": "--merged"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tokenizer.tiktoken")


def check_model(
    ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False, tokenizer: bool = True
) -> None:
    """Find what lm-eval would trip over, from headers, config and tokenizer only, before anything is scored.

    The folder or Hub id must resolve, ``config.json`` must parse and be one
    transformers knows, the weights must be safetensors (or pickles the user
    allowed) with intact headers, and a local folder's tokenizer must load.
    Scoring a real model takes hours, so a typo in the third model must not
    surface only after the first two.
    """
    index = read_index(ref, allow_pickle=allow_pickle)  # folder, config.json, weight files, headers
    if "auto_map" in index.config:
        if trust_remote_code:
            return  # its config class is the model's own code, which lm-eval fetches and runs itself
        raise TransplantError(
            f"model {ref!r}: its config.json maps to custom code (auto_map), which transformers runs only "
            "with trust_remote_code=True; pass --trust-remote-code if you trust this model"
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(index.root), trust_remote_code=trust_remote_code)
    except Exception as error:
        raise TransplantError(
            f"model {ref!r}: transformers cannot read its config.json ({type(error).__name__}: {_first_line(error)})"
        ) from None
    if tokenizer and os.path.isdir(split_revision(ref)[0]):  # a Hub id's tokenizer files are fetched by lm-eval
        from transformers import AutoTokenizer

        hint = "lm-eval scores every model with its own tokenizer (or pass tokenizer=... in --model-args)"
        if not any((index.root / name).is_file() for name in TOKENIZER_FILES):
            raise TransplantError(f"model {ref!r}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); {hint}")
        try:
            AutoTokenizer.from_pretrained(str(index.root), trust_remote_code=trust_remote_code)
        except Exception as error:
            raise TransplantError(
                f"model {ref!r}: cannot load its tokenizer ({type(error).__name__}: {_first_line(error)}); {hint}"
            ) from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0].strip()


def check_models(refs: Dict[str, str], settings: EvalSettings) -> None:
    """``check_model`` for each role, naming the option at fault."""
    seen = set()
    for role, ref in refs.items():
        if ref in seen:
            continue
        seen.add(ref)
        try:
            check_model(ref, allow_pickle=settings.allow_pickle, trust_remote_code=settings.trust_remote_code,
                        tokenizer="tokenizer=" not in (settings.model_args or ""))
        except TransplantError as error:
            raise TransplantError(f"{MODEL_OPTIONS.get(role, role)}: {error}") from None


class Scorer:
    """Scores models task by task, through the cache, with one lm-eval call per model.

    ``plan`` (fingerprint and cache lookup) runs for every model before
    ``score`` runs lm-eval on any, so the tasks that need scoring are known,
    and loaded, up front.
    """

    def __init__(self, tasks: TaskSet, settings: EvalSettings, progress: Optional[Callable[[str], None]] = None):
        self.tasks = tasks
        self.settings = settings
        self.cache = ResultCache(settings.cache_dir, enabled=settings.use_cache)
        self.progress = progress or (lambda message: None)
        self.lm_eval_calls = 0
        self.fingerprints: Dict[str, str] = {}
        self.cached: Dict[str, Dict[str, TaskScores]] = {}
        self.missing: Dict[str, List[str]] = {}
        self.lm_eval_version = lm_eval_version()
        self.device = None if settings.device == "auto" else settings.device  # auto: as when not given
        if self.device is None and settings.backend == "hf" and "parallelize" not in (settings.model_args or ""):
            self.device = default_device()

    def key(self, fingerprint: str, task: str) -> str:
        s = self.settings
        return cache_key(
            model=fingerprint, task=task, task_config=self.tasks.config_hash(task), limit=s.limit,
            num_fewshot=s.num_fewshot, backend=s.backend, model_args=s.model_args or "",
            trust_remote_code=s.trust_remote_code, bootstrap_iters=s.bootstrap_iters, seed=s.seed,
            lm_eval=self.lm_eval_version, **_prompt_key(s.prompt),
        )

    def plan(self, role: str, ref: str, names: Sequence[str]) -> List[str]:
        """Fingerprint ``ref`` and read its cached results; return the tasks lm-eval must score."""
        fingerprint = model_fingerprint(ref, allow_pickle=self.settings.allow_pickle)
        self.fingerprints[role] = fingerprint
        cached: Dict[str, TaskScores] = {}
        missing = []
        for name in names:
            entry = self.cache.get(self.key(fingerprint, name))
            if entry is not None:
                cached[name] = TaskScores.from_dict(entry)
            else:
                missing.append(name)
        self.cached[role], self.missing[role] = cached, missing
        return missing

    def score(self, role: str, ref: str, names: Sequence[str]) -> Dict[str, TaskScores]:
        if role not in self.cached:
            self.plan(role, ref, names)
        fingerprint = self.fingerprints[role]
        out = dict(self.cached[role])
        missing = self.missing[role]
        if len(missing) < len(names):
            self.progress(f"{role}: {len(names) - len(missing)} task(s) from the cache")
        if missing:
            self.progress(f"{role}: scoring {', '.join(missing)} with lm-eval ({ref})")
            s = self.settings
            results = run_lm_eval(
                s.backend, self.tasks.load(missing), task_manager=self.tasks.manager,
                model_args=backend_model_args(ref, s), limit=s.limit, num_fewshot=s.num_fewshot,
                batch_size=s.batch_size, device=self.device, bootstrap_iters=s.bootstrap_iters, seed=s.seed,
                model_name=f"{role} model {ref}", prompt=s.prompt,
            )
            self.lm_eval_calls += 1
            for name in missing:
                out[name] = extract(results, name)
                self.cache.put(
                    self.key(fingerprint, name), out[name].to_dict(),
                    describe={"model": ref, "task": name, "limit": s.limit, "num_fewshot": s.num_fewshot},
                )
        return {name: out[name] for name in names}


def task_row(scores: Dict[str, TaskScores], metric: str) -> Dict[str, Any]:
    """One metric of one task across the three models, with TIR and Recovery."""
    hib = scores["target"].direction(metric)
    values = {role: scores[role].metrics.get(metric) for role in ROLES}
    tir = M.tir(values["target"], values["merged"], hib)
    rec = M.recovery(values["target"], values["donor"], values["merged"])
    return {
        "metric": metric,
        "higher_is_better": hib,
        **values,
        "stderr": {role: scores[role].stderr.get(metric) for role in ROLES},
        "tir": tir.value,
        "tir_reason": tir.reason,
        "recovery": rec.value,
        "recovery_reason": rec.reason,
        "donor_better": M.donor_better(values["target"], values["donor"], hib),
    }


def retain_row(target: TaskScores, merged: TaskScores, metric: str) -> Dict[str, Any]:
    hib = target.direction(metric)
    ch = M.change(
        target.metrics.get(metric), merged.metrics.get(metric), higher_is_better=hib,
        target_stderr=target.stderr.get(metric), merged_stderr=merged.stderr.get(metric),
        target_docs=target.per_doc.get(metric), merged_docs=merged.per_doc.get(metric),
    )
    return {
        "metric": metric,
        "higher_is_better": hib,
        "target": target.metrics.get(metric),
        "merged": merged.metrics.get(metric),
        "stderr": {"target": target.stderr.get(metric), "merged": merged.stderr.get(metric)},
        "change": ch.value,
        "change_stderr": ch.stderr,
        "stderr_method": ch.stderr_method,
        "regressed": ch.regressed,
        "significant_regression": ch.significant_regression,
        "n": target.n,
    }


def evaluate_models(
    target: str,
    donor: str,
    merged: str,
    settings: EvalSettings,
    *,
    progress: Optional[Callable[[str], None]] = None,
) -> EvalReport:
    """Score the three models on ``settings.tasks`` (and target/merged on retain tasks)."""
    if not settings.tasks:
        raise TransplantError("no lm-eval task given (--tasks)")
    task_set = find_tasks(settings.tasks + settings.retain_tasks, settings.include_path)
    main, retain = task_set.expand(settings.tasks), task_set.expand(settings.retain_tasks)
    refs = {"target": target, "donor": donor, "merged": merged}
    check_models(refs, settings)
    scorer = Scorer(task_set, settings, progress)
    wanted = {
        "target": main + [t for t in retain if t not in main],
        "donor": main,
        "merged": main + [t for t in retain if t not in main],
    }
    # every model's fingerprint and cache lookup, then every task it needs loaded, before any scoring
    needed: List[str] = []
    for role in ROLES:
        needed += [t for t in scorer.plan(role, refs[role], wanted[role]) if t not in needed]
    task_set.load(needed)
    scores = {role: scorer.score(role, refs[role], wanted[role]) for role in ROLES}
    tasks_out: Dict[str, Any] = {}
    for name in main:
        per_role = {role: scores[role][name] for role in ROLES}
        primary = per_role["target"].primary(settings.metric)
        row = task_row(per_role, primary)
        row["n"] = per_role["target"].n
        row["metrics"] = {m: task_row(per_role, m) for m in per_role["target"].metric_names()}
        tasks_out[name] = row
    retain_out: Dict[str, Any] = {}
    for name in retain:
        t, m = scores["target"][name], scores["merged"][name]
        retain_out[name] = retain_row(t, m, t.primary(settings.metric))
    settings_out = asdict(settings)
    settings_out["lm_eval_version"] = scorer.lm_eval_version
    settings_out["cache_dir"] = str(scorer.cache.root)
    settings_out["device"] = scorer.device
    data = {
        "tasks": tasks_out,
        "retain": retain_out,
        "models": {role: {"ref": ref, "fingerprint": scorer.fingerprints[role]} for role, ref in refs.items()},
        "settings": settings_out,
        "cache": {"hits": scorer.cache.hits, "misses": scorer.cache.misses, "lm_eval_calls": scorer.lm_eval_calls},
    }
    return EvalReport(data)
