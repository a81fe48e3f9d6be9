"""Metrics against hand-computed values."""
import inspect
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

from transgan_lib.metrics import (
    aupro,
    classification_at_threshold,
    compute_metrics,
    conformal_threshold,
    f1_max,
    image_auroc,
    normals_needed,
    pixel_auroc,
    pro_curve,
    roc_points,
    threshold_from_normals,
)


def test_image_auroc_hand_example():
    # Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8 beats both -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_image_auroc_accepts_torch():
    assert image_auroc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_f1_max_hand_example():
    # score >= t: t=0.9 F1=.5; t=0.7 F1=.4; t=0.6 F1=2/3; t=0.3 P=3/4 R=1 F1=6/7; t=0.1 F1=.75.
    f1, thr = f1_max([0, 1, 1, 0, 1], [0.1, 0.9, 0.6, 0.7, 0.3])
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.3)


def test_pixel_auroc_hand_example():
    masks = np.array([[[1, 0], [0, 0]]])
    maps = np.array([[[0.5, 0.6], [0.1, 0.2]]])
    # The one positive (0.5) beats 0.1 and 0.2 but not 0.6 -> 2/3.
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)
    # (B, 1, H, W) masks work too.
    assert pixel_auroc(masks[:, None], maps) == pytest.approx(2 / 3)


def test_pixel_auroc_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="resize_maps"):
        pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 8, 8)))


def test_single_class_gives_nan_with_warning():
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(image_auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(pixel_auroc(np.zeros((2, 3, 3)), np.random.rand(2, 3, 3)))
    with pytest.warns(UserWarning, match="one class"):
        f1, thr = f1_max([0, 0], [0.1, 0.2])
    assert math.isnan(f1) and math.isnan(thr)
    with pytest.warns(UserWarning, match="no anomalous region"):
        assert math.isnan(aupro(np.zeros((2, 3, 3)), np.random.rand(2, 3, 3)))


# ---------------------------------------------------------------- AUPRO
def _two_region_masks():
    masks = np.zeros((2, 8, 8))
    masks[0, 1:3, 1:3] = 1  # region A: 4 pixels
    masks[1, 2:6, 3:6] = 1  # region B: 12 pixels
    return masks


def test_aupro_perfect_map_is_one():
    masks = _two_region_masks()
    assert aupro(masks, masks.copy()) == pytest.approx(1.0)


def test_aupro_one_of_two_regions_weights_regions_equally():
    rng = np.random.default_rng(0)
    masks = _two_region_masks()
    maps = rng.uniform(0.0, 0.5, size=masks.shape)  # normal pixels spread over [0, 0.5)
    maps[0, 1:3, 1:3] = 1.0  # region A: above every normal pixel (found at FPR 0)
    maps[1, 2:6, 3:6] = -1.0  # region B: below every normal pixel (only found at FPR 1)
    # PRO = 0.5 for every FPR < 1 although A holds only 4/16 of the anomalous pixels.
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 6, 6))
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = 1  # (1, 2) touches (0, 1) diagonally
    maps = np.zeros((1, 6, 6))
    maps[0, 0, 0] = maps[0, 0, 1] = 1.0
    maps[0, 1, 2] = -1.0
    # One region with 2/3 detected (4-connectivity would give two regions -> 0.5).
    assert aupro(masks, maps) == pytest.approx(2 / 3)


def _known_curve_case():
    """Image 0: 100 normal pixels with scores 0.00 .. 0.99. Image 1: one region (whole image),
    half its pixels at 2.0 (above every normal), half tied with the normal score 0.90.

    Curve: PRO 0.5 for FPR in [0, 0.09] (t >= 0.91), PRO 1 from FPR 0.10 (t = 0.90) on.
    """
    normal = (np.arange(100) / 100).reshape(10, 10)
    region = np.full((10, 10), 2.0)
    region[5:] = normal[9, 0]  # exactly the float 0.90
    masks = np.stack([np.zeros((10, 10)), np.ones((10, 10))])
    return masks, np.stack([normal, region])


def test_aupro_known_pro_at_known_fpr():
    masks, maps = _known_curve_case()
    fpr, pro = pro_curve(masks, maps)
    assert pro[np.isclose(fpr, 0.09)].max() == pytest.approx(0.5)
    assert pro[np.isclose(fpr, 0.10)].max() == pytest.approx(1.0)
    # Area on [0, 0.3]: 0.09 * 0.5 + 0.01 * (0.5 + 1) / 2 + 0.2 * 1 = 0.2525.
    assert aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.2525 / 0.3)


