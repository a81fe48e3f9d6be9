"""Detection and localisation metrics: numpy (or torch) in, plain Python floats out.

Shape letters: B images, H, W pixels. Labels are (B,) in {0, 1} (1 = defective), image scores
(B,), masks (B, H, W) or (B, 1, H, W) in {0, 1}, anomaly maps (B, H, W); higher = more anomalous.

Decision rule everywhere: an image/pixel is predicted anomalous iff score >= threshold (the
convention of sklearn's curves). Decision thresholds come from validation *normal* images only
(`threshold_from_normals`, `conformal_threshold`), never from the test set.

Metrics that need both classes (AUROC, F1) return nan with a warning when only one is present.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

NAN = float("nan")


def to_numpy(a: Any) -> np.ndarray:
    """Convert a torch tensor / list / array to a numpy array (tensors are detached and moved to CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if a.is_floating_point():
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def _labels_scores(labels: Any, scores: Any) -> Tuple[np.ndarray, np.ndarray]:
    y = to_numpy(labels).astype(np.int64).ravel()
    s = to_numpy(scores).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) must have the same length")
    return y, s


def _both_classes(y: np.ndarray, what: str) -> bool:
    if np.unique(y).size < 2:
        warnings.warn(f"{what}: only one class present in the labels; returning nan", stacklevel=3)
        return False
    return True


