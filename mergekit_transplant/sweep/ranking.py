"""Where the sweep's module ranking comes from: an analysis report.json, or ``analyze()``.

The analysis writes ``{"settings": {"target", "donor", "score", ...},
"candidates": [{"tensor", "parameters", ...}], "ranking": {score: [names best
first]}, ...}``. A ranking entry is a *unit*: normally an exact tensor name,
or a prefix such as ``model.layers.5.`` when the analysis ranked whole layers.
The candidate pool (every candidate, ranked or not) is what random controls
are drawn from, so controls and analysis choose among the same modules; when
the ranked units are not candidate tensors (layer prefixes), the ranked units
are the pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from mergekit_transplant.analysis.report import AnalysisReport
from mergekit_transplant.errors import TransplantError


@dataclass
class Ranking:
    """Units best first, the pool they come from, and the models they refer to."""

    target: str
    donor: str
    score: str
    order: List[str]
    pool: List[str]
    parameters: Dict[str, int] = field(default_factory=dict)
    source: str = ""
    report: Optional[AnalysisReport] = field(default=None, compare=False, repr=False)  # not in sweep.json


def ranking_from_dict(
    report: Union[AnalysisReport, Dict[str, Any]],
    *,
    score: Optional[str] = None,
    target: Optional[str] = None,
    donor: Optional[str] = None,
    source: str = "report",
) -> Ranking:
    """Pick the ranking for ``score`` (default: the report's own) from an analysis report.

    ``report`` is an ``AnalysisReport`` (a JSON object is read with ``AnalysisReport.from_json``, which
    checks its shape and schema)."""
    report = AnalysisReport.from_json(report, source)
    rankings = report.ranking
    score = score or (report.score if report.score in rankings else next(iter(rankings)))
    if score not in rankings:
        raise TransplantError(f"{source}: no ranking for score {score!r} (it has: {', '.join(rankings)})")
    order = [str(u) for u in rankings[score] or []]
    if not order:
        raise TransplantError(f"{source}: the ranking for score {score!r} is empty")
    pool: List[str] = []
    parameters: Dict[str, int] = {}
    for cand in report.candidates:
        name = str(cand["tensor"])
        pool.append(name)
        if isinstance(cand.get("parameters"), int):
            parameters[name] = cand["parameters"]
    if not pool or not set(order) <= set(pool):
        # units are not candidate tensors (e.g. whole layers ranked as prefixes): the ranked
        # units themselves are the pool, so controls draw units of the same kind
        pool = list(order)
    target = target or report.settings.target
    donor = donor or report.settings.donor
    if not target or not donor:
        raise TransplantError(f"{source}: settings.target/settings.donor missing; pass --target and --donor")
    if len(set(order)) != len(order):
        raise TransplantError(f"{source}: the ranking for score {score!r} lists a module twice")
    return Ranking(str(target), str(donor), score, order, sorted(set(pool)), parameters, source, report)


def ranking_from_report(
    path: os.PathLike | str, *, score: Optional[str] = None, target: Optional[str] = None, donor: Optional[str] = None
) -> Ranking:
    report = AnalysisReport.load(path)
    return ranking_from_dict(report, score=score, target=target, donor=donor, source=str(path))


def ranking_from_analysis(
    target: str, donor: str, workload: str, *, score: Optional[str] = None, **analyze_kwargs: Any
) -> Ranking:
    """Run the bundled analysis (``mergekit_transplant.analysis.analyze``) and take its ranking.

    The sweep walks K down the score's whole ranking, so the analysis runs with ``select="top"`` unless told
    otherwise: greedy selection yields a recipe of at most K measured modules, not a ranking of the pool.
    """
    try:
        from mergekit_transplant.analysis import analyze
    except ImportError as error:
        raise TransplantError(f"the analysis is not available ({error}); pass --report instead") from None
    kwargs = dict(analyze_kwargs)
    kwargs.setdefault("select", "top")
    if score:
        kwargs["score"] = score
    result = analyze(target, donor, workload, **kwargs)
    return ranking_from_dict(result.report, score=score, target=target, donor=donor, source="analyze()")
