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
    guaranteed_rank,
    images_guaranteed,
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


def test_guarantee_needs_59_good_images_for_5_percent_at_95_and_refuses_fewer():
    assert images_guaranteed(0.05, 0.95) == 59
    assert guaranteed_rank(58, 0.05, 0.95) == 0 and guaranteed_rank(59, 0.05, 0.95) == 1
    with pytest.raises(ValueError, match=r"at least 59 good images.*58 given: give 1 more"):
        calibrate(np.linspace(0, 1, 58), 0.05, mode="guarantee")
    point = calibrate(np.linspace(0, 0.9, 59), 0.05, mode="guarantee")
    assert point.threshold > 0.9 and point.false_alarms == 0  # above every one of them
    assert (point.mode, point.confidence) == ("guarantee", 0.95)
    assert "guaranteed with 95% confidence" in point.describe()


@pytest.mark.parametrize("n", [59, 120, 400])
def test_guarantee_bounds_the_false_alarm_rate_with_the_promised_confidence(n):
    """Simulated calibrations: good scores from a known distribution (exponential, so a threshold's rate is exact:
    exp(-40 t)); in guarantee mode the rate exceeds the target in at most 5% of draws (plus binomial slack), while
    the expected mode, right on average, exceeds it in a large share of them. The many draws use the threshold's
    rule directly; that calibrate() follows the rule is checked on the first draws."""
    rng, target, draws = np.random.default_rng(7), 0.05, 20000
    scores = rng.exponential(size=(draws, n)) / 40.0
    highest_first = -np.sort(-scores, axis=1)
    j_guarantee, j_expected = guaranteed_rank(n, target, 0.95), math.floor(target * (n + 1))
    for row, top in zip(scores[:20], highest_first[:20]):
        assert calibrate(row, target, mode="guarantee").threshold == np.nextafter(top[j_guarantee - 1], np.inf)
        assert calibrate(row, target).threshold == np.nextafter(top[j_expected - 1], np.inf)
    rate_guarantee = np.exp(-40.0 * highest_first[:, j_guarantee - 1])
    rate_expected = np.exp(-40.0 * highest_first[:, j_expected - 1])
    assert np.mean(rate_guarantee > target) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / draws)
    assert np.mean(rate_expected > target) > 0.2  # why the guarantee mode exists
    assert np.mean(rate_expected) == pytest.approx(j_expected / (n + 1), abs=0.002)  # the expected mode's promise


def test_guarantee_is_as_tight_as_it_may_be():
    """The rank taken is the largest the bound allows: one more would break it."""
    for n in (59, 100, 300, 1000):
        j = guaranteed_rank(n, 0.05, 0.95)
        assert binomial_tail(j, n, 0.05) >= 0.95
        assert j == n or binomial_tail(j + 1, n, 0.05) < 0.95


def test_serve_refuses_a_guarantee_its_calibration_images_cannot_give_at_start():
    from runtime.serve.judging.teaching import Operating

    images = [np.zeros((32, 32, 3), np.uint8)] * 20
    with pytest.raises(ValueError, match=r"needs at least 59 good images.*holds 20 images"):
        Operating(images, folder="good/", target=0.05, mode="guarantee")
    with pytest.raises(ValueError, match=r"needs at least 59 good images.*teach is 30"):
        Operating(None, target=0.05, from_teach=True, teach=30, mode="guarantee")
    Operating(images, folder="good/", target=0.05)  # the expected mode takes them