def test_aupro_respects_max_fpr_and_interpolates_at_it():
    masks, maps = _known_curve_case()
    # Before the jump only PRO 0.5 is seen.
    assert aupro(masks, maps, max_fpr=0.05) == pytest.approx(0.5)
    # Cut in the middle of the ramp: PRO(0.095) = 0.75 by linear interpolation.
    expected = (0.09 * 0.5 + 0.005 * (0.5 + 0.75) / 2) / 0.095
    assert aupro(masks, maps, max_fpr=0.095) == pytest.approx(expected)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx((0.045 + 0.0075 + 0.9) / 1.0)


def _brute_force_aupro(masks, maps, max_fpr):
    """Reference: every unique score as a threshold, plain loops."""
    from scipy import ndimage

    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in np.unique(maps):
        fpr = np.mean(normal >= t)
        pro = np.mean([np.mean(maps[i][r] >= t) for i, r in regions])
        points.append((fpr, pro))
    points.sort()
    x, y = np.array(points).T
    xs = np.linspace(0, max_fpr, 20001)
    # Upper envelope at each x (vertical jumps) is irrelevant for the area.
    return trapezoid(np.interp(xs, x, y), xs) / max_fpr


def test_aupro_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 24, 24))
    masks[0, 2:8, 2:8] = 1
    masks[0, 15:18, 10:20] = 1
    masks[1, 5:20, 5:7] = 1
    masks[3, 10:14, 10:14] = 1  # image 2 is good
    maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.uniform(0, 1, size=masks.shape)
    for max_fpr in (0.05, 0.3):
        assert aupro(masks, maps, max_fpr=max_fpr, num_thresholds=400) == pytest.approx(
            _brute_force_aupro(masks, maps, max_fpr), abs=0.01
        )


# ---------------------------------------------------------------- thresholds
def test_threshold_from_normals_percentile_and_mean_std():
    normals = np.arange(1, 101, dtype=float)
    # Linear interpolation at position 0.99 * 99 = 98.01 -> 99 + 0.01.
    assert threshold_from_normals(normals, q=99.0) == pytest.approx(99.01)
    # mean 3, population std sqrt(2).
    assert threshold_from_normals([1, 2, 3, 4, 5], rule="mean_std", k=3) == pytest.approx(3 + 3 * math.sqrt(2))
    with pytest.raises(ValueError, match="rule"):
        threshold_from_normals(normals, rule="best_f1")
    with pytest.raises(ValueError, match="at least one"):
        threshold_from_normals([])


def test_threshold_from_normals_sees_only_the_normals():
    params = list(inspect.signature(threshold_from_normals).parameters)
    assert params == ["normal_scores", "rule", "q", "k", "fpr_target"]  # no labels / test scores can be passed
    normals = np.random.default_rng(0).normal(size=50)
    assert threshold_from_normals(normals) == threshold_from_normals(normals[::-1])


def test_conformal_threshold_is_the_order_statistic_its_bound_names():
    normals = np.arange(1, 200, dtype=float)[::-1]  # n = 199, unsorted
    # k = ceil(200 * 0.95) = 190: the 190th smallest; a new normal ranks above it with probability 10 / 200.
    assert conformal_threshold(normals, 0.05) == (190.0, pytest.approx(0.05))
    assert conformal_threshold(np.arange(1, 100), 0.01) == (99.0, pytest.approx(0.01))  # (n+1)(1-t) exact: k = n
    # too few normals for the target: their largest, and the bound the count supports (1/21 > 1 %)
    assert conformal_threshold(np.arange(1, 21), 0.01) == (20.0, pytest.approx(1 / 21))
    assert threshold_from_normals(normals, rule="conformal", fpr_target=0.05) == 190.0
    assert normals_needed(0.05) == 19 and normals_needed(0.01) == 99
    with pytest.raises(ValueError, match="fpr_target"):
        conformal_threshold(normals, 0.0)


def test_conformal_threshold_holds_its_bound_on_exchangeable_normals():
    # The guarantee itself: over many draws, new normals from the same distribution are flagged at the bound.
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(2000):
        cal, new = rng.lognormal(size=20), rng.lognormal(size=50)
        threshold, bound = conformal_threshold(cal, 0.1)
        flagged.append((new >= threshold).mean())
    assert bound == pytest.approx(2 / 21)  # k = ceil(21 * 0.9) = 19
    assert np.mean(flagged) == pytest.approx(bound, abs=0.01)


def test_classification_at_threshold_hand_example():
    # score >= 0.4 -> predictions [0, 1, 1, 1]: TP 2, FP 1, TN 1, FN 0.
    out = classification_at_threshold([0, 0, 1, 1], [0.1, 0.5, 0.4, 0.8], 0.4)
    assert out == pytest.approx({"accuracy": 0.75, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "fpr": 0.5})


# ---------------------------------------------------------------- compute_metrics
def _small_test_set():
    labels = [0, 0, 0, 1, 1, 1, 1]
    defects = ["good", "good", "good", "crack", "crack", "hole", "hole"]
    scores = [0.1, 0.2, 0.3, 0.9, 0.25, 0.5, 0.6]
    return labels, defects, scores


