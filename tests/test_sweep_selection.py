"""The sweep's selection and reporting rules, on scores chosen so that every rule matters.

tests/test_sweep.py runs the whole sweep through lm-eval; there the selection
and report splits happen to agree on the best point, so a sweep that chose on
the *report* split would pass it. The fixture here is built so the two splits
disagree at every step: the point best on the selection split is not the one
best on the report split, the random controls rank the other way round on the
two splits, and target, donor and whole-model differ between them. No model is
loaded, so these tests run in milliseconds and ``make mutation`` can run them
against every mutant of mergekit_transplant/sweep/result.py.
"""

from __future__ import annotations

import math

import pytest

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.sweep.ranking import Ranking
from mergekit_transplant.sweep.result import Point, SweepResult
from mergekit_transplant.sweep.runner import SweepSettings

SEL, REP = "sel", "rep"


def point(selection, k, strength, select, report, *, seed=None, parameters=None, units=None):
    p = Point(selection, k, strength, seed, units if units is not None else [f"m{i}" for i in range(k)],
              tensors=[f"m{i}.weight" for i in range(k)])
    p.parameters = parameters if parameters is not None else 100 * k
    p.split_scores = {SEL: select, REP: report}
    p.task_scores = {SEL: select, REP: report}
    return p


def result(points, *, higher_is_better=False, target=(40.0, 41.0), donor=(10.0, 9.0), single=False):
    """``target``/``donor`` are (report, select) scores; lower is better unless ``higher_is_better``."""
    settings = SweepSettings(ks=[1, 2], strengths=[0.5, 1.0], select_tasks=[SEL],
                             report_tasks=[SEL] if single else [REP], random_controls=2)
    labels = {"select": SEL, "report": SEL if single else REP}
    refs = {"target": point("target", 0, 0.0, target[1], target[0]),
            "donor": point("donor", 9, 1.0, donor[1], donor[0])}
    ranking = Ranking("T", "D", "local", ["m0", "m1"], ["m0", "m1", "m2"], source="test")
    return SweepResult(settings=settings, ranking=ranking, splits={"select": [SEL], "report": [labels["report"]]},
                       split_labels=labels, higher_is_better=higher_is_better, metrics={SEL: "ppl", REP: "ppl"},
                       points=points, references=refs, timing={})


@pytest.fixture
def disagreeing():
    """Lower is better. On the selection split K=1 s=1 wins; on the report split K=2 s=1 would."""
    return result([
        point("whole-model", 9, 0.5, 30.0, 31.0),
        point("whole-model", 9, 1.0, 8.0, 12.0),
        point("analysis", 1, 1.0, 10.0, 20.0),  # best on the selection split
        point("analysis", 2, 1.0, 12.0, 5.0),  # best on the report split
        point("analysis", 1, 0.5, 15.0, 6.0),
        point("analysis", 2, 0.5, 14.0, 7.0),
        # controls at the best point's (K, s): better than it on the selection split, worse on the report split
        point("random", 1, 1.0, 9.0, 25.0, seed=0),
        point("random", 1, 1.0, 11.0, 30.0, seed=1),
        # controls elsewhere, that would beat it if the band were taken at the wrong (K, s)
        point("random", 2, 1.0, 50.0, 1.0, seed=0),
        point("random", 1, 0.5, 50.0, 2.0, seed=0),
    ])


def test_best_is_chosen_on_the_selection_split_not_the_report_split(disagreeing):
    best = disagreeing.best()
    assert (best.k, best.strength) == (1, 1.0)
    s = disagreeing.summary()
    assert (s["k"], s["strength"]) == (1, 1.0)
    assert s["select_score"] == 10.0 and s["report_score"] == 20.0
    assert s["units"] == ["m0"] and s["parameters"] == 100


def test_summary_reports_every_figure_on_the_report_split(disagreeing):
    s = disagreeing.summary()
    assert s["target"] == 40.0 and s["donor"] == 10.0
    assert s["whole_model"] == 12.0  # whole-model at the best point's strength, report split
    band = s["random_controls"]
    assert band == {"n": 2, "mean": 27.5, "std": pytest.approx(math.sqrt(12.5)), "min": 25.0, "max": 30.0}
    assert s["beats_every_random_control"] is True  # 20 < 25 on the report split (not 20 > 9 on selection)
    assert s["tir"] == pytest.approx(40.0 / 20.0)  # lower is better: target / merged
    assert s["recovery"] == pytest.approx((20.0 - 40.0) / (10.0 - 40.0))
    assert s["tir_reason"] is None and s["recovery_reason"] is None
    assert s["optimistic"] is False


