"""The Hub model card of a transplant merge: offline-safe, escaped, built with huggingface_hub.

The card says what was transplanted (tensor, donor, strength, parameters,
share: the pre-flight check's plan), how it was chosen (the analysis report),
how well it worked (the eval results, with TIR and Recovery), the recipe
verbatim and the commands that reproduce it. Metadata goes through
``huggingface_hub``'s ``ModelCardData``; ``base_model`` lists Hub ids only
(the recipe's own, a ``--hub-id`` mapping for local folders, or the donor an
organ stands for), so nothing here ever asks the Hub anything.

Model names, recipe text, task names and every other string from a recipe,
report or results file are untrusted: prose is HTML-escaped and
markdown-escaped, names go in code spans, and verbatim text goes in code
fences longer than any backtick run inside it.

``write_card`` also keeps ``transplant_card.json`` beside the card: the hub-id
mapping, analysis report and eval results it was built from, so a later
``mergekit-transplant card OUT --eval ...`` updates one section without
losing the others.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mergekit_transplant import __version__, atomic
from mergekit_transplant.checkpoint import hub_id_problem, looks_like_hub_id, read_json_object, split_revision
from mergekit_transplant.errors import TransplantError

CARD_FILE = "README.md"
SIDECAR = "transplant_card.json"
HEATMAP_FILE = "transplant_heatmap.png"
TAGS = ["mergekit", "merge", "transplant"]
METHOD_URL = "https://arxiv.org/abs/2602.16189"
BEGIN = "<!-- mergekit-transplant card: begin -->"
END = "<!-- mergekit-transplant card: end -->"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_HEATMAP_BYTES = 32 * 1024 * 1024
TOP_SCORES = 15
_MERGEKIT_CARD_MARK = "This is a merge of pre-trained language models created using [mergekit]"


# --------------------------------------------------------------------------- escaping

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def _clean(text: Any) -> str:
    return " ".join(_CONTROL.sub(" ", str(text)).split())


def md_text(text: Any) -> str:
    """Untrusted text as inert inline markdown: no HTML, no links, no emphasis."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(_clean(text), quote=True))


def md_code(text: Any, *, in_table: bool = False) -> str:
    """Untrusted text as an inline code span (literal, never HTML), safe in a table cell."""
    s = _clean(text)
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    span = f"{fence}{pad}{s}{pad}{fence}"
    return span.replace("|", "\\|") if in_table else span


def md_fence(text: str, lang: str = "") -> str:
    """A fenced code block that nothing inside ``text`` can close early."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{lang}\n{body}{fence}"


def _num(x: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return "—" if x is None else md_code(x, in_table=True)
    return fmt.format(x)


# --------------------------------------------------------------------------- inputs


def load_json(path: os.PathLike | str, what: str) -> dict:
    return read_json_object(path, what)


def parse_hub_ids(pairs: Sequence[str]) -> Dict[str, str]:
    """``PATH=org/name`` pairs (from ``--hub-id``) into a validated mapping."""
    out = {}
    for pair in pairs:
        path, sep, repo = pair.rpartition("=")
        if not sep or not path or not repo:
            raise TransplantError(f"--hub-id {pair!r}: expected PATH=org/name")
        problem = hub_id_problem(split_revision(repo)[0])
        if problem:
            raise TransplantError(f"--hub-id {pair!r}: {problem}")
        out[path] = repo
    return out


def _valid_repo_id(repo_id: str) -> bool:
    return hub_id_problem(repo_id) is None


def _same_path(a: str, b: str) -> bool:
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def hub_id_for(ref: str, hub_ids: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """The Hub id of a model reference and where it came from ("recipe", "--hub-id", "organ")."""
    path, _rev = split_revision(ref)
    for key, repo in hub_ids.items():
        if key == ref or _same_path(split_revision(key)[0], path):
            return split_revision(repo)[0], "--hub-id"
    if looks_like_hub_id(ref) and _valid_repo_id(path):
        return path, "recipe"
    try:
        from mergekit_transplant.organ import find_organ_donor

        donor = find_organ_donor(path) if os.path.isdir(path) else None
    except Exception:  # a damaged organ must not break a card
        donor = None
    if donor is not None:
        d_path = split_revision(donor.ref)[0]
        for key, repo in hub_ids.items():
            if key == donor.ref or _same_path(split_revision(key)[0], d_path):
                return split_revision(repo)[0], "--hub-id"
        if not os.path.exists(d_path) and _valid_repo_id(d_path):
            return d_path, "organ"
    return None, ""


# --------------------------------------------------------------------------- card


@dataclass
class CardInputs:
    """Everything a card is built from; all optional but the recipe."""

    recipe: Any  # recipe.Recipe
    check_report: Any = None  # preflight.CheckReport
    analysis: Optional[dict] = None  # report.json of `analyze`
    evaluation: Optional[dict] = None  # results.json of `eval`
    hub_ids: Dict[str, str] = field(default_factory=dict)
    name: str = "transplant-merge"
    heatmap: Optional[str] = None  # file name inside the output folder
    extra_metadata: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CardResult:
    path: Optional[Path]
    text: str
    warnings: List[str] = field(default_factory=list)
    base_model: List[str] = field(default_factory=list)


def _donors(recipe) -> List[str]:
    return recipe.donors


def _models(recipe) -> List[str]:
    try:
        return [recipe.target, *_donors(recipe)]
    except Exception:  # a recipe mergekit cannot parse: target only
        return [str(recipe.data.get("base_model"))]


def _link(ref: str, hub_ids: Mapping[str, str]) -> str:
    repo, _ = hub_id_for(ref, hub_ids)
    shown = md_code(ref)
    if repo:
        return f"{shown} ([{md_code(repo)}](https://huggingface.co/{repo}))"
    return shown


def _section_transplanted(inp: CardInputs) -> str:
    rep = inp.check_report
    lines = ["## What was transplanted", ""]
    if rep is None or not getattr(rep, "ok", False):
        problems = "; ".join(getattr(rep, "errors", []) or []) if rep is not None else ""
        lines.append(
            "The plan table is unavailable here (the models could not be read"
            + (f": {md_text(problems)}" if problems else "")
            + "). Run `mergekit-transplant check mergekit_config.yml` where they are."
        )
        return "\n".join(lines)
    if not rep.rows:
        lines.append("Nothing: every strength in the recipe resolves to 0, so this is the target unchanged.")
        return "\n".join(lines)
    total = rep.transplanted_parameters
    lines += [
        f"{len(rep.rows)} tensor(s), {total:,} parameters ({100 * total / max(rep.target_parameters, 1):.3f}% of "
        f"the target's {rep.target_parameters:,}), copied or blended into the target as "
        "`target + strength × (donor − target)`; every other tensor is the target's, bit for bit.",
        "",
        "| Tensor | Donor | Strength | Parameters | Share |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rep.rows:
        lines.append(
            f"| {md_code(r.tensor, in_table=True)} | {md_code(r.donor, in_table=True)} | {r.strength:g} | "
            f"{r.parameters:,} | {100 * r.share:.3f}% |"
        )
    lines.append(f"| **total** | | | {total:,} | {100 * total / max(rep.target_parameters, 1):.3f}% |")
    return "\n".join(lines)


def _section_chosen(inp: CardInputs) -> str:
    rep = inp.analysis
    lines = ["## How it was chosen", ""]
    if not rep:
        lines.append(
            "No analysis report was given for this card: the recipe may have been written by hand. "
            "`mergekit-transplant card OUT --report report.json` adds it."
        )
        return "\n".join(lines)
    settings = rep.get("settings") if isinstance(rep.get("settings"), dict) else {}
    score = settings.get("score")
    if score is not None:
        extra = f" (capture: {md_code(settings['capture'])})" if settings.get("capture") else ""
        lines.append(f"- Score: {md_code(score)}{extra}")
    workload = settings.get("workload") if isinstance(settings.get("workload"), dict) else {}
    if workload:
        parts = [md_code(workload.get("path", "?"))]
        if workload.get("n") is not None:
            parts.append(f"{_num(workload.get('n'), '{:d}') if isinstance(workload.get('n'), int) else md_code(workload.get('n'))} prompts")
        if workload.get("sha256"):
            parts.append(f"sha256 {md_code(workload['sha256'])}")
        lines.append("- Workload: " + ", ".join(parts))
    for key in ("target", "donor"):
        if settings.get(key):
            lines.append(f"- {key.capitalize()} analysed: {md_code(settings[key])}")
    selection = rep.get("selection") if isinstance(rep.get("selection"), list) else []
    selected = {str(s.get("tensor")) for s in selection if isinstance(s, dict)}
    if selection:
        lines.append(f"- Selected: {len(selection)} tensor(s)")
    ranking = rep.get("ranking") if isinstance(rep.get("ranking"), dict) else {}
    order = ranking.get(score) if isinstance(ranking.get(score), list) else None
    candidates = {
        str(c.get("tensor")): c for c in rep.get("candidates", []) if isinstance(c, dict)
    } if isinstance(rep.get("candidates"), list) else {}
    if order is None and candidates and score is not None:
        def key(name):
            v = (candidates[name].get("scores") or {}).get(score)
            return -(v if isinstance(v, (int, float)) and not isinstance(v, bool) else -math.inf), name

        order = sorted(candidates, key=key)
    if order:
        names = sorted({k for c in candidates.values() for k in (c.get("scores") or {})
                        if isinstance(c.get("scores"), dict)})
        names = ([score] if score in names else []) + [n for n in names if n != score]
        top = order[: max(TOP_SCORES, len(selected))]
        lines += ["", f"Top {len(top)} of {len(order)} candidates by {md_code(score)} (✓ = transplanted):", ""]
        lines.append("| Rank | Tensor | " + " | ".join(md_code(n, in_table=True) for n in names) + " | |")
        lines.append("|---:|---|" + "---:|" * len(names) + ":-:|")
        for rank, name in enumerate(top, 1):
            scores = (candidates.get(str(name), {}) or {}).get("scores") or {}
            cells = " | ".join(_num(scores.get(n)) for n in names)
            lines.append(
                f"| {rank} | {md_code(name, in_table=True)} | {cells} | {'✓' if str(name) in selected else ''} |"
            )
    if inp.heatmap:
        lines += ["", f"![Score per layer and module type; transplanted modules marked]({inp.heatmap})"]
    return "\n".join(lines)


def _stderr_of(r: dict) -> Any:
    """The merged model's stderr: a number, or ``{"merged": x, ...}`` as `eval` writes it."""
    se = r.get("stderr")
    return se.get("merged") if isinstance(se, dict) else se