def test_compute_metrics_keys_and_per_defect():
    labels, defects, scores = _small_test_set()
    out = compute_metrics(labels, scores, defects=defects, threshold=0.45)
    assert set(out) == {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_f1_at_threshold", "threshold",
                        "at_threshold", "per_defect", "n_test"}
    # Positives beat 3, 2, 3, 3 of the 3 negatives -> 11/12.
    assert out["image_auroc"] == pytest.approx(11 / 12)
    assert out["pixel_auroc"] is None and out["aupro"] is None
    assert out["n_test"] == 7
    assert set(out["per_defect"]) == {"crack", "hole"}
    assert out["per_defect"]["crack"]["image_auroc"] == pytest.approx(5 / 6)
    assert out["per_defect"]["hole"]["image_auroc"] == pytest.approx(1.0)
    assert out["per_defect"]["crack"]["n"] == 2
    # The given threshold is used as is (not re-tuned on the test set): >= 0.45 flags 0.9, 0.5, 0.6.
    assert out["threshold"] == 0.45
    assert out["at_threshold"]["recall"] == pytest.approx(3 / 4)
    assert out["at_threshold"]["fpr"] == pytest.approx(0.0)
    json.dumps(out)


def test_f1_at_the_validation_threshold_beside_the_oracle_f1_max():
    labels, defects, scores = _small_test_set()
    out = compute_metrics(labels, scores, defects=defects, threshold=0.45)
    # >= 0.45 flags 0.9, 0.5, 0.6: TP 3, FP 0, FN 1 -> precision 1, recall 3/4, F1 6/7.
    assert out["image_f1_at_threshold"] == out["at_threshold"]["f1"] == pytest.approx(6 / 7)
    # The oracle picks 0.25 on the test set itself: TP 4, FP 1 (0.3) -> F1 8/9, above 6/7.
    assert out["image_f1_max"] == pytest.approx(8 / 9)
    # Per defect, the same validation threshold: crack 0.9 found, 0.25 missed -> F1 2/3; hole both -> 1.
    assert out["per_defect"]["crack"]["image_f1_at_threshold"] == pytest.approx(2 / 3)
    assert out["per_defect"]["hole"]["image_f1_at_threshold"] == pytest.approx(1.0)
    assert "image_f1_at_threshold" not in compute_metrics(labels, scores)  # no threshold, no such F1


def test_compute_metrics_pixel_metrics_and_types():
    labels, defects, scores = _small_test_set()
    masks = np.zeros((7, 8, 8))
    masks[3:, 2:5, 2:5] = 1
    maps = torch.from_numpy(masks * 2.0 + np.random.default_rng(0).uniform(size=masks.shape)).float()
    out = compute_metrics(torch.tensor(labels), torch.tensor(scores), masks=masks[:, None], maps=maps,
                          defects=defects)
    assert "threshold" not in out and "at_threshold" not in out
    assert out["pixel_auroc"] == pytest.approx(1.0) and out["aupro"] == pytest.approx(1.0)
    for key in ("pixel_auroc", "aupro"):
        assert out["per_defect"]["hole"][key] == pytest.approx(1.0)
    for value in (out["image_auroc"], out["pixel_auroc"], out["aupro"], out["image_f1_max"]):
        assert type(value) is float
    json.dumps(out)


def test_compute_metrics_single_class_stays_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(out["image_auroc"]) and math.isnan(out["image_f1_max"])
    assert out["per_defect"] == {}


def test_roc_points():
    fpr, tpr = roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr[0] == 0 and tpr[-1] == 1 and trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_summarize_seeds_mean_and_sample_std():
    from transgan_lib.metrics import summarize_seeds
    runs = [{"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.5, "image_f1_max": 0.7,
             "baselines": {"patch_nn": {"image_auroc": 0.95, "pixel_auroc": 0.9, "aupro": 0.6, "image_f1_max": 0.9}}},
            {"image_auroc": 0.7, "pixel_auroc": 0.8, "aupro": 0.3, "image_f1_max": 0.5,
             "baselines": {"patch_nn": {"image_auroc": 0.97, "pixel_auroc": 0.9, "aupro": 0.6, "image_f1_max": 0.9}}}]
    s = summarize_seeds(runs)
    assert s["n_seeds"] == 2
    assert s["image_auroc"]["mean"] == pytest.approx(0.8)
    assert s["image_auroc"]["std"] == pytest.approx(0.1414213, abs=1e-6)
    assert s["pixel_auroc"]["std"] == 0.0 and s["aupro"]["min"] == 0.3 and s["aupro"]["max"] == 0.5
    assert s["baselines"]["patch_nn"]["image_auroc"]["mean"] == pytest.approx(0.96)
    assert summarize_seeds(runs[:1])["image_auroc"]["std"] == 0.0