def test_a_control_that_beats_the_best_point_on_the_report_split_is_said(disagreeing):
    disagreeing.points.append(point("random", 1, 1.0, 99.0, 19.5, seed=2))
    s = disagreeing.summary()
    assert s["beats_every_random_control"] is False
    assert s["random_controls"]["n"] == 3 and s["random_controls"]["min"] == 19.5
    # a control that ties the best point is not beaten either
    tie = result([p for p in disagreeing.points if p.selection != "random"]
                 + [point("random", 1, 1.0, 99.0, 20.0, seed=0), point("random", 1, 1.0, 99.0, 30.0, seed=1)])
    assert tie.summary()["beats_every_random_control"] is False
    # no controls at all: no claim either way
    bare = result([p for p in disagreeing.points if p.selection != "random"])
    assert bare.summary()["beats_every_random_control"] is None
    assert bare.summary()["random_controls"] == {"n": 0, "mean": None, "std": None, "min": None, "max": None}


def test_higher_is_better_turns_every_comparison_round():
    r = result([
        point("analysis", 1, 1.0, 0.70, 0.40),  # best on the selection split
        point("analysis", 2, 1.0, 0.60, 0.90),  # best on the report split
        point("random", 1, 1.0, 0.20, 0.35, seed=0),
        point("random", 1, 1.0, 0.80, 0.39, seed=1),
    ], higher_is_better=True, target=(0.30, 0.31), donor=(0.50, 0.51))
    s = r.summary()
    assert (s["k"], s["strength"]) == (1, 1.0) and s["report_score"] == 0.40
    assert s["beats_every_random_control"] is True  # 0.40 > 0.39 on the report split
    assert s["tir"] == pytest.approx(0.40 / 0.30)  # higher is better: merged / target
    r.points.append(point("random", 1, 1.0, 0.0, 0.41, seed=2))
    assert r.summary()["beats_every_random_control"] is False


def test_ties_go_to_fewer_parameters_then_lower_strength_then_smaller_k():
    def best(*points):
        b = result(list(points)).best()
        return b.k, b.strength

    # same selection score: fewer parameters wins, even at a larger K
    assert best(point("analysis", 1, 1.0, 5.0, 1.0, parameters=300),
                point("analysis", 2, 1.0, 5.0, 9.0, parameters=200)) == (2, 1.0)
    # same score and size: the lower strength
    assert best(point("analysis", 1, 1.0, 5.0, 1.0, parameters=100),
                point("analysis", 1, 0.5, 5.0, 9.0, parameters=100)) == (1, 0.5)
    # same score, size and strength: the smaller K
    assert best(point("analysis", 2, 1.0, 5.0, 1.0, parameters=100),
                point("analysis", 1, 1.0, 5.0, 9.0, parameters=100)) == (1, 1.0)
    # a strictly better score wins whatever its size
    assert best(point("analysis", 1, 0.5, 5.0, 1.0, parameters=100),
                point("analysis", 2, 1.0, 4.9, 9.0, parameters=900)) == (2, 1.0)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_a_missing_or_non_finite_selection_score_never_wins(bad):
    for higher in (False, True):
        r = result([point("analysis", 1, 1.0, bad, 0.0), point("analysis", 2, 1.0, 50.0, 60.0)],
                   higher_is_better=higher)
        assert r.best().k == 2
        assert r.oriented(bad) == -math.inf


def test_only_analysis_points_compete():
    r = result([point("whole-model", 9, 1.0, 0.0, 0.0), point("random", 1, 1.0, 0.0, 0.0, seed=0),
                point("analysis", 2, 1.0, 7.0, 8.0)])
    assert r.best().selection == "analysis" and r.best().k == 2
    with pytest.raises(TransplantError) as info:
        result([point("random", 1, 1.0, 1.0, 1.0, seed=0)]).best()
    assert str(info.value) == "the sweep scored no analysis point"