def _ratio(r: dict, key: str) -> str:
    value = r.get(key)
    if value is None and r.get(f"{key}_reason"):
        return f"— ({md_text(r[f'{key}_reason'])})"
    return _num(value, "{:.3f}")


def _section_eval(inp: CardInputs) -> Optional[str]:
    res = inp.evaluation
    if not res:
        return None
    tasks = res.get("tasks") if isinstance(res.get("tasks"), dict) else {}
    lines = ["## Evaluation", ""]
    if not tasks:
        lines.append("The results file lists no tasks.")
        return "\n".join(lines)
    lines += [
        "| Task | Metric | Target | Donor | Merged | TIR | Recovery |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task in sorted(tasks, key=str):
        r = tasks[task] if isinstance(tasks[task], dict) else {}
        merged = _num(r.get("merged"))
        se = _stderr_of(r)
        if isinstance(se, (int, float)) and not isinstance(se, bool):
            merged += f" ± {_num(se)}"
        lines.append(
            f"| {md_code(task, in_table=True)} | {md_code(r.get('metric', '?'), in_table=True)} | "
            f"{_num(r.get('target'))} | {_num(r.get('donor'))} | {merged} | {_ratio(r, 'tir')} | "
            f"{_ratio(r, 'recovery')} |"
        )
    lines += [
        "",
        "TIR = S_merged / S_target; Recovery = (S_merged − S_target) / (S_donor − S_target): "
        "1 means the merge matches the donor on the task, 0 the target.",
    ]
    retain = res.get("retain") if isinstance(res.get("retain"), dict) else {}
    if retain:
        lines += ["", "Skills the target should keep (target vs merged):", "",
                  "| Task | Metric | Target | Merged | Change | Regressed |", "|---|---|---:|---:|---:|:-:|"]
        for task in sorted(retain, key=str):
            r = retain[task] if isinstance(retain[task], dict) else {}
            change = _num(r.get("change"), "{:+.4g}")
            if isinstance(r.get("change_stderr"), (int, float)) and not isinstance(r.get("change_stderr"), bool):
                change += f" ± {_num(r['change_stderr'])}"
            flag = "yes" if r.get("significant_regression") else ("slightly" if r.get("regressed") else "no")
            lines.append(
                f"| {md_code(task, in_table=True)} | {md_code(r.get('metric', '?'), in_table=True)} | "
                f"{_num(r.get('target'))} | {_num(r.get('merged'))} | {change} | {flag} |"
            )
    return "\n".join(lines)


def _section_recipe(inp: CardInputs) -> str:
    lines = ["## Recipe", "", "The mergekit recipe, verbatim (`mergekit_config.yml`):", "",
             md_fence(inp.recipe.source, "yaml")]
    mapped = []
    for ref in _models(inp.recipe):
        repo, how = hub_id_for(ref, inp.hub_ids)
        if repo and how != "recipe":
            mapped.append(f"- {md_code(ref)} is [{md_code(repo)}](https://huggingface.co/{repo}) on the Hub"
                          + (" (the donor this organ was cut from)" if how == "organ" else ""))
    if mapped:
        lines += ["", "Local paths in the recipe:", ""] + mapped
    return "\n".join(lines)


def _shell_ref(ref: str, hub_ids: Mapping[str, str]) -> str:
    repo, how = hub_id_for(ref, hub_ids)
    if repo and how == "--hub-id":
        return hub_ids.get(ref) or repo
    return ref


def _analysis_command(inp: CardInputs) -> Optional[str]:
    """The analyze command: from the recipe's header comments (analyze writes it there),
    the report's ``settings.command``, or rebuilt from the report's settings."""
    for line in inp.recipe.source.splitlines():
        text = line.lstrip()
        if text.startswith("#") and text.lstrip("# ").startswith("mergekit-transplant analyze"):
            return _clean(text.lstrip("# "))
    settings = (inp.analysis or {}).get("settings")
    if not isinstance(settings, dict):
        return None
    command = settings.get("command")
    if isinstance(command, list) and all(isinstance(c, str) for c in command):
        return shlex.join(command)
    if isinstance(command, str):
        return _clean(command)
    recipe = inp.recipe
    parts = ["mergekit-transplant", "analyze",
             "--target", _shell_ref(str(settings.get("target") or recipe.target), inp.hub_ids),
             "--donor", _shell_ref(str(settings.get("donor") or (_donors(recipe) or [""])[0]), inp.hub_ids)]
    workload = settings.get("workload") if isinstance(settings.get("workload"), dict) else {}
    if workload.get("path"):
        flag = "--lm-eval-task" if workload.get("kind") in ("lm-eval", "lm_eval", "lm-eval-task", "task") else "--workload"
        parts += [flag, str(workload["path"])]
    for key, flag in (("score", "--score"), ("capture", "--capture"), ("granularity", "--granularity"),
                      ("top_k", "--top-k"), ("param_budget", "--param-budget"), ("strength", "--strength"),
                      ("strength_mode", "--strength-mode"), ("limit", "--limit"), ("seed", "--seed")):
        value = settings.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            parts += [flag, str(value)]
    for glob in settings.get("modules") or []:
        parts += ["--modules", str(glob)]
    if settings.get("include_embeddings") is True:
        parts.append("--include-embeddings")
    parts += ["-o", "recipe.yml"]
    return shlex.join(parts)


def _eval_command(inp: CardInputs) -> Optional[str]:
    res = inp.evaluation
    if not res:
        return None
    settings = res.get("settings") if isinstance(res.get("settings"), dict) else {}
    tasks = settings.get("tasks") if isinstance(settings.get("tasks"), list) else sorted(
        str(t) for t in (res.get("tasks") or {}))
    recipe = inp.recipe
    parts = ["mergekit-transplant", "eval", "--target", _shell_ref(recipe.target, inp.hub_ids),
             "--donor", _shell_ref((_donors(recipe) or [""])[0], inp.hub_ids), "--merged", f"./{_clean(inp.name)}",
             "--tasks", ",".join(str(t) for t in tasks)]
    if isinstance(settings.get("retain_tasks"), list) and settings["retain_tasks"]:
        parts += ["--retain-tasks", ",".join(str(t) for t in settings["retain_tasks"])]
    for key, flag in (("include_path", "--include-path"), ("metric", "--metric"), ("limit", "--limit"),
                      ("num_fewshot", "--num-fewshot")):
        value = settings.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            parts += [flag, str(value)]
    parts += ["-o", "results.json"]
    return shlex.join(parts)


def _section_reproduce(inp: CardInputs) -> str:
    cmds = ["pip install mergekit-transplant"]
    analysis = _analysis_command(inp)
    if analysis:
        cmds.append("# 1. find the modules (writes the recipe shown above)\n" + analysis)
    cmds.append("# 2. merge (any mergekit-yaml option works; `merge` checks the recipe first)")
    cmds.append("mergekit-transplant check mergekit_config.yml")
    cmds.append(shlex.join(["mergekit-yaml", "mergekit_config.yml", f"./{_clean(inp.name)}"]))
    evaluation = _eval_command(inp)
    if evaluation:
        cmds.append("# 3. evaluate (TIR and Recovery)\n" + evaluation)
    text = "\n".join(_CONTROL.sub(" ", c).replace("\r", " ") for c in cmds)
    return "\n".join([
        "## Reproduce", "",
        "Save the recipe above as `mergekit_config.yml`, then (paths as in the recipe; "
        "`mergekit-yaml` finds the `transplant` method once mergekit-transplant is installed):", "",
        md_fence(text, "sh"),
    ])


def _intro(inp: CardInputs) -> str:
    recipe, hub = inp.recipe, inp.hub_ids
    donors = ", ".join(_link(d, hub) for d in _donors(recipe)) or "no donor"
    rep = inp.check_report
    share = ""
    if rep is not None and getattr(rep, "ok", False) and rep.rows:
        share = (f" {len(rep.rows)} tensor(s) ({100 * rep.transplanted_parameters / max(rep.target_parameters, 1):.3f}% "
                 "of the parameters) come from the donor.")
    return (
        f"This model is {_link(recipe.target, hub)} with modules transplanted from {donors} by "
        f"[mergekit-transplant](https://github.com/mergekit-transplant/mergekit-transplant) "
        f"({__version__}), using mergekit's `transplant` merge method ([paper]({METHOD_URL})).{share} "
        "No training was involved."
    )


def build_card(inp: CardInputs) -> CardResult:
    """Render the card text; warnings list what was left out and why."""
    from huggingface_hub import ModelCard, ModelCardData

    warnings: List[str] = []
    base_model: List[str] = []
    for ref in _models(inp.recipe):
        repo, _how = hub_id_for(ref, inp.hub_ids)
        if repo:
            if repo not in base_model:
                base_model.append(repo)
        else:
            warnings.append(
                f"{ref} is a local path with no Hub id: left out of base_model "
                f"(pass --hub-id {ref}=org/name to include it)"
            )
    meta = dict(inp.extra_metadata)
    for key in ("base_model", "base_model_relation", "tags", "library_name"):
        meta.pop(key, None)
    tags = list(TAGS) + [t for t in (inp.extra_metadata.get("tags") or []) if isinstance(t, str) and t not in TAGS]
    data = ModelCardData(
        base_model=base_model or None,
        library_name="transformers",
        tags=tags,
        **meta,
    )
    if base_model:
        data["base_model_relation"] = "merge"
    else:
        warnings.append("no model has a Hub id: base_model and base_model_relation are left out")
    sections = [
        f"# {md_text(inp.name)}",
        _intro(inp),
        _section_transplanted(inp),
        _section_chosen(inp),
        _section_eval(inp),
        _section_recipe(inp),
        _section_reproduce(inp),
    ]
    body = "\n\n".join(s for s in sections if s)
    text = f"---\n{data.to_yaml()}\n---\n\n{BEGIN}\n\n{body}\n\n{END}\n"
    ModelCard(text)  # parse what we wrote: fails loudly if it is not a valid card
    return CardResult(path=None, text=text, warnings=warnings, base_model=base_model)


# --------------------------------------------------------------------------- files


def _display_name(out_dir: Path) -> str:
    """The folder's name; for ``atomic.replacing_dir``'s ``.NAME.xxxx.tmp``, NAME."""
    m = re.match(r"^\.(.+)\.[^.]+\.tmp$", out_dir.name)
    return m.group(1) if m else out_dir.resolve().name


def _copy_heatmap(src: Path, out_dir: Path) -> str:
    try:
        size = src.stat().st_size
        with open(src, "rb") as fh:
            magic = fh.read(8)
    except OSError as error:
        raise TransplantError(f"heatmap {src}: cannot read it ({error.strerror})") from None
    if magic != PNG_MAGIC:
        raise TransplantError(f"heatmap {src}: not a PNG image")
    if size > MAX_HEATMAP_BYTES:
        raise TransplantError(f"heatmap {src}: larger than {MAX_HEATMAP_BYTES // 2**20} MiB")
    dst = out_dir / HEATMAP_FILE
    if src.resolve() != dst.resolve():
        with atomic.replacing(dst) as tmp:
            shutil.copyfile(src, tmp)
    return HEATMAP_FILE


def _referenced_heatmap(report: dict, report_path: Optional[Path]) -> Optional[Path]:
    """A heatmap that report.json names (``heatmap`` / ``plot``, top level or settings)."""
    settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
    for value in (report.get("heatmap"), report.get("plot"), settings.get("heatmap"), settings.get("plot")):
        if isinstance(value, str) and value.lower().endswith(".png"):
            path = Path(value)
            if not path.is_absolute() and report_path is not None:
                path = report_path.parent / path
            if path.is_file():
                return path
    return None


def _split_existing(text: str) -> Tuple[dict, str, str]:
    """(metadata, text before our block, text after it) of an existing README."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=True)
        meta, body = card.data.to_dict(), card.text
    except Exception:
        return {}, "", ""
    if BEGIN in body and END in body:
        start, end = body.index(BEGIN), body.rindex(END) + len(END)
        return meta, body[:start].strip(), body[end:].strip()
    if _MERGEKIT_CARD_MARK in body:  # mergekit's own generated card: replaced whole
        return meta, "", ""
    return meta, "", body.strip()


def _previous(sidecar: dict, key: str, check) -> Optional[dict]:
    """A section kept from the previous card run, or None when it is missing or no longer valid."""
    try:
        return check(sidecar[key], key) if isinstance(sidecar.get(key), dict) else None
    except TransplantError:
        return None


def write_card(
    out_dir: os.PathLike | str,
    *,
    recipe=None,
    check_report=None,
    report: Optional[os.PathLike | str | dict] = None,
    eval_results: Optional[os.PathLike | str | dict] = None,
    hub_ids: Optional[Mapping[str, str]] = None,
    heatmap: Optional[os.PathLike | str] = None,
    name: Optional[str] = None,
) -> CardResult:
    """Write or update ``OUT/README.md`` (and ``OUT/transplant_card.json``).

    ``recipe`` defaults to ``OUT/mergekit_config.yml``; ``check_report`` is
    computed from the recipe (headers only) when not given. Inputs not given
    are taken from the previous ``transplant_card.json``, so updating one
    section keeps the others. Text a person added around the generated block,
    and metadata keys the card does not own (license, language...), are kept.
    """
    from mergekit_transplant.recipe import load_recipe

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise TransplantError(f"output folder {out_dir} does not exist")
    if recipe is None:
        recipe = load_recipe(out_dir / "mergekit_config.yml")
    if check_report is None:
        from mergekit_transplant.preflight import run_check

        check_report = run_check(recipe)

    previous = {}
    if (out_dir / SIDECAR).is_file():
        try:
            previous = load_json(out_dir / SIDECAR, "card data")
        except TransplantError:
            previous = {}
    from mergekit_transplant.card_inputs import check_analysis_report, check_eval_results

    report_path = None
    if isinstance(report, (str, os.PathLike)):
        report_path = Path(report)
        report = check_analysis_report(load_json(report_path, "analysis report"), f"analysis report {report_path}")
    elif report is not None:
        check_analysis_report(report, "analysis report")
    if isinstance(eval_results, (str, os.PathLike)):
        path = Path(eval_results)
        eval_results = check_eval_results(load_json(path, "eval results"), f"eval results {path}")
    elif eval_results is not None:
        check_eval_results(eval_results, "eval results")
    if report is None:
        report = _previous(previous, "analysis", check_analysis_report)
    if eval_results is None:
        eval_results = _previous(previous, "evaluation", check_eval_results)
    mapping = {str(k): str(v) for k, v in (previous.get("hub_ids") or {}).items()} if isinstance(
        previous.get("hub_ids"), dict) else {}
    mapping.update(hub_ids or {})

    heatmap_name = None
    if heatmap is None and isinstance(report, dict):
        heatmap = _referenced_heatmap(report, report_path)
    if heatmap is not None:
        heatmap_name = _copy_heatmap(Path(heatmap), out_dir)
    elif (out_dir / HEATMAP_FILE).is_file():
        heatmap_name = HEATMAP_FILE

    readme = out_dir / CARD_FILE
    meta, before, after = ({}, "", "")
    if readme.is_file():
        meta, before, after = _split_existing(readme.read_text(encoding="utf-8"))
    inputs = CardInputs(
        recipe=recipe, check_report=check_report, analysis=report, evaluation=eval_results,
        hub_ids=mapping, name=name or _display_name(out_dir), heatmap=heatmap_name, extra_metadata=meta,
    )
    result = build_card(inputs)
    text = result.text
    if before or after:
        head, _, generated = text.partition(f"\n---\n\n{BEGIN}")
        generated = f"{BEGIN}{generated}"
        text = head + "\n---\n\n" + "\n\n".join(p for p in (before, generated.strip(), after) if p) + "\n"
    atomic.write_text(readme, text)
    sidecar = {"created_by": f"mergekit-transplant {__version__}", "hub_ids": mapping,
               "analysis": report, "evaluation": eval_results}
    atomic.write_text(out_dir / SIDECAR, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    result.path = readme
    result.text = text
    return result


# --------------------------------------------------------------------------- mergekit-yaml


def card_for_mergekit(config, config_yaml: str, name: Optional[str] = None) -> str:
    """The card mergekit's ``generate_card`` returns for ``merge_method: transplant``.

    Called after mergekit has written the weights, so it must not fail and must
    not touch the network: the plan comes from headers only, and anything
    unexpected degrades to a card without the plan table.
    """
    from mergekit_transplant.recipe import Recipe, parse_recipe

    try:
        recipe = parse_recipe(config_yaml)
    except Exception:
        recipe = Recipe(source=config_yaml, data=config.model_dump(mode="json", exclude_none=True))
    report = None
    try:
        report = _check_preserving_loader_cache(recipe)
    except Exception:
        report = None
    try:
        return build_card(CardInputs(recipe=recipe, check_report=report, name=name or "transplant-merge")).text
    except Exception as error:  # last resort: still a valid, offline card
        from huggingface_hub import ModelCard, ModelCardData

        data = ModelCardData(library_name="transformers", tags=list(TAGS))
        body = (f"# {md_text(name or 'transplant-merge')}\n\nA transplant merge made with mergekit-transplant "
                f"(card generation failed: {md_text(error)}).\n\n## Recipe\n\n{md_fence(config_yaml, 'yaml')}\n")
        return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _check_preserving_loader_cache(recipe):
    """run_check resets mergekit's LoaderCache options; put them back afterwards."""
    from mergekit.io.tasks import LoaderCache

    from mergekit_transplant.preflight import run_check

    cache = LoaderCache()
    saved = {k: getattr(cache, k) for k in
             ("lora_cache_dir", "hf_cache_dir", "lazy_unpickle", "trust_remote_code", "lora_merge_dtype")}
    try:
        return run_check(recipe)
    finally:
        for k, v in saved.items():
            setattr(cache, k, v)


def install_mergekit_card_hook() -> None:
    """Give ``transplant`` merges this card in plain ``mergekit-yaml`` (idempotent).

    mergekit's ``generate_card`` asks the Hub whether a local path with exactly
    one '/' (``models/x``) is a repo, and crashes offline after the weights are
    written. The post-import hook (``_hook.AFTER_IMPORT``) runs this right
    after ``mergekit.card`` executes, before ``mergekit.merge`` binds the name;
    other merge methods still get mergekit's own card.
    """
    import functools
    import sys

    card = sys.modules.get("mergekit.card")
    if card is None:
        import mergekit.card as card
    original = card.generate_card
    if getattr(original, "_transplant_hook", False):
        return

    @functools.wraps(original)
    def generate_card(config, config_yaml, name=None):
        if getattr(config, "merge_method", None) == "transplant":
            return card_for_mergekit(config, config_yaml, name)
        return original(config, config_yaml, name)

    generate_card._transplant_hook = True
    card.generate_card = generate_card
    merge = sys.modules.get("mergekit.merge")
    if merge is not None and getattr(merge, "generate_card", None) is original:
        merge.generate_card = generate_card


# --------------------------------------------------------------------------- validation


def validate_card(path_or_text: os.PathLike | str, *, require_base_model: bool = False) -> List[str]:
    """Problems the Hub would reject or that make the card misleading; [] when valid.

    Offline: parses with ``huggingface_hub.ModelCard`` (metadata must be a
    mapping ``ModelCardData`` accepts), checks ``base_model`` entries are valid
    repo ids, ``base_model_relation`` is one the Hub knows and comes with a
    ``base_model``, and that the tags and library are set.
    """
    from huggingface_hub import ModelCard

    text = Path(path_or_text).read_text(encoding="utf-8") if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and os.path.isfile(path_or_text)
    ) else str(path_or_text)
    problems = []
    if not text.startswith("---"):
        problems.append("the card has no YAML metadata block at the top")
    try:
        card = ModelCard(text)
    except Exception as error:
        return problems + [f"the card's metadata does not parse: {error}"]
    data = card.data.to_dict()
    base = data.get("base_model")
    bases = [base] if isinstance(base, str) else base if isinstance(base, list) else []
    if base is not None and not isinstance(base, (str, list)):
        problems.append("base_model must be a Hub id or a list of them")
    for b in bases:
        if not isinstance(b, str) or not _valid_repo_id(b):
            problems.append(f"base_model entry {b!r} is not a Hub model id (org/name)")
    relation = data.get("base_model_relation")
    if relation is not None:
        if relation not in ("adapter", "merge", "quantized", "finetune"):
            problems.append(f"base_model_relation {relation!r} is not one the Hub knows")
        if not bases:
            problems.append("base_model_relation is set without a base_model")
    if require_base_model and not bases:
        problems.append("base_model is empty: map local paths to Hub ids with --hub-id")
    if data.get("library_name") != "transformers":
        problems.append("library_name should be transformers")
    tags = data.get("tags") or []
    missing = [t for t in TAGS if t not in tags]
    if missing:
        problems.append(f"tags lack {', '.join(missing)}")
    if not card.text.strip():
        problems.append("the card has no text")
    return problems


__all__ = [
    "CardInputs", "CardResult", "build_card", "write_card", "card_for_mergekit", "validate_card",
    "parse_hub_ids", "hub_id_for", "md_text", "md_code", "md_fence", "load_json",
]