def _masks_maps(masks: Any, maps: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Binary (B, H, W) masks and float (B, H, W) maps, with a clear error on a size mismatch."""
    m = to_numpy(masks)
    a = to_numpy(maps).astype(np.float64)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]  # (B, 1, H, W) -> (B, H, W)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if m.shape != a.shape:
        raise ValueError(
            f"masks {m.shape} and maps {a.shape} differ in shape; resize the maps to the mask size "
            "first (transgan_lib.detection.maps.resize_maps)"
        )
    return m > 0.5, a


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level ROC AUC (sklearn). nan (with a warning) if only one class is present."""
    y, s = _labels_scores(labels, scores)
    if not _both_classes(y, "image_auroc"):
        return NAN
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level ROC AUC over all images and pixels flattened together. nan if one class."""
    m, a = _masks_maps(masks, maps)
    y = m.ravel().astype(np.int64)
    if not _both_classes(y, "pixel_auroc"):
        return NAN
    return float(roc_auc_score(y, a.ravel()))


def _label_regions(masks: np.ndarray) -> list:
    """Flat pixel indices of every 8-connected ground-truth region, over all images."""
    structure = np.ones((3, 3), dtype=int)
    regions = []
    flat_offset = 0
    for mask in masks:
        labelled, n = ndimage.label(mask, structure=structure)
        if n:
            flat = labelled.ravel()
            order = np.argsort(flat, kind="stable")
            bounds = np.searchsorted(flat[order], np.arange(1, n + 2))
            regions += [order[bounds[i]:bounds[i + 1]] + flat_offset for i in range(n)]
        flat_offset += mask.size
    return regions


def _pro_thresholds(normal_sorted: np.ndarray, max_fpr: float, num_thresholds: int) -> np.ndarray:
    """Thresholds at quantiles of the normal-pixel scores: dense over FPR in [0, max_fpr], a few
    beyond it (so the curve can be interpolated at max_fpr), plus the FPR = 0 and FPR = 1 ends."""
    n = normal_sorted.size
    target_fpr = np.concatenate([
        np.linspace(0.0, max_fpr, num_thresholds),
        np.linspace(max_fpr, 1.0, max(num_thresholds // 10, 2)),
    ])
    # score >= normal_sorted[k] flags n - k normal pixels (up to ties), i.e. FPR ~ (n - k) / n.
    k = np.clip(np.ceil((1.0 - target_fpr) * n).astype(np.int64), 0, n - 1)
    # The two adjacent normal scores whose FPRs straddle max_fpr, so the interpolation at
    # max_fpr is exact to one normal pixel: t_past = normal_sorted[n - m - 1] is the largest
    # score flagging more than m = floor(max_fpr * n) normals; +-1 on m guards float rounding.
    m = int(np.floor(max_fpr * n)) + np.arange(-1, 2)
    past = normal_sorted[np.clip(n - m - 1, 0, n - 1)]
    next_up = np.searchsorted(normal_sorted, past, side="right")
    straddle = np.concatenate([past, normal_sorted[next_up[next_up < n]]])
    above_max = np.nextafter(normal_sorted[-1], np.inf)  # nothing normal flagged: FPR = 0
    return np.unique(np.concatenate([normal_sorted[k], straddle, [above_max, -np.inf]]))


def pro_curve(masks: Any, maps: Any, max_fpr: float = 0.3, num_thresholds: int = 200) -> Tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve: (fpr, pro) arrays sorted by increasing FPR (ties by PRO).

    See `aupro` for the definitions. Empty arrays if the masks hold no region.
    """
    m, a = _masks_maps(masks, maps)
    regions = _label_regions(m)
    normal_sorted = np.sort(a[~m])
    if not regions or normal_sorted.size == 0:
        return np.empty(0), np.empty(0)
    thresholds = _pro_thresholds(normal_sorted, max_fpr, num_thresholds)  # (T,) ascending
    flat = a.ravel()

    # FPR(t) = #normal pixels with score >= t / #normal pixels.
    fpr = 1.0 - np.searchsorted(normal_sorted, thresholds, side="left") / normal_sorted.size
    # PRO(t) = mean over regions of the fraction of the region's pixels with score >= t.
    pro = np.zeros_like(thresholds)
    for idx in regions:
        region_sorted = np.sort(flat[idx])
        pro += 1.0 - np.searchsorted(region_sorted, thresholds, side="left") / region_sorted.size
    pro /= len(regions)
    order = np.lexsort((pro, fpr))
    return fpr[order], pro[order]


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to `max_fpr` (Bergmann et al. 2021).

    Regions are the 8-connected components of each ground-truth mask. For a threshold t,
    PRO = mean over all regions of |{score >= t} ∩ region| / |region|, and
    FPR = normal pixels with score >= t / all normal pixels (pixels outside every mask, over
    all images including the good ones). PRO is integrated over FPR in [0, max_fpr]
    (trapezoid, the curve interpolated linearly at exactly max_fpr) and divided by max_fpr, so
    a perfect map scores 1.0. Thresholds are quantiles of the normal-pixel scores (dense below
    max_fpr; FPR resolution max_fpr / num_thresholds); each point of the curve is exact.

    Args:
        masks: (B, H, W) or (B, 1, H, W) binary ground truth.
        maps: (B, H, W) anomaly maps at the mask resolution.
    Returns:
        float in [0, 1]; nan (with a warning) if the masks hold no region or no normal pixel.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps, max_fpr, num_thresholds)
    if fpr.size == 0:
        warnings.warn("aupro: no anomalous region (or no normal pixel) in the masks; returning nan", stacklevel=2)
        return NAN
    inside = fpr <= max_fpr
    x, y = fpr[inside], pro[inside]
    if x[-1] < max_fpr:
        # First point beyond max_fpr exists because the curve always ends at FPR = 1.
        j = np.argmax(fpr > max_fpr)
        x0, y0, x1, y1 = fpr[j - 1], pro[j - 1], fpr[j], pro[j]
        x = np.append(x, max_fpr)
        y = np.append(y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return float(trapezoid(y, x) / max_fpr)


def f1_max(labels: Any, scores: Any) -> Tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (positive iff score >= threshold).

    An oracle figure: the threshold is chosen on the very labels it is scored against; report it
    beside the F1 at a threshold from validation normals (`classification_at_threshold`).
    Returns (nan, nan) with a warning if only one class is present.
    """
    y, s = _labels_scores(labels, scores)
    if not _both_classes(y, "f1_max"):
        return NAN, NAN
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def conformal_threshold(normal_scores: Any, fpr_target: float) -> Tuple[float, float]:
    """Split-conformal decision threshold from n calibration-normal scores that no choice was made on.

    The k-th smallest score, k = ceil((n + 1)(1 - fpr_target)): a new normal exchangeable with the
    calibration normals scores at or above it with probability (n + 1 - k) / (n + 1) <= fpr_target.
    When n is too small for the target (k > n), the largest score, whose bound 1 / (n + 1) is then
    above the target: hold apart at least 1 / fpr_target - 1 normals to reach it.

    Returns:
        (threshold, bound): predict anomalous iff score >= threshold; bound, the false-positive rate
        on exchangeable new normals it holds in expectation.
    """
    s = np.sort(to_numpy(normal_scores).astype(np.float64).ravel())
    if s.size == 0:
        raise ValueError("conformal_threshold needs at least one calibration normal score, got none")
    if not 0.0 < fpr_target < 1.0:
        raise ValueError(f"fpr_target must be in (0, 1), got {fpr_target}")
    n = s.size
    k = min(int(np.ceil((n + 1) * (1.0 - fpr_target) - 1e-9)), n)  # 1e-9: (n+1)(1-t) exact in reals
    return float(s[k - 1]), (n + 1 - k) / (n + 1)


def normals_needed(fpr_target: float) -> int:
    """The fewest calibration normals whose conformal bound reaches `fpr_target`."""
    return int(np.ceil(1.0 / fpr_target - 1.0 - 1e-9))


def threshold_from_normals(normal_scores: Any, rule: str = "percentile", q: float = 99.0, k: float = 3.0,
                           fpr_target: float = 0.05) -> float:
    """Decision threshold from the scores of *validation normal images only*.

    Never pass test-set scores here: a threshold tuned on the test set makes the reported
    accuracy/F1 optimistic.

    Args:
        normal_scores: (M,) scores of held-out normal images.
        rule: "percentile" -> the q-th percentile; "mean_std" -> mean + k * std (population std);
            "conformal" -> `conformal_threshold` at `fpr_target`.
    Returns:
        float threshold; predict anomalous iff score >= threshold.
    """
    s = to_numpy(normal_scores).astype(np.float64).ravel()
    if s.size == 0:
        raise ValueError("threshold_from_normals needs at least one validation normal score, got none")
    if rule == "percentile":
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile q must be in [0, 100], got {q}")
        return float(np.percentile(s, q))
    if rule == "mean_std":
        return float(s.mean() + k * s.std())
    if rule == "conformal":
        return conformal_threshold(s, fpr_target)[0]
    raise ValueError(f"unknown threshold rule {rule!r}; choose 'percentile', 'mean_std' or 'conformal'")


def classification_at_threshold(labels: Any, scores: Any, threshold: float) -> Dict[str, float]:
    """Accuracy, precision, recall, F1 and FPR of the decision score >= threshold.

    Precision/recall/F1 are 0.0 when undefined (no predicted / actual positive); FPR is nan
    when there is no negative.
    """
    y, s = _labels_scores(labels, scores)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((tp + tn) / max(y.size, 1)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "fpr": float(fp / (fp + tn)) if fp + tn else NAN,
    }


def _subset_metrics(y, s, m, a, threshold: Optional[float] = None) -> Dict[str, Optional[float]]:
    has_pixels = m is not None and a is not None
    out = {
        "image_auroc": image_auroc(y, s),
        "pixel_auroc": pixel_auroc(m, a) if has_pixels else None,
        "aupro": aupro(m, a) if has_pixels else None,
        "image_f1_max": f1_max(y, s)[0],
    }
    if threshold is not None:
        out["image_f1_at_threshold"] = classification_at_threshold(y, s, threshold)["f1"]
    return out


def compute_metrics(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    defects: Optional[Sequence[str]] = None,
    threshold: Optional[float] = None,
) -> Dict[str, Any]:
    """All metrics of one test set, as a dict of plain floats (nan where undefined; `utils.to_json` writes
    it as null). A test set of one class gets "unavailable": {metric: reason} and no warning per metric.

    Args:
        labels: (B,) 1 = defective. scores: (B,) image scores.
        masks, maps: (B, H, W) ground truth and anomaly maps at the same size; pixel metrics
            are None when either is missing.
        defects: (B,) defect type per image (any name for good images; good = label 0).
        threshold: a decision threshold from validation normals (`threshold_from_normals`).
    Returns:
        {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", ["image_f1_at_threshold",
         "threshold", "at_threshold"], "per_defect": {type: {image_auroc, pixel_auroc, aupro,
         image_f1_max, [image_f1_at_threshold], n}}, "n_test"}.
        "image_f1_max" is the F1 at the best threshold *on this test set*: an oracle figure, no
        detector can choose that threshold. "image_f1_at_threshold" (= at_threshold["f1"]) is the
        F1 at the given validation threshold: the one a deployed detector reaches.
        Per-defect metrics use the good test images plus that type's images; n counts that
        type's images.
    """
    y, s = _labels_scores(labels, scores)
    m = a = None
    if masks is not None and maps is not None:
        m, a = _masks_maps(masks, maps)
        if m.shape[0] != y.size:
            raise ValueError(f"{m.shape[0]} masks/maps but {y.size} labels")
    reason = single_class_reason(y)
    with warnings.catch_warnings():
        if reason:  # said once, in "unavailable", instead of one warning per metric
            warnings.simplefilter("ignore")
        result: Dict[str, Any] = _compute(y, s, m, a, defects, threshold)
    if reason:
        result["unavailable"] = {k: reason for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
                                 if result.get(k) is not None and np.isnan(result[k])}
    return result


def single_class_reason(labels: Any) -> str:
    """Why AUROC, AUPRO and F1 cannot be computed on these labels ("" when both classes are there)."""
    y = to_numpy(labels).ravel()
    if np.unique(y).size >= 2:
        return ""
    only = "defective" if y.size and y.max() > 0 else "good"
    return (f"the test set holds only {only} images ({y.size}): AUROC, AUPRO and F1 need both good and "
            "defective test images")


def _compute(y, s, m, a, defects, threshold) -> Dict[str, Any]:
    result: Dict[str, Any] = _subset_metrics(y, s, m, a, threshold)
    if threshold is not None:
        result["threshold"] = float(threshold)
        result["at_threshold"] = classification_at_threshold(y, s, threshold)
    per_defect: Dict[str, Dict[str, Any]] = {}
    if defects is not None:
        d = np.asarray([str(v) for v in defects])
        if d.size != y.size:
            raise ValueError(f"{d.size} defect names but {y.size} labels")
        good = y == 0
        for name in sorted(set(d[y == 1])):
            keep = good | ((d == name) & (y == 1))
            sub = _subset_metrics(y[keep], s[keep], None if m is None else m[keep], None if a is None else a[keep],
                                  threshold)
            sub["n"] = int(np.sum((d == name) & (y == 1)))
            per_defect[name] = sub
    result["per_defect"] = per_defect
    result["n_test"] = int(y.size)
    return result


SEED_SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def summarize_seeds(runs: Sequence[Dict[str, Any]], keys: Sequence[str] = SEED_SUMMARY_KEYS) -> Dict[str, Any]:
    """Mean and spread of metrics over runs that differ only by their seed.

    Args:
        runs: one metrics dict per seed (metrics.json), each with `keys` and optionally
            "baselines" {name: {key: value}}.
    Returns:
        {"n_seeds", key: {"mean", "std" (sample std, ddof=1; 0 for one run), "min", "max",
         "values"}, ..., "baselines": {name: {key: {...}}}}.
    """
    def stats(values):
        v = np.asarray([np.nan if x is None else float(x) for x in values], dtype=np.float64)
        return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
                "min": float(np.min(v)), "max": float(np.max(v)), "values": v.tolist()}

    out: Dict[str, Any] = {"n_seeds": len(runs)}
    out.update({k: stats([r.get(k) for r in runs]) for k in keys})
    names = sorted(set.intersection(*(set(r.get("baselines") or {}) for r in runs))) if runs else []
    out["baselines"] = {n: {k: stats([r["baselines"][n].get(k) for r in runs]) for k in keys} for n in names}
    return out


def roc_points(labels: Any, scores: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) arrays of the image-level ROC curve, for plots."""
    y, s = _labels_scores(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr
