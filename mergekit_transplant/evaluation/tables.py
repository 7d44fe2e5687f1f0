"""Markdown tables of an eval report (what ``eval`` prints to stdout)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional


def fmt(value: Optional[float], stderr: Optional[float] = None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if stderr is not None and not (isinstance(stderr, float) and math.isnan(stderr)):
        text += f" ± {stderr:.{digits}f}"
    return text


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _arrow(hib: bool) -> str:
    return "↑" if hib else "↓"


def eval_markdown(data: Dict[str, Any]) -> str:
    rows = []
    notes = []
    for task, r in data["tasks"].items():
        se = r["stderr"]
        rows.append([
            task, f"{r['metric']} {_arrow(r['higher_is_better'])}", fmt(r["target"], se["target"]),
            fmt(r["donor"], se["donor"]), fmt(r["merged"], se["merged"]), fmt(r["tir"], digits=3),
            fmt(r["recovery"], digits=3),
        ])
        for key, label in (("tir_reason", "TIR"), ("recovery_reason", "Recovery")):
            if r.get(key):
                notes.append(f"- {task}: {label} is undefined: {r[key]}")
        if r.get("donor_better") is False and r["donor"] != r["target"]:
            notes.append(f"- {task}: the donor is not better than the target; positive Recovery means moving toward a worse score")
    out = [table(["task", "metric", "target", "donor", "merged", "TIR", "Recovery"], rows)]
    if data.get("retain"):
        rrows = []
        for task, r in data["retain"].items():
            flag = "significantly worse" if r["significant_regression"] else ("worse" if r["regressed"] else "ok")
            rrows.append([
                task, f"{r['metric']} {_arrow(r['higher_is_better'])}", fmt(r["target"], r["stderr"]["target"]),
                fmt(r["merged"], r["stderr"]["merged"]), fmt(r["change"], r["change_stderr"]),
                r["stderr_method"] or "-", flag,
            ])
        out.append("Retain tasks (merged − target):\n\n" + table(
            ["task", "metric", "target", "merged", "change", "stderr", "verdict"], rrows))
    if notes:
        out.append("\n".join(notes))
    out.append("TIR > 1 and Recovery > 0 mean the merged model improved on the target "
               "(Recovery 1.0 = the whole target→donor gap).")
    return "\n\n".join(out) + "\n"
