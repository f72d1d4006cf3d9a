"""Metrics against independent computations: scikit-learn, brute force, hand-worked cases."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmarks.metrics import aupro, aupro_binned, binary_metrics, f1_max, pixel_metrics, pro_curve


def brute_aupro(masks, maps, limit=0.3):
    """Loop over every distinct threshold; regions by scipy, per image; nothing shared."""
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == k] for k in range(1, n + 1)]
    normal = np.concatenate([amap[~mask] for mask, amap in zip(masks, maps)])
    points = [(0.0, 0.0)]
    for t in sorted(set(np.concatenate([m.ravel() for m in maps])), reverse=True):
        points.append(((normal >= t).mean(), np.mean([(r >= t).mean() for r in regions])))
    area, (px, py) = 0.0, points[0]
    for x, y in points[1:]:
        if x > limit:
            y_at = py + (y - py) * (limit - px) / (x - px)
            area += (limit - px) * (py + y_at) / 2
            break
        area += (x - px) * (py + y) / 2
        px, py = x, y
    return area / limit


def test_hand_worked_aupro():
    mask = np.array([[False, False, True, True]])
    amap = np.array([[0.1, 0.4, 0.35, 0.8]])
    # curve (0,0) (0,.5) (.5,.5) (.5,1) (1,1): up to FPR .3 the PRO is .5 -> area .15 / .3 = .5
    assert aupro([mask], [amap]) == pytest.approx(0.5)
    fpr, pro = pro_curve([mask], [amap])
    assert list(fpr) == [0, 0, 0.5, 0.5, 1] and list(pro) == [0, 0.5, 0.5, 1, 1]


def test_regions_count_equally_whatever_their_size():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True  # a one-pixel region, found
    mask[3:6, 3:6] = True  # a nine-pixel region, missed
    amap = np.where(mask, 0.0, 0.5)
    amap[0, 0] = 1.0
    fpr, pro = pro_curve([mask], [amap])
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0  # one of two regions fully found, no false positive


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_brute_force_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(3):
        mask = ndimage.binary_dilation(rng.random((12, 12)) > 0.93, iterations=1)
        masks.append(mask)
        maps.append(np.round(rng.random((12, 12)) * 0.6 + mask * rng.random() * 0.5, 2))  # ties on purpose
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps), abs=1e-9)


def test_perfect_and_inverted_maps():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)
    assert aupro([mask], [(~mask).astype(float)]) == pytest.approx(0.0)
    assert np.isnan(aupro_binned([mask], [mask.astype(float)]))  # the FPR rescaling divides by zero
    graded = mask * 0.5 + np.random.default_rng(0).random((8, 8)) * 0.6
    assert 0.0 <= aupro_binned([mask], [graded]) <= 1.0


def test_image_metrics_agree_with_sklearn_and_a_hand_f1():
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.7, 0.9]
    m = binary_metrics(labels, scores)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    # best F1: threshold .4 -> tp 3, fp 1, fn 0 -> 6/7
    assert f1_max(np.array(labels), np.array(scores)) == pytest.approx(6 / 7)
    assert np.isnan(binary_metrics([1, 1], [0.2, 0.3])["auroc"])


def test_pixel_metrics_keys():
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    out = pixel_metrics([mask], [mask * 0.9 + 0.05])
    assert out["pixel_auroc"] == 1.0 and out["aupro"] == pytest.approx(1.0)
