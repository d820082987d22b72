"""Paired statistics of the report against hand-computed values and scipy's own routines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from deepcuts.analysis.stats import (
    bootstrap_interval,
    count_wins,
    higher_is_better,
    paired,
    t_halfwidth,
    t_interval,
)

COVERS = "the 95% interval covers 0"


def test_t_interval_by_hand_and_against_scipy():
    # mean 0.02, s = 0.01, t_{0.975, 2} = 4.302652729911275: 0.02 ± 4.3027 * 0.01 / sqrt(3)
    low, high = t_interval([0.01, 0.02, 0.03])
    assert low == pytest.approx(-0.0048413771175033, abs=1e-12)
    assert high == pytest.approx(0.0448413771175033, abs=1e-12)
    # two seeds: t_{0.975, 1} = 12.706204736174698, s = 0.04 / sqrt(2)
    low, high = t_interval([0.01, 0.05])
    assert (low, high) == pytest.approx((0.03 - 12.706204736174698 * 0.02,
                                         0.03 + 12.706204736174698 * 0.02), abs=1e-12)
    d = np.array([0.004, -0.012, 0.031, 0.018, 0.007, -0.003])
    ref = st.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=st.sem(d))
    assert t_interval(d) == pytest.approx(ref, abs=1e-12)
    assert t_halfwidth(float(d.std(ddof=1)), len(d)) == pytest.approx((ref[1] - ref[0]) / 2)


def test_intervals_need_two_values():
    assert all(math.isnan(v) for v in (*t_interval([0.3]), *bootstrap_interval([0.3])))
    assert math.isnan(t_halfwidth(0.1, 1)) and math.isnan(t_halfwidth(math.nan, 4))


def test_bootstrap_by_hand():
    # with 3 values, the all-minimum (all-maximum) resample has probability 1/27 = 3.7% > 2.5%,
    # so the 2.5th and 97.5th percentiles of 10,000 resampled means are the extremes exactly
    assert bootstrap_interval([0.01, 0.02, 0.03]) == pytest.approx((0.01, 0.03), abs=1e-15)
    assert bootstrap_interval([0.05, 0.01]) == pytest.approx((0.01, 0.05), abs=1e-15)
    assert bootstrap_interval([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2), abs=1e-15)


def test_bootstrap_matches_scipy_seeded_percentile_bootstrap():
    d = np.array([0.004, -0.012, 0.031, 0.018, 0.007, -0.003])
    ref = st.bootstrap((d,), np.mean, n_resamples=10_000, method="percentile",
                       confidence_level=0.95, rng=np.random.default_rng(0)).confidence_interval
    ours = bootstrap_interval(d)
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-15)
    assert ours == bootstrap_interval(list(d))  # reproducible: a fresh generator seeded 0
    assert bootstrap_interval(d, seed=1) != ours  # the seed is really used
    assert ours[0] > -0.012 and ours[1] < 0.031  # narrower than the range with 6 values


def test_wins_are_strict_and_follow_the_metric_direction():
    diffs = [0.01, 0.0, -0.02, 0.03, float("nan")]
    assert count_wins(diffs, higher_better=True) == 2
    assert count_wins(diffs, higher_better=False) == 1
    assert higher_is_better("pearson") and higher_is_better("mcc") and higher_is_better("acc")
    assert not higher_is_better("mse") and not higher_is_better("loss")
    assert not higher_is_better("pearson", "min") and higher_is_better("mse", "max")


def test_paired_uses_only_common_seeds():
    method = {0: 0.80, 1: 0.82, 2: 0.81, 5: 0.90}
    baseline = {0: 0.78, 1: 0.80, 2: 0.805, 3: 0.70, 4: float("nan")}
    p = paired(method, baseline)
    assert p.seeds == [0, 1, 2] and p.unpaired == [3, 4, 5] and p.n == 3
    assert p.diffs == pytest.approx([0.02, 0.02, 0.005])
    assert p.mean == pytest.approx(0.015)
    assert (p.t_low, p.t_high) == pytest.approx(t_interval([0.02, 0.02, 0.005]))
    assert (p.boot_low, p.boot_high) == pytest.approx((0.005, 0.02))
    assert p.wins == 3


def test_verdict_says_covers_zero_exactly_when_an_interval_does():
    covers = paired({s: 0.8 + d for s, d in enumerate([0.01, -0.02, 0.015, -0.005, 0.0])},
                    dict.fromkeys(range(5), 0.8))
    assert covers.t_low < 0 < covers.t_high and covers.boot_low < 0 < covers.boot_high
    assert covers.covers_zero is True
    assert covers.verdict("smoothgrad", "layer_mag_grad") == (
        "the 95% interval covers 0: no difference detected with 5 seeds")

    clear = paired({s: 0.8 + d for s, d in enumerate([0.02, 0.03, 0.025, 0.035, 0.03])},
                   dict.fromkeys(range(5), 0.8))
    assert clear.t_low > 0 and clear.covers_zero is False
    text = clear.verdict("smoothgrad", "layer_mag_grad")
    assert COVERS not in text
    assert text == ("the 95% interval excludes 0: smoothgrad better than layer_mag_grad "
                    "with 5 seeds")

    # lower-is-better metric: a lower mse is a win and "better"
    mse = paired({0: 0.50, 1: 0.52, 2: 0.49}, {0: 0.60, 1: 0.61, 2: 0.62}, higher_better=False)
    assert mse.wins == 3 and mse.mean < 0 and "smoothgrad better than" in mse.verdict("smoothgrad")

    # 3 seeds: the bootstrap interval [0.01, 0.03] excludes 0, the t-interval does not
    split = paired({0: 0.81, 1: 0.82, 2: 0.83}, {0: 0.8, 1: 0.8, 2: 0.8})
    assert split.boot_low > 0 > split.t_low and split.covers_zero is True
    assert split.verdict().startswith(COVERS + ": no difference detected with 3 seeds")


def test_fewer_than_two_pairs_have_no_interval():
    one = paired({0: 0.9, 1: 0.8}, {0: 0.7})
    assert one.n == 1 and one.wins == 1 and one.mean == pytest.approx(0.2)
    assert math.isnan(one.t_low) and math.isnan(one.boot_low) and one.covers_zero is None
    assert "no interval" in one.verdict() and COVERS not in one.verdict()
    none = paired({0: 0.9}, {1: 0.7})
    assert none.n == 0 and math.isnan(none.mean) and "not paired" in none.verdict()
