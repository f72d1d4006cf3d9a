"""Calibration to a false-alarm target, on synthetic scores whose true rates are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.detect.calibration import (
    beta_quantile,
    binomial_tail,
    calibrate,
    clopper_pearson,
    fixed,
    images_needed,
)


def test_threshold_leaves_the_expected_share_of_good_scores_above_it():
    scores = np.linspace(0.0, 0.98, 999)  # 999 good images: j = floor(0.01 * 1000) = 10
    point = calibrate(scores, target_false_alarm=0.01)
    assert point.false_alarms == 9 and point.images == 999
    assert scores[-10] < point.threshold <= scores[-9] + 1e-12  # just above the 10th highest
    assert point.expected_false_alarm == pytest.approx(10 / 1000)
    assert point.reachable and point.target_false_alarm == 0.01
    low, high = point.false_alarm_interval
    assert low < 0.01 < high and high < 0.02


def test_false_alarm_rate_on_new_good_images_meets_the_target():
    """Repeated calibrations on fresh synthetic scores: the rate on new good parts averages the expected one."""
    rng = np.random.default_rng(0)
    rates, covered = [], 0
    for _ in range(200):
        point = calibrate(rng.beta(2, 8, 400), target_false_alarm=0.05)
        true_rate = float(np.mean(rng.beta(2, 8, 20000) >= point.threshold))
        rates.append(true_rate)
        low, high = point.false_alarm_interval
        covered += low <= true_rate <= high
    assert np.mean(rates) == pytest.approx(20 / 401, abs=0.004)  # j / (n + 1), j = floor(0.05 * 401) = 20
    assert covered / 200 >= 0.9  # a 95% interval, with sampling noise of 200 trials


def test_too_few_images_set_the_threshold_above_all_and_say_so():
    point = calibrate([0.1, 0.2, 0.3], target_false_alarm=0.01)
    assert point.threshold > 0.3 and point.false_alarms == 0
    assert point.expected_false_alarm == pytest.approx(1 / 4) and not point.reachable
    assert f"{images_needed(0.01)} good images needed" in point.describe()
    assert images_needed(0.01) == 99 and images_needed(0.05) == 19


def test_catch_rate_from_labelled_defects():
    good, bad = np.linspace(0, 0.5, 199), np.linspace(0.3, 1.0, 50)
    point = calibrate(good, 0.01, defective_scores=bad)
    assert point.defective == 50 and point.caught == int((bad >= point.threshold).sum())
    low, high = point.catch_interval
    assert low < point.caught / 50 < high
    assert "caught" in point.describe()


def test_scores_at_the_top_of_the_scale_keep_the_threshold_in_range():
    point = calibrate([1.0] * 10 + [0.2] * 90, 0.05)
    assert point.threshold == 1.0 and point.false_alarms == 10  # said, not hidden


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="false-alarm target"):
        calibrate([0.1], 0.0)
    with pytest.raises(ValueError, match="finite scores"):
        calibrate([], 0.01)
    with pytest.raises(ValueError, match="finite scores"):
        calibrate([0.1, float("nan")], 0.01)


def test_a_given_threshold_is_a_point_without_rates():
    point = fixed(0.7)
    assert point.to_dict()["threshold"] == 0.7 and point.expected_false_alarm is None
    assert point.describe() == "threshold 0.7000 (setting)"


def test_binomial_and_beta_helpers_agree_with_closed_forms():
    assert binomial_tail(1, 10, 0.1) == pytest.approx(1 - 0.9**10)
    assert beta_quantile(0.5, 1, 1) == pytest.approx(0.5, abs=1e-9)  # uniform
    assert beta_quantile(0.975, 1, 99) == pytest.approx(1 - 0.025 ** (1 / 99), abs=1e-9)  # Beta(1, b) inverts
    low, high = clopper_pearson(0, 30)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 30), abs=1e-9)
    assert clopper_pearson(30, 30)[1] == 1.0
    assert math.isclose(sum(clopper_pearson(5, 10)), 1.0, abs_tol=1e-9)  # symmetric at k = n / 2