def test_band_ignores_missing_scores_and_reads_the_asked_split(disagreeing):
    disagreeing.points.append(point("random", 1, 1.0, None, math.nan, seed=3))
    assert disagreeing.band(1, 1.0)["n"] == 2  # the report split by default
    sel = disagreeing.band(1, 1.0, "select")
    assert sel == {"n": 2, "mean": 10.0, "std": pytest.approx(math.sqrt(2.0)), "min": 9.0, "max": 11.0}
    one = result([point("analysis", 1, 1.0, 1.0, 1.0), point("random", 1, 1.0, 3.0, 4.0, seed=0)])
    assert one.band(1, 1.0) == {"n": 1, "mean": 4.0, "std": 0.0, "min": 4.0, "max": 4.0}
    assert disagreeing.whole_model_score(0.5) == 31.0 and disagreeing.whole_model_score(0.5, "select") == 30.0
    assert result([point("analysis", 1, 1.0, 1.0, 1.0)]).whole_model_score(1.0) is None


def test_of_filters_by_selection_k_and_strength(disagreeing):
    assert len(disagreeing.of("analysis")) == 4
    assert [(p.k, p.strength) for p in disagreeing.of("analysis", k=2)] == [(2, 1.0), (2, 0.5)]
    assert [(p.k, p.strength) for p in disagreeing.of("analysis", strength=0.5)] == [(1, 0.5), (2, 0.5)]
    assert [p.seed for p in disagreeing.of("random", 1, 1.0)] == [0, 1]


def test_json_rows_and_bands_carry_both_splits(disagreeing):
    data = disagreeing.to_dict()
    assert data["best"] == disagreeing.summary() and data["optimistic"] is False
    assert data["settings"]["select_split"] == SEL and data["settings"]["report_split"] == REP
    assert data["settings"]["pool_size"] == 3 and data["settings"]["higher_is_better"] is False
    assert {k: data["settings"][k] for k in ("target", "donor", "score", "ranking_source", "metrics")} == {
        "target": "T", "donor": "D", "score": "local", "ranking_source": "test", "metrics": {SEL: "ppl", REP: "ppl"}}
    assert data["settings"]["ks"] == [1, 2] and data["settings"]["random_controls"] == 2
    disagreeing.warnings.append("a warning")
    disagreeing.timing["total_s"] = 1.5
    again = disagreeing.to_dict()
    assert again["warnings"] == ["a warning"] and again["timing"] == {"total_s": 1.5}
    assert data["references"] == {"target": {SEL: 41.0, REP: 40.0}, "donor": {SEL: 9.0, REP: 10.0}}
    rows = data["points"]
    assert len(rows) == 2 * len(disagreeing.points)
    row = next(r for r in rows if r["selection"] == "analysis" and r["k"] == 2 and r["strength"] == 1.0
               and r["split"] == REP)
    assert row["score"] == 5.0 and row["tasks"] == {REP: 5.0} and row["tensors"] == 2 and row["units"] == ["m0", "m1"]
    assert row["parameters"] == 200 and row["seed"] is None
    whole = next(r for r in rows if r["selection"] == "whole-model")
    assert whole["units"] == []
    bands = {(b["k"], b["strength"], b["split"]): b for b in data["random_bands"]}
    assert set(bands) == {(k, s, split) for k in (1, 2) for s in (0.5, 1.0) for split in (SEL, REP)}
    assert bands[(1, 1.0, REP)]["min"] == 25.0 and bands[(1, 1.0, SEL)]["min"] == 9.0
    assert bands[(2, 0.5, REP)]["n"] == 0


def test_one_split_is_flagged_optimistic_and_reported_once():
    r = result([point("analysis", 1, 1.0, 3.0, 3.0), point("random", 1, 1.0, 4.0, 4.0, seed=0)], single=True)
    data = r.to_dict()
    assert data["optimistic"] is True and data["best"]["optimistic"] is True
    assert {b["split"] for b in data["random_bands"]} == {SEL}
    assert len(data["random_bands"]) == 4
    assert len(data["points"]) == 2 and {row["split"] for row in data["points"]} == {SEL}


def test_choosing_from_no_scored_point_is_one_clear_error():
    """``choose_best`` (shared by ``sweep`` and ``unplug sweep``) on nothing: an input error naming why."""
    from mergekit_transplant.sweep.result import choose_best

    with pytest.raises(TransplantError) as info:
        choose_best([], "select", True, size=lambda p: ())
    assert str(info.value) == "the sweep scored no point to choose from"
