"""The analysis report (JSON) and the console table of top modules.

The report is the complete record of a run: settings, both models'
fingerprints, every candidate's scores with a per-sample summary, each
score's ranking, the selection, and timing. Everything but ``timing`` is a
pure function of the inputs, and keys are sorted, so two runs on the same
inputs give files that differ only there (``sweep`` relies on this).
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.analysis.candidates import Candidate
from mergekit_transplant.analysis.scores import ScoreTable, consistency_k, summarize
from mergekit_transplant.analysis.selection import Picked
from mergekit_transplant.checkpoint import ModelIndex
from mergekit_transplant.recipe import Selection

SCHEMA_VERSION = 1


def build_report(*, settings: dict, target_index: ModelIndex, donor_index: ModelIndex,
                 candidates: Sequence[Candidate], modules_table: ScoreTable, table: ScoreTable,
                 units_info: Optional[Dict[str, dict]], picked: Picked, chosen: Sequence[Selection],
                 computed: Sequence[str], top_k: Optional[int], skipped: Sequence[str], warnings: Sequence[str],
                 timing: Dict[str, float], generations: Dict[str, List[str]]) -> dict:
    k_modules = consistency_k(len(picked.units) if units_info is None else 0, top_k, len(modules_table.units))
    module_summaries = {s: summarize(modules_table, s, k_modules) for s in computed}
    entries = []
    for i, c in enumerate(candidates):
        entry = {
            "tensor": c.tensor, "module": c.module, "layer": c.layer, "kind": c.kind,
            "parameters": c.parameters, "tensors": list(c.tensors),
            "scores": {s: modules_table.scores[s][i] for s in computed},
            "per_sample": {s: module_summaries[s][c.tensor] for s in computed},
        }
        for key, values in sorted(modules_table.extra.items()):
            entry.setdefault("mean_abs_output", {})[key.rsplit("_", 1)[-1]] = values[i]
        entries.append(entry)
    report = {
        "schema": SCHEMA_VERSION,
        "settings": settings,
        "models": {
            "target": {"ref": target_index.ref, "architecture": target_index.architecture,
                       "parameters": target_index.num_parameters, **target_index.fingerprint()},
            "donor": {"ref": donor_index.ref, "architecture": donor_index.architecture,
                      "parameters": donor_index.num_parameters, **donor_index.fingerprint()},
        },
        "candidates": entries,
        "ranking": {s: table.ranking(s) for s in computed},
        "selection": [{"tensor": s.tensor, "donor": s.donor, "strength": s.strength, "score": s.score}
                      for s in chosen],
        "selected": {
            "units": list(picked.units), "parameters": picked.parameters,
            "share": picked.parameters / max(target_index.num_parameters, 1),
        },
        "skipped_modules": list(skipped),
        "warnings": list(warnings),
        "timing": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items()},
    }
    if units_info is not None:
        k_layers = consistency_k(len(picked.units), top_k, len(table.units))
        summaries = {s: summarize(table, s, k_layers) for s in computed}
        report["layers"] = [
            {"prefix": p, "layer": units_info[p]["layer"], "parameters": units_info[p]["parameters"],
             "modules": list(units_info[p]["modules"]),
             "scores": {s: table.scores[s][j] for s in computed},
             "per_sample": {s: summaries[s][p] for s in computed}}
            for j, p in enumerate(table.units)
        ]
    if generations:
        report["generations"] = generations
    return report


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def format_table(report: dict, rows: int = 15) -> str:
    """The top units by the chosen score, with every computed score beside it."""
    settings = report["settings"]
    score = settings["score"]
    computed = settings["scores_computed"]
    layered = "layers" in report
    items = report["layers"] if layered else report["candidates"]
    key = "prefix" if layered else "tensor"
    by_name = {item[key]: item for item in items}
    selected = set(report["selected"]["units"])
    ranking = report["ranking"][score][:rows]
    head = ["#", "layer" if layered else "module", "params"] + computed + [f"top-k({score})", "sel"]
    body = []
    for rank, unit in enumerate(ranking, start=1):
        item = by_name[unit]
        name = unit if layered else item["module"]
        body.append([str(rank), name, f"{item['parameters']:,}"]
                    + [f"{item['scores'][s]:.4g}" for s in computed]
                    + [f"{item['per_sample'][score]['top_k_fraction']:.2f}", "*" if unit in selected else ""])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    align = ["<" if i == 1 else ">" for i in range(len(head))]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    total = len(report["ranking"][score])
    sel = report["selected"]
    lines.append(f"{len(sel['units'])} of {total} {'layers' if layered else 'modules'} selected: "
                 f"{sel['parameters']:,} parameters ({100 * sel['share']:.3f}% of the target)")
    return "\n".join(lines)


def format_greedy(report: dict) -> str:
    """Greedy's rounds: what each chose, its measured gain, the runners-up, and the held-out gain so far."""
    g = report["greedy"]
    lines = [f"greedy: {g['samples']} samples measured, {g['held_out_samples']} held out; "
             f"{g['evaluations']} candidate evaluations; {g['message']}",
             "round  chosen (gain, nats/sample)  held-out so far  runners-up"]
    for i, r in enumerate(g["rounds"], start=1):
        held = "-" if r["held_out"] is None else f"{r['held_out']:+.4g}"
        runners = ", ".join(f"{u} {v:+.4g}" for u, v in r["runners_up"])
        lines.append(f"{i:>5}  {r['unit']} ({r['gain']:+.4g})  {held}  {runners}")
    return "\n".join(lines)
