"""What a sweep leaves behind: sweep.json, a CSV beside it, the best recipe, a table."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional, Sequence

from mergekit_transplant import atomic
from mergekit_transplant.evaluation.results import json_safe
from mergekit_transplant.evaluation.tables import fmt, table
from mergekit_transplant.recipe import Selection, render_recipe
from mergekit_transplant.sweep.runner import SweepResult

CSV_COLUMNS = ("k", "strength", "selection", "seed", "split", "score", "parameters", "tensors", "units")


def write_json(result: SweepResult, path: os.PathLike | str) -> Path:
    """Write sweep.json (``result.to_json()``) and, beside it, one row per point and split as CSV; returns the
    CSV path."""
    path = Path(path)
    result.write(path)
    csv_path = path.with_suffix(".csv")
    atomic.write_text(csv_path, points_csv(json_safe(result.rows())))
    return csv_path


def points_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([
            row["k"], row["strength"], row["selection"], "" if row["seed"] is None else row["seed"], row["split"],
            "" if row["score"] is None else repr(row["score"]), row["parameters"], row["tensors"],
            ";".join(row["units"]),
        ])
    return buf.getvalue()


def best_recipe(result: SweepResult, header: Sequence[str] = ()) -> str:
    """The best analysis point as a recipe (same format ``analyze`` writes)."""
    summary = result.summary()
    labels = result.split_labels
    scores = {}
    for cand in (result.ranking.report.candidates if result.ranking.report is not None else []):
        if isinstance(cand, dict) and isinstance((cand.get("scores") or {}).get(result.ranking.score), (int, float)):
            scores[cand.get("tensor")] = float(cand["scores"][result.ranking.score])
    selections = [
        Selection(tensor=unit, donor=result.ranking.donor, strength=summary["strength"], score=scores.get(unit))
        for unit in summary["units"]
    ]
    lines = [
        "Written by mergekit-transplant sweep: the best analysis-selected point.",
        f"K={summary['k']} modules at strength {summary['strength']:g} ({summary['parameters']} parameters), "
        f"ranked by score '{result.ranking.score}' from {result.ranking.source}.",
        f"Chosen on {labels['select']}: {fmt(summary['select_score'])}; "
        f"reported on {labels['report']}: {fmt(summary['report_score'])} "
        f"(target {fmt(summary['target'])}, donor {fmt(summary['donor'])}).",
    ]
    st = result.settings
    lines.append(
        f"Sweep: K={','.join(map(str, st.ks))}, strength={','.join(f'{x:g}' for x in st.strengths)}, "
        f"{st.random_controls} random controls per point (seeds from {st.seed}), limit={st.limit}, "
        f"num_fewshot={st.num_fewshot}."
    )
    if summary["optimistic"]:
        lines.append("WARNING: chosen and reported on the same tasks, so the reported score is optimistic.")
    lines += list(header)
    return render_recipe(result.ranking.target, selections, header=lines)


def markdown_table(result: SweepResult) -> str:
    report, select = result.split_labels["report"], result.split_labels["select"]
    two = not result.settings.single_split
    header = ["K", "strength"] + ([f"analysis ({select})"] if two else []) + [
        f"analysis ({report})", "random mean ± std", "random min–max", "whole-model"]
    rows = []
    for k in result.settings.ks:
        for s in result.settings.strengths:
            point = result.of("analysis", k, s)[0]
            band = result.band(k, s)
            rows.append(
                [str(k), f"{s:g}"] + ([fmt(point.split_scores[select])] if two else []) + [
                    fmt(point.split_scores[report]),
                    fmt(band["mean"], band["std"]) if band["n"] else "-",
                    f"{fmt(band['min'])}–{fmt(band['max'])}" if band["n"] else "-",
                    fmt(result.whole_model_score(s)) if result.settings.whole_model else "-",
                ]
            )
    best = result.summary()
    direction = "higher" if result.higher_is_better else "lower"
    metrics = ", ".join(f"{t}: {m}" for t, m in result.metrics.items())
    lines = [
        table(header, rows),
        "",
        f"Scores: {metrics} ({direction} is better). References on {report}: "
        f"target {fmt(best['target'])}, donor {fmt(best['donor'])}.",
        f"Best (chosen on {select}): K={best['k']}, strength={best['strength']:g}: {fmt(best['report_score'])} on "
        f"{report}; TIR {fmt(best['tir'], digits=3)}, Recovery {fmt(best['recovery'], digits=3)}.",
    ]
    return "\n".join(lines) + "\n"


def write_recipe(result: SweepResult, path: os.PathLike | str, header: Optional[Sequence[str]] = None) -> None:
    atomic.write_text(path, best_recipe(result, header or ()))
