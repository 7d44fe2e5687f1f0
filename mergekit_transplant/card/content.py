"""The card's text and metadata, built from its inputs with ``huggingface_hub``'s ``ModelCardData``."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from mergekit_transplant._version import __version__
from mergekit_transplant.card.hub_ids import hub_id_for
if TYPE_CHECKING:  # pragma: no cover
    from mergekit_transplant.analysis.report import AnalysisReport
    from mergekit_transplant.evaluation.results import EvalReport
    from mergekit_transplant.sweep.result import SweepResult
from mergekit_transplant.card.markdown import (
    CONTROL_CHARS,
    md_code,
    md_fence,
    md_num,
    md_text,
    one_line,
)

BEGIN = "<!-- mergekit-transplant card: begin -->"
END = "<!-- mergekit-transplant card: end -->"
TAGS = ["mergekit", "merge", "transplant"]
METHOD_URL = "https://arxiv.org/abs/2602.16189"
TOP_SCORES = 15


@dataclass
class CardInputs:
    """Everything a card is built from; all optional but the recipe."""

    recipe: Any  # recipe.Recipe
    check_report: Any = None  # preflight.CheckReport
    analysis: Optional["AnalysisReport"] = None  # report.json of `analyze`
    evaluation: Optional["EvalReport"] = None  # results.json of `eval`
    sweep: Optional["SweepResult"] = None  # sweep.json of `sweep`
    hub_ids: Dict[str, str] = field(default_factory=dict)
    name: str = "transplant-merge"
    heatmap: Optional[str] = None  # file name inside the output folder
    extra_metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.analysis, dict):  # a report.json's object: read (and checked) as the typed report
            from mergekit_transplant.analysis.report import AnalysisReport

            self.analysis = AnalysisReport.from_json(self.analysis)
        if isinstance(self.evaluation, dict):  # a results.json's object, likewise
            from mergekit_transplant.evaluation.results import EvalReport

            self.evaluation = EvalReport.from_json(self.evaluation)
        if isinstance(self.sweep, dict):  # a sweep.json's object, likewise
            from mergekit_transplant.sweep.result import SweepResult

            self.sweep = SweepResult.from_json(self.sweep)


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
    settings = rep.settings
    score = settings.score
    lines.append(f"- Score: {md_code(score)} (capture: {md_code(settings.capture)})")
    workload = rep.workload
    if workload:
        parts = [md_code(workload.get("path", "?"))]
        if workload.get("n") is not None:
            parts.append(f"{md_num(workload.get('n'), '{:d}') if isinstance(workload.get('n'), int) else md_code(workload.get('n'))} prompts")
        if workload.get("sha256"):
            parts.append(f"sha256 {md_code(workload['sha256'])}")
        lines.append("- Workload: " + ", ".join(parts))
    for key in ("target", "donor"):
        if getattr(settings, key):
            lines.append(f"- {key.capitalize()} analysed: {md_code(getattr(settings, key))}")
    selection = rep.selection
    selected = {str(s.get("tensor")) for s in selection}
    if selection:
        lines.append(f"- Selected: {len(selection)} tensor(s)")
    order = rep.ranking.get(score)
    candidates = {str(c.get("tensor")): c for c in rep.candidates}
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
            cells = " | ".join(md_num(scores.get(n)) for n in names)
            lines.append(
                f"| {rank} | {md_code(name, in_table=True)} | {cells} | {'✓' if str(name) in selected else ''} |"
            )
    lines += _measured_gains(rep)
    if inp.heatmap:
        lines += ["", f"![Score per layer and module type; transplanted modules marked]({inp.heatmap})"]
    return "\n".join(lines)


def _measured_gains(rep: "AnalysisReport") -> List[str]:
    """Greedy's rounds (measured log-likelihood gains) and the random-set comparison, when the report has them."""
    lines: List[str] = []
    greedy = rep.greedy if isinstance(rep.greedy, dict) else None
    if greedy and isinstance(greedy.get("rounds"), list):
        held = greedy.get("held_out_samples")
        lines += ["", "Selected greedily: each round transplanted every remaining candidate into the target and "
                  "kept the one that raised the workload's log-likelihood of the continuations most "
                  f"(measured on {md_num(greedy.get('samples'), '{:d}')} samples; gains in nats per sample; "
                  f"held out: {md_num(held, '{:d}')} samples). {md_text(greedy.get('message', ''))}", "",
                  "| Round | Chosen | Measured gain | Held-out gain so far | Runner-up | Its gain |",
                  "|---:|---|---:|---:|---|---:|"]
        for i, r in enumerate(greedy["rounds"], 1):
            if not isinstance(r, dict):
                continue
            runner = r.get("runners_up")[0] if isinstance(r.get("runners_up"), list) and r.get("runners_up") else None
            name, value = (runner[0], runner[1]) if isinstance(runner, list) and len(runner) == 2 else ("", None)
            lines.append(f"| {i} | {md_code(r.get('unit'), in_table=True)} | {md_num(r.get('gain'))} | "
                         f"{md_num(r.get('held_out'))} | {md_code(name, in_table=True) if name else ''} | "
                         f"{md_num(value) if value is not None else ''} |")
    controls = rep.controls if isinstance(rep.controls, dict) else None
    if controls and isinstance(controls.get("random"), list):
        values = ", ".join(md_num(c.get("value")) for c in controls["random"] if isinstance(c, dict))
        verdict = "clearly above them" if controls.get("clearly_above") else "**not** clearly above them"
        lines += ["", f"Against random module sets of the same size ({md_text(controls.get('kind', ''))} "
                  f"{md_text(controls.get('metric', ''))}): selected {md_num(controls.get('selected'))}, "
                  f"random {values}: {verdict}."]
    return lines


def _stderr_of(r: dict) -> Any:
    """The merged model's stderr: a number, or ``{"merged": x, ...}`` as `eval` writes it."""
    se = r.get("stderr")
    return se.get("merged") if isinstance(se, dict) else se


def _ratio(r: dict, key: str) -> str:
    value = r.get(key)
    if value is None and r.get(f"{key}_reason"):
        return f"— ({md_text(r[f'{key}_reason'])})"
    return md_num(value, "{:.3f}")


def _section_eval(inp: CardInputs) -> Optional[str]:
    res = inp.evaluation
    if not res:
        return None
    tasks = res.tasks
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
        merged = md_num(r.get("merged"))
        se = _stderr_of(r)
        if isinstance(se, (int, float)) and not isinstance(se, bool):
            merged += f" ± {md_num(se)}"
        lines.append(
            f"| {md_code(task, in_table=True)} | {md_code(r.get('metric', '?'), in_table=True)} | "
            f"{md_num(r.get('target'))} | {md_num(r.get('donor'))} | {merged} | {_ratio(r, 'tir')} | "
            f"{_ratio(r, 'recovery')} |"
        )
    lines += [
        "",
        "TIR = S_merged / S_target; Recovery = (S_merged − S_target) / (S_donor − S_target): "
        "1 means the merge matches the donor on the task, 0 the target.",
    ]
    retain = res.retain
    if retain:
        lines += ["", "Skills the target should keep (target vs merged):", "",
                  "| Task | Metric | Target | Merged | Change | Regressed |", "|---|---|---:|---:|---:|:-:|"]
        for task in sorted(retain, key=str):
            r = retain[task] if isinstance(retain[task], dict) else {}
            change = md_num(r.get("change"), "{:+.4g}")
            if isinstance(r.get("change_stderr"), (int, float)) and not isinstance(r.get("change_stderr"), bool):
                change += f" ± {md_num(r['change_stderr'])}"
            flag = "yes" if r.get("significant_regression") else ("slightly" if r.get("regressed") else "no")
            lines.append(
                f"| {md_code(task, in_table=True)} | {md_code(r.get('metric', '?'), in_table=True)} | "
                f"{md_num(r.get('target'))} | {md_num(r.get('merged'))} | {change} | {flag} |"
            )
    return "\n".join(lines)


def _section_sweep(inp: CardInputs) -> Optional[str]:
    """The sweep's honest headline: the best analysis point, chosen on the selection split and reported on the
    held-out one, next to random modules of the same size and whole-model interpolation."""
    sweep = inp.sweep
    if sweep is None:
        return None
    best = sweep.summary()
    settings, labels = sweep.settings, sweep.split_labels
    rc = best["random_controls"]
    ks = ", ".join(str(k) for k in settings.ks)
    strengths = ", ".join(f"{s:g}" for s in settings.strengths)
    direction = "higher" if sweep.higher_is_better else "lower"
    lines = [
        "## Against random modules (sweep)", "",
        f"`mergekit-transplant sweep` scored the top K modules of the {md_code(sweep.ranking.score)} ranking "
        f"(K = {ks}; strength {strengths}) against {settings.random_controls} random module set(s) of the same "
        f"size per point{' and against whole-model interpolation' if settings.whole_model else ''}. "
        f"The best point was chosen on "
        f"{md_code(labels['select'])} and is reported on {md_code(labels['report'])} ({direction} is better):", "",
        "| | Score | TIR | Recovery |", "|---|---:|---:|---:|",
        f"| target | {md_num(best['target'])} | | |",
        f"| donor | {md_num(best['donor'])} | | |",
        f"| **best: K = {best['k']}, strength {best['strength']:g}** ({best['parameters']:,} parameters) | "
        f"{md_num(best['report_score'])} | {md_num(best['tir'], '{:.3f}')} | {md_num(best['recovery'], '{:.3f}')} |",
    ]
    if rc["n"]:
        lines.append(f"| random modules, same K and strength ({rc['n']}): mean [min, max] | {md_num(rc['mean'])} "
                     f"[{md_num(rc['min'])}, {md_num(rc['max'])}] | | |")
    if best["whole_model"] is not None:
        lines.append(f"| whole-model interpolation at strength {best['strength']:g} | {md_num(best['whole_model'])} | | |")
    beats = best["beats_every_random_control"]
    lines += ["", "Beats every random control of the same size: "
              + ("n/a (no random controls)" if beats is None else "yes" if beats else "**no**") + "."]
    if best["optimistic"]:
        lines.append("The selection and report split are the same tasks, so this figure is optimistic.")
    return "\n".join(lines)


def _trained_organs(recipe) -> List[tuple]:
    """(donor ref, training record) of every donor that is a trained organ (``organ train``)."""
    from mergekit_transplant.organ.manifest import find_organ

    out = []
    for ref in _donors(recipe):
        try:
            found = find_organ(ref)
        except Exception:  # a damaged organ must not break a card
            found = None
        if found and found[0].kind == "trained" and isinstance(found[0].training, dict):
            out.append((ref, found[0].training))
    return out


def _section_trained(inp: CardInputs) -> Optional[str]:
    organs = _trained_organs(inp.recipe)
    if not organs:
        return None
    lines = ["## Trained organ", ""]
    for ref, t in organs:
        block = t.get("block") if isinstance(t.get("block"), dict) else {}
        corpus = t.get("corpus") if isinstance(t.get("corpus"), dict) else {}
        base = t.get("base_model") if isinstance(t.get("base_model"), dict) else {}
        moved = t.get("applied_at") if isinstance(t.get("applied_at"), dict) else None
        where = f"layers {block.get('start')}-{block.get('end')}"
        if moved:
            count = (block.get("end") or 0) - (block.get("start") or 0)
            where += f", inserted here at layers {moved.get('at')}-{(moved.get('at') or 0) + count}"
        sha = str(corpus.get("sha256", "?"))
        steps, tokens, size = t.get("steps"), t.get("tokens_trained"), corpus.get("tokens")
        count = (lambda x: md_num(x, "{:,}") if isinstance(x, int) and not isinstance(x, bool) else "?")
        lines.append(
            f"A trained organ was applied: {where} of the base model {_link(str(base.get('ref', '?')), inp.hub_ids)}, "
            f"trained with everything else frozen by `mergekit-transplant organ train` "
            f"([NOT paper](https://arxiv.org/abs/2601.13580)) for {count(steps)} steps ({count(tokens)} tokens) on "
            f"the corpus {md_code(corpus.get('path', '?'))} ({count(size)} tokens).")
        organ = moved.get("organ", ref) if moved else ref
        lines += ["", f"- corpus sha256: {md_code(sha)} (the `organ.json` of {md_code(organ)} records it with every "
                      "hyperparameter, the seed and the loss curve)"]
        before, after = t.get("perplexity_before"), t.get("perplexity_after")
        if _is_num(before) and _is_num(after):
            lines.append(f"- eval perplexity in the base model: {md_num(before)} before, {md_num(after)} after")
    return "\n".join(lines)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _section_recipe(inp: CardInputs) -> str:
    lines = ["## Recipe", "", "The mergekit recipe, verbatim (`mergekit_config.yml`):", "",
             md_fence(inp.recipe.source, "yaml")]
    mapped = []
    trained = {ref for ref, _ in _trained_organs(inp.recipe)}
    for ref in _models(inp.recipe):
        repo, how = hub_id_for(ref, inp.hub_ids)
        if repo and how != "recipe":
            mapped.append(f"- {md_code(ref)} is [{md_code(repo)}](https://huggingface.co/{repo}) on the Hub"
                          + ((" (the base model this organ was trained in)" if ref in trained
                              else " (the donor this organ was cut from)") if how == "organ" else ""))
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
            return one_line(text.lstrip("# "))
    report = inp.analysis
    if report is None:
        return None
    if report.command:
        return one_line(report.command)
    recipe = inp.recipe
    settings = report.settings
    return report.reproduce(
        target=_shell_ref(str(settings.target or recipe.target), inp.hub_ids),
        donor=_shell_ref(str(settings.donor or (_donors(recipe) or [""])[0]), inp.hub_ids),
        output="recipe.yml", report_out=None, plot=None)


