"""TIR, Recovery and retain-change arithmetic: directions, zero gaps, missing values."""

import math

import pytest

from mergekit_transplant.evaluation.metrics import change, donor_better, paired_stderr, recovery, tir


def test_tir_higher_is_better_is_merged_over_target():
    assert tir(0.5, 0.6).value == pytest.approx(1.2)
    assert tir(0.5, 0.4).value == pytest.approx(0.8)


def test_tir_lower_is_better_flips_so_above_one_is_improvement():
    # perplexity 20 -> 16 is an improvement: TIR = target / merged = 1.25
    assert tir(20.0, 16.0, higher_is_better=False).value == pytest.approx(1.25)
    assert tir(20.0, 25.0, higher_is_better=False).value < 1


def test_tir_zero_denominator_gives_null_with_reason():
    r = tir(0.0, 0.3)
    assert r.value is None and "target scores 0" in r.reason
    r = tir(5.0, 0.0, higher_is_better=False)
    assert r.value is None and "merged model scores 0" in r.reason


def test_recovery_is_fraction_of_gap_in_both_directions():
    assert recovery(0.4, 0.8, 0.6).value == pytest.approx(0.5)
    assert recovery(0.4, 0.8, 0.8).value == pytest.approx(1.0)
    assert recovery(0.4, 0.8, 0.3).value == pytest.approx(-0.25)
    # lower is better: target ppl 20, donor 10, merged 15 closes half the gap
    assert recovery(20.0, 10.0, 15.0).value == pytest.approx(0.5)
    assert recovery(20.0, 10.0, 22.0).value < 0


def test_recovery_zero_gap_is_null_not_a_crash():
    r = recovery(0.5, 0.5, 0.7)
    assert r.value is None and "no gap" in r.reason


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_or_non_finite_scores_give_null(bad):
    assert tir(bad, 0.5).value is None and tir(bad, 0.5).reason
    assert recovery(0.5, bad, 0.6).value is None
    assert change(bad, 0.5).value is None


def test_donor_better_follows_direction():
    assert donor_better(0.4, 0.6) is True
    assert donor_better(0.4, 0.6, higher_is_better=False) is False
    assert donor_better(20.0, 10.0, higher_is_better=False) is True
    assert donor_better(None, 1.0) is None


def test_paired_stderr_matches_hand_computation():
    target = {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}
    merged = {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    diffs = [0.0, 1.0, -1.0, 1.0]
    mean = sum(diffs) / 4
    expected = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert paired_stderr(target, merged) == pytest.approx(expected)
    assert paired_stderr(target, {0: 1.0}) is None  # not the same documents


def test_change_prefers_paired_stderr_and_falls_back_to_independent():
    t_docs = {i: float(i % 2) for i in range(10)}
    m_docs = dict(t_docs)
    m_docs[0] = 1.0  # one document improved
    c = change(0.5, 0.6, target_stderr=0.16, merged_stderr=0.16, target_docs=t_docs, merged_docs=m_docs)
    assert c.value == pytest.approx(0.1) and c.stderr_method == "paired"
    assert c.stderr == pytest.approx(paired_stderr(t_docs, m_docs))
    c = change(0.5, 0.42, target_stderr=0.03, merged_stderr=0.04)
    assert c.stderr == pytest.approx(0.05) and c.stderr_method == "independent"
    assert c.regressed and not c.significant_regression  # 0.08 worse, within 2 × 0.05


def test_change_direction_and_significance():
    worse = change(0.8, 0.5, target_stderr=0.01, merged_stderr=0.01)
    assert worse.regressed and worse.significant_regression
    better_ppl = change(20.0, 15.0, higher_is_better=False, target_stderr=0.5, merged_stderr=0.5)
    assert better_ppl.value == pytest.approx(-5.0) and not better_ppl.regressed
    worse_ppl = change(20.0, 30.0, higher_is_better=False, target_stderr=0.5, merged_stderr=0.5)
    assert worse_ppl.regressed and worse_ppl.significant_regression
    unknown = change(0.5, 0.4)
    assert unknown.stderr is None and unknown.significant_regression is None and unknown.regressed
