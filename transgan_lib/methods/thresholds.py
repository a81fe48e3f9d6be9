"""The decision threshold of an evaluated run: the rule of its `MappingConfig` (conformal with a stated
false-positive target, or a percentile) on calibration normals, which are the validation normals or the
images of `calibration_dir`, held apart from every split and mapped here with the run's settings."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from scipy.stats import beta

from ..config import ConfigError, MappingConfig
from ..data.images import images_under, load_image
from ..data.mvtec import DatasetError
from ..metrics import conformal_threshold, normals_needed, threshold_from_normals
from ..runs import RunPaths, file_fingerprint
from ..utils import resolve_device
from .detectors import detect, detector_file, load_detector
from .transgan.encoder import load_encoder
from .transgan.mapping import MappingResult
from .transgan.mapping_file import MappingRun


def rule_of(threshold_rule: Optional[str], threshold_q: Optional[float]) -> Optional[str]:
    """The rule `evaluate` was given: `threshold_q` alone keeps its old meaning, the percentile rule;
    ConfigError when a percentile other than the default comes with the conformal rule, which ignores it."""
    if threshold_q is not None and threshold_rule is None:
        return "percentile"
    if threshold_rule == "conformal" and threshold_q not in (None, MappingConfig.threshold_q):
        raise ConfigError(f"threshold_q {threshold_q:g} sets the 'percentile' rule, but threshold_rule is 'conformal' "
                          "(its target is fpr_target): pass threshold_rule 'percentile' with it, or fpr_target")
    return threshold_rule


def decision_threshold(normal_scores, config: MappingConfig) -> float:
    """The decision threshold of `config`'s rule from calibration-normal scores (M,) (`metrics`)."""
    return threshold_from_normals(normal_scores, rule=config.threshold_rule, q=config.threshold_q,
                                  fpr_target=config.fpr_target)


def fpr_quantile(n: int, fpr_target: float, prob: float = 0.9) -> float:
    """The false-positive rate on new good images that the conformal threshold of n calibration normals stays
    under with probability `prob` over the draw of those normals: the rate is Beta(n + 1 - k, k) distributed
    for continuous scores (k: `conformal_threshold`'s order statistic), so few normals spread it widely."""
    k = int(conformal_threshold(np.arange(n), fpr_target)[0]) + 1  # the k-th smallest of 0 .. n-1 is k - 1
    return float(beta.ppf(prob, n + 1 - k, k))


def threshold_record(config: MappingConfig, n: int) -> Dict[str, Any]:
    """metrics.json's account of the decision threshold: "threshold_rule" (text) and "threshold_calibration"
    (rule, FPR target, the bound the calibration count supports, the normals it was set on); a printed
    note when the count is too small for the target."""
    held_apart = config.calibration_dir is not None
    normals = (f"{n} images of {config.calibration_dir}, apart from every split (no choice made on them)"
               if held_apart else f"the {n} validation normals (the map was also chosen on them)")
    record = {"rule": config.threshold_rule, "n": n, "held_apart": held_apart, "normals": normals}
    if config.threshold_rule == "percentile":
        return {"threshold_rule": f"{config.threshold_q:g}th percentile of {normals}",
                "threshold_calibration": {**record, "q": config.threshold_q}}
    bound, needed = conformal_threshold(range(n), config.fpr_target)[1], normals_needed(config.fpr_target)
    upper = fpr_quantile(n, config.fpr_target)
    record.update({"fpr_target": config.fpr_target, "fpr_bound": bound, "fpr_upper_90": upper,
                   "supported": bound <= config.fpr_target, "normals_needed": needed})
    if bound > config.fpr_target:
        print(f"NOTE: {n} calibration normals support a false-positive target of {bound:.1%} at best, not the "
              f"{config.fpr_target:.1%} asked: hold apart at least {needed} good images (calibration_dir) to reach it")
    if not held_apart:  # the bound needs normals exchangeable with new parts; these chose the map (README)
        print(f"NOTE: the threshold is set on the validation normals, which also chose the map; new good parts can "
              f"score higher (measured: up to 4x the target): give calibration_dir, {needed}+ good images apart "
              "from every split, for a false-positive rate that holds")
        return {"threshold_rule": f"conformal, target {config.fpr_target:.1%} ({bound:.1%} if new good images "
                                  f"were exchangeable with them), set on {normals}", "threshold_calibration": record}
    return {"threshold_rule": f"conformal: flags at most {bound:.1%} of new good images in expectation, and "
                              f"at most {upper:.1%} with 90% probability over the draw of these normals (target "
                              f"{config.fpr_target:.1%}), set on {normals}",
            "threshold_calibration": record}


def calibration_normals(config: MappingConfig, run: RunPaths, mapping: MappingRun, splits: Dict[str, Any],
                        val_images: torch.Tensor, val: MappingResult) -> Tuple[torch.Tensor, MappingResult]:
    """The calibration normals (B, C, H, W) and the detector's result on them: the validation normals `val_images`
    and `val` without `config.calibration_dir`, else that folder's images, mapped with the run's settings;
    ConfigError when the folder is empty, unreadable, or shares an image with a split."""
    if config.calibration_dir is None:
        return val_images, val
    folder, image_size = Path(config.calibration_dir), val_images.shape[-1]
    paths = images_under(folder)
    if not paths:
        raise ConfigError(f"calibration_dir {folder}: no images there; give a folder of good images that no "
                          "split holds, or calibration_dir None (the validation normals)")
    used = {Path(p).resolve() for name in ("train", "val", "test") for p in splits[name]["paths"]}
    shared = [str(p) for p in paths if p.resolve() in used]
    if shared:
        raise ConfigError(f"calibration_dir {folder} holds {len(shared)} image(s) of the run's own splits (e.g. "
                          f"{shared[0]}): calibration normals must be apart from training, validation and test")
    try:
        images = torch.stack([load_image(p, image_size) for p in paths])
    except DatasetError as e:
        raise ConfigError(f"calibration_dir {folder}: {e}") from e
    device = resolve_device("auto")
    G, D, _, _ = load_detector(detector_file(run, config.method), config.method, device)
    encoder = None
    if config.method in ("encoder", "hybrid"):
        if file_fingerprint(run.encoder) != mapping.fingerprints.get("encoder"):
            raise ConfigError(f"{run.encoder} is not the encoder the mapping file was made with: rerun notebook 03")
        encoder = load_encoder(run.encoder, device=str(device))[0]
    print(f"calibration: mapping {len(paths)} held-apart normals of {folder}")
    return images, detect(G, D, images.to(device), config, encoder=encoder, progress=False)
