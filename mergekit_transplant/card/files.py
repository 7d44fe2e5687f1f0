"""Writing the card into an output folder: README.md, its sidecar and the heatmap.

``write_card`` keeps ``transplant_card.json`` beside the card: the hub-id
mapping, analysis report, eval results and sweep it was built from (each as
its class's ``to_json``), so a later
``mergekit-transplant card OUT --eval ...`` updates one section without
losing the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Tuple

from mergekit_transplant import atomic
from mergekit_transplant._version import __version__
from mergekit_transplant.card.content import (
    BEGIN,
    END,
    CardInputs,
    CardResult,
    build_card,
)
from mergekit_transplant.checkpoint import read_json_object
from mergekit_transplant.errors import TransplantError

if TYPE_CHECKING:  # pragma: no cover
    from mergekit_transplant.analysis.report import AnalysisReport
    from mergekit_transplant.evaluation.results import EvalReport
    from mergekit_transplant.sweep.result import SweepResult

CARD_FILE = "README.md"
SIDECAR = "transplant_card.json"
HEATMAP_FILE = "transplant_heatmap.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_HEATMAP_BYTES = 32 * 1024 * 1024
_MERGEKIT_CARD_MARK = "This is a merge of pre-trained language models created using [mergekit]"


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


def _referenced_heatmap(report: "AnalysisReport", report_path: Optional[Path]) -> Optional[Path]:
    """A heatmap that report.json names (``heatmap`` / ``plot``, top level or settings)."""
    settings = report.settings_extra
    for value in (report.extra.get("heatmap"), report.extra.get("plot"), settings.get("heatmap"),
                  settings.get("plot")):
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


def _previous(sidecar: dict, key: str, check, warnings: List[str]) -> Any:
    """A section kept from the previous card run, or None when it is missing or no longer valid (a newer
    schema, a hand edit): then the card says so in a warning rather than silently dropping the section."""
    if not isinstance(sidecar.get(key), dict):
        return None
    try:
        return check(sidecar[key], f"{SIDECAR} {key}")
    except TransplantError as error:
        warnings.append(f"the {key} section kept from the previous card is left out: {error}")
        return None


def write_card(
    out_dir: os.PathLike | str,
    *,
    recipe=None,
    check_report=None,
    report: "Optional[os.PathLike | str | dict | AnalysisReport]" = None,
    eval_results: "Optional[os.PathLike | str | dict | EvalReport]" = None,
    sweep: "Optional[os.PathLike | str | dict | SweepResult]" = None,
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
            previous = read_json_object(out_dir / SIDECAR, "card data")
        except TransplantError:
            previous = {}
    from mergekit_transplant.card.inputs import (
        check_analysis_report,
        check_eval_results,
        check_sweep_results,
    )
    from mergekit_transplant.sweep.result import SweepResult

    report_path = None
    if isinstance(report, (str, os.PathLike)):
        report_path = Path(report)
        report = check_analysis_report(read_json_object(report_path, "analysis report"), f"analysis report {report_path}")
    elif report is not None:
        report = check_analysis_report(report, "analysis report")
    if isinstance(eval_results, (str, os.PathLike)):
        path = Path(eval_results)
        eval_results = check_eval_results(read_json_object(path, "eval results"), f"eval results {path}")
    elif eval_results is not None:
        eval_results = check_eval_results(eval_results, "eval results")
    if isinstance(sweep, (str, os.PathLike)):
        sweep = SweepResult.load(sweep)
    elif sweep is not None:
        sweep = check_sweep_results(sweep, "sweep results")
    kept_warnings: List[str] = []
    if report is None:
        report = _previous(previous, "analysis", check_analysis_report, kept_warnings)
    if eval_results is None:
        eval_results = _previous(previous, "evaluation", check_eval_results, kept_warnings)
    if sweep is None:
        sweep = _previous(previous, "sweep", check_sweep_results, kept_warnings)
    mapping = {str(k): str(v) for k, v in (previous.get("hub_ids") or {}).items()} if isinstance(
        previous.get("hub_ids"), dict) else {}
    mapping.update(hub_ids or {})

    heatmap_name = None
    if heatmap is None and report is not None:
        heatmap = _referenced_heatmap(report, report_path)
    if heatmap is not None:
        heatmap_name = _copy_heatmap(Path(heatmap), out_dir)
    elif (out_dir / HEATMAP_FILE).is_file():
        heatmap_name = HEATMAP_FILE

    readme = out_dir / CARD_FILE
    meta, before, after = ({}, "", "")
    if readme.is_file():
        meta, before, after = _split_existing(readme.read_text(encoding="utf-8"))
    warnings = []
    if "license" not in meta:  # a license someone set on the card is theirs; otherwise the target's, if it states one
        from mergekit_transplant.card.license import target_license

        inherited, source = target_license(recipe.target)
        if inherited:
            meta = {**meta, **inherited}
        else:
            warnings.append(f"the target {recipe.target} states no license: the card has none (add one by hand)")
    inputs = CardInputs(
        recipe=recipe, check_report=check_report, analysis=report, evaluation=eval_results, sweep=sweep,
        hub_ids=mapping, name=name or _display_name(out_dir), heatmap=heatmap_name, extra_metadata=meta,
    )
    result = build_card(inputs)
    result.warnings += kept_warnings + warnings
    text = result.text
    if before or after:
        head, _, generated = text.partition(f"\n---\n\n{BEGIN}")
        generated = f"{BEGIN}{generated}"
        text = head + "\n---\n\n" + "\n\n".join(p for p in (before, generated.strip(), after) if p) + "\n"
    atomic.write_text(readme, text)
    sidecar = {"created_by": f"mergekit-transplant {__version__}", "hub_ids": mapping,
               "analysis": report.to_json() if report is not None else None,
               "evaluation": eval_results.to_json() if eval_results is not None else None,
               "sweep": sweep.to_json() if sweep is not None else None}
    atomic.write_text(out_dir / SIDECAR, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    result.path = readme
    result.text = text
    return result
