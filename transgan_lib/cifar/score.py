"""Anomaly scores of the dual-discriminator model (used by training for its per-epoch validation AUROC,
and by `cifar.evaluate`).

Shape letters: N images, H, W image size.

Per image the L1 error, the top-k patch error and the latent error (`score_images`), each standardised
with the mean/std of the *validation normals* and summed with `score_weights` (`combine_scores`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..metrics import image_auroc
from . import losses as L
from .config import SCORE_PARTS, CifarConfig
from .data import AnomalySplit, to_float
from .model import DualReconstructionModel


@torch.no_grad()
def score_images(model: DualReconstructionModel, images: torch.Tensor, cfg: CifarConfig,
                 device: Optional[torch.device] = None, batch_size: int = 256) -> Dict[str, np.ndarray]:
    """Per-image score parts {"l1", "patch", "latent"}: (N,) numpy arrays, higher = more anomalous.

    images: uint8 (N, 3, H, W). The model is put in eval mode for scoring and restored after.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in SCORE_PARTS}
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i:i + batch_size].to(device))  # (b, 3, H, W)
        out = model(x)
        x_hat = out["x_hat"].float()
        parts["l1"].append(L.per_image_l1(x, x_hat))
        parts["patch"].append(L.per_image_patch_error(x, x_hat, cfg.patch_size, cfg.patch_top_k))
        parts["latent"].append(L.per_image_latent_error(out["z"].float(), out["z_rec"].float()))
    model.train(was_training)
    return {k: torch.cat(v).cpu().double().numpy() if v else np.zeros(0) for k, v in parts.items()}


def combine_scores(parts: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
                   weights: Dict[str, float]) -> np.ndarray:
    """Weighted sum of the parts, each standardised by the mean/std of `reference` (validation
    normals' parts): (N,) scores on a common scale whatever the parts' units."""
    total = np.zeros_like(next(iter(parts.values())))
    for name, w in weights.items():
        mu, sd = float(np.mean(reference[name])), float(np.std(reference[name]))
        total = total + w * (parts[name] - mu) / max(sd, 1e-12)
    return total


def select_parts(parts: Dict[str, np.ndarray], keep: np.ndarray) -> Dict[str, np.ndarray]:
    """The images of `keep` ((N,) boolean mask or indices) in every array of `parts`."""
    return {k: v[keep] for k, v in parts.items()}


def validation_auroc(model: DualReconstructionModel, split: AnomalySplit, cfg: CifarConfig
                     ) -> Tuple[float, Optional[float]]:
    """(mean L1 of validation normals, validation AUROC or None without validation anomalies)."""
    labels = split.val_labels.numpy()
    parts = score_images(model, split.val_images, cfg)
    normal = select_parts(parts, labels == 0)
    if not (labels == 1).any():
        return float(normal["l1"].mean()), None
    return float(normal["l1"].mean()), image_auroc(labels, combine_scores(parts, normal, cfg.score_weights))


__all__ = ["score_images", "combine_scores", "select_parts", "validation_auroc"]