def _eval_command(inp: CardInputs) -> Optional[str]:
    """The eval command: the recorded ``EvalSettings`` through ``options.to_cli`` (machine-specific
    settings, the device and the cache folder, left out), the models as this card names them."""
    import dataclasses

    from mergekit_transplant.options import to_cli
    from mergekit_transplant.errors import TransplantError
    from mergekit_transplant.evaluation.compare import EvalSettings

    res = inp.evaluation
    if not res:
        return None
    recipe = inp.recipe
    models = ["mergekit-transplant", "eval", "--target", _shell_ref(recipe.target, inp.hub_ids),
              "--donor", _shell_ref((_donors(recipe) or [""])[0], inp.hub_ids), "--merged", f"./{one_line(inp.name)}"]
    recorded = res.settings
    names = {f.name for f in dataclasses.fields(EvalSettings)}
    values = {k: v for k, v in recorded.items() if k in names and k not in ("device", "cache_dir", "use_cache")}
    values.setdefault("tasks", sorted(str(t) for t in res.tasks))
    try:
        settings = EvalSettings(**values)
    except (TransplantError, TypeError, ValueError):  # hand-edited settings: the tasks alone still reproduce it
        settings = EvalSettings(tasks=sorted(str(t) for t in res.tasks))
    return to_cli(settings, models) + " -o results.json"


def _section_reproduce(inp: CardInputs) -> str:
    cmds = ["pip install mergekit-transplant"]
    analysis = _analysis_command(inp)
    if analysis:
        cmds.append("# 1. find the modules (writes the recipe shown above)\n" + analysis)
    cmds.append("# 2. merge (any mergekit-yaml option works; `merge` checks the recipe first)")
    cmds.append("mergekit-transplant check mergekit_config.yml")
    cmds.append(shlex.join(["mergekit-yaml", "mergekit_config.yml", f"./{one_line(inp.name)}"]))
    evaluation = _eval_command(inp)
    if evaluation:
        cmds.append("# 3. evaluate (TIR and Recovery)\n" + evaluation)
    text = "\n".join(CONTROL_CHARS.sub(" ", c).replace("\r", " ") for c in cmds)
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
        + ("The transplanted layers are a trained organ (below)." if _trained_organs(recipe)
           else "No training was involved.")
    )


def _eval_results(inp: CardInputs) -> list:
    """One ``EvalResult`` per evaluated task with a merged score, for the card's ``model-index``."""
    from huggingface_hub import EvalResult

    tasks = inp.evaluation.tasks if inp.evaluation is not None else {}
    out = []
    for task in sorted(tasks or {}, key=str):
        row = tasks[task] if isinstance(tasks[task], dict) else {}
        value = row.get("merged")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out.append(EvalResult(task_type="text-generation", dataset_type=str(task), dataset_name=str(task),
                              metric_type=str(row.get("metric", "?")), metric_value=float(value)))
    return out


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
    if inp.sweep is not None and (inp.sweep.ranking.target, inp.sweep.ranking.donor) != (
            str(inp.recipe.target), (_donors(inp.recipe) or [None])[0]):
        warnings.append(f"the sweep ran on {inp.sweep.ranking.target} <- {inp.sweep.ranking.donor}, not on this "
                        "recipe's target and donor: check that --sweep is this merge's")
    meta = dict(inp.extra_metadata)
    for key in ("base_model", "base_model_relation", "tags", "library_name"):
        meta.pop(key, None)
    if inp.evaluation:
        meta.pop("model-index", None)
    tags = list(TAGS) + [t for t in (inp.extra_metadata.get("tags") or []) if isinstance(t, str) and t not in TAGS]
    data = ModelCardData(
        base_model=base_model or None,
        library_name="transformers",
        tags=tags,
        **meta,
    )
    results = _eval_results(inp)
    if results:  # the Hub's model-index: the merged model's own scores (the card owns it when it has them)
        data.eval_results, data.model_name = results, inp.name
    if base_model:
        data["base_model_relation"] = "merge"
    else:
        warnings.append("no model has a Hub id: base_model and base_model_relation are left out")
    sections = [
        f"# {md_text(inp.name)}",
        _intro(inp),
        _section_transplanted(inp),
        _section_trained(inp),
        _section_chosen(inp),
        _section_eval(inp),
        _section_sweep(inp),
        _section_recipe(inp),
        _section_reproduce(inp),
    ]
    body = "\n\n".join(s for s in sections if s)
    text = f"---\n{data.to_yaml()}\n---\n\n{BEGIN}\n\n{body}\n\n{END}\n"
    ModelCard(text)  # parse what we wrote: fails loudly if it is not a valid card
    return CardResult(path=None, text=text, warnings=warnings, base_model=base_model)
