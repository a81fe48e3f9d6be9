"""Floors every GAN result is shown beside: two trivial detectors scored with the same rules.

- mean image: every test image is "reconstructed" as the mean training image;
- patch nearest neighbour: each test patch's distance to its nearest raw-pixel training patch.

Maps are smoothed with the same Gaussian and images scored with the same max rule as the GAN
(`transgan_lib.maps`), and pixel metrics computed at the masks' size by the same code
(`evaluation.metrics_at_size`), so the comparison is like for like.

Shape letters: B images, C channels, H, W pixels, D = C * p * p patch length, L patches per image.
Images are (B, C, H, W) float tensors in [-1, 1].
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..metrics import threshold_from_normals
from .evaluation import metrics_at_size
from .maps import anomaly_maps, gaussian_smooth, max_score


@torch.no_grad()
def mean_image_baseline(
    train_images: torch.Tensor, test_images: torch.Tensor, *, kind: str = "residual", sigma: float = 4.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct every test image as the mean training image.

    Args:
        train_images: (B_train, C, H, W). test_images: (B, C, H, W).
        kind, sigma: map kind and smoothing, as in `maps.anomaly_maps`.
    Returns:
        maps (B, H, W) and scores (B,) = max of each smoothed map.
    """
    _check_images(train_images, test_images)
    mean = train_images.to(test_images.device, torch.float32).mean(dim=0, keepdim=True)  # (1, C, H, W)
    maps = anomaly_maps(test_images.float(), mean.expand_as(test_images), kind=kind, sigma=sigma)
    return maps, max_score(maps)


def _patch_bank(train_images: torch.Tensor, patch_size: int, stride: int, max_bank: int, seed: int) -> torch.Tensor:
    """(M, D) raw-pixel training patches, randomly subsampled to at most max_bank."""
    patches = F.unfold(train_images, kernel_size=patch_size, stride=stride)  # (B, D, L)
    bank = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B * L, D)
    if bank.shape[0] > max_bank:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(bank.shape[0], generator=generator)[:max_bank]
        bank = bank[keep.to(bank.device)]
    return bank


def _nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """(Q,) Euclidean distance of each (Q, D) query to its nearest (M, D) bank row, in chunks
    of `chunk` queries so memory stays at about chunk * M floats."""
    out = torch.empty(queries.shape[0], device=queries.device, dtype=queries.dtype)
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start:start + chunk], bank)  # (chunk, M)
        out[start:start + chunk] = d.amin(dim=1).clamp_min(0.0)
    return out


@torch.no_grad()
def patch_nn_baseline(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    patch_size: int = 8,
    stride: int = 4,
    max_bank: int = 20000,
    sigma: float = 4.0,
    seed: int = 0,
    batch: int = 1024,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour distance of raw-pixel test patches to a bank of training patches.

    Each pixel's value is the mean distance of the test patches covering it (test images are
    reflect-padded on the bottom/right so the patch grid covers every pixel); the map is then
    Gaussian-smoothed and the image score is its max.

    Args:
        train_images: (B_train, C, H, W). test_images: (B, C, H, W), same C.
        patch_size, stride: patch grid. max_bank: bank size cap (random subsample with `seed`).
        batch: test patches per torch.cdist chunk (memory ~ batch * max_bank * 4 bytes).
    Returns:
        maps (B, H, W) and scores (B,).
    """
    _check_images(train_images, test_images)
    device = test_images.device
    bank = _patch_bank(train_images.to(device, torch.float32), patch_size, stride, max_bank, seed)
    b, _, h, w = test_images.shape
    # 1. pad so that (size - patch_size) is a multiple of stride
    pad_h = (-(h - patch_size)) % stride
    pad_w = (-(w - patch_size)) % stride
    x = F.pad(test_images.float(), (0, pad_w, 0, pad_h), mode="reflect" if max(pad_h, pad_w) else "constant")
    size = (h + pad_h, w + pad_w)
    # 2. nearest-bank distance per test patch
    patches = F.unfold(x, kernel_size=patch_size, stride=stride)  # (B, D, L)
    n_patches = patches.shape[2]
    queries = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B * L, D)
    dist = _nearest_distances(queries, bank, batch).view(b, 1, n_patches)  # (B, 1, L)
    # 3. fold back: each pixel = mean of the distances of the patches covering it
    kernel_area = patch_size * patch_size
    summed = F.fold(dist.expand(b, kernel_area, n_patches), size, kernel_size=patch_size, stride=stride)
    counts = F.fold(torch.ones_like(dist[:1]).expand(1, kernel_area, n_patches), size,
                    kernel_size=patch_size, stride=stride)  # (1, 1, H', W')
    maps = (summed / counts.clamp_min(1.0))[:, 0, :h, :w]  # (B, H, W)
    maps = gaussian_smooth(maps, sigma)
    return maps, max_score(maps)


def run_baselines(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: Any,
    test_masks: Any,
    defects: Optional[Sequence[str]],
    threshold_images: Optional[torch.Tensor] = None,
    *,
    kind: str = "residual",
    sigma: float = 4.0,
    patch_size: int = 8,
    stride: int = 4,
    max_bank: int = 20000,
    seed: int = 0,
    q: float = 99.0,
    return_scores: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Both baselines, scored with `evaluation.metrics_at_size` (`metrics.compute_metrics`).

    Args:
        train_images: (B_train, C, H, W) normal training images.
        test_images: (B, C, H, W); test_labels: (B,) 1 = defective; test_masks: (B, 1, h, w)
            or (B, h, w) or None (maps are upsampled to the mask size, bilinear); defects: (B,) names or None.
        threshold_images: validation normal images; when given, each baseline's decision
            threshold is the q-th percentile of its scores on them (never the test set).
    Returns:
        {"mean_image": metrics dict, "patch_nn": metrics dict}; with return_scores also
        {name: test image scores (B,)} as a second value (for ROC curves).
    """
    methods = {
        "mean_image": lambda imgs: mean_image_baseline(train_images, imgs, kind=kind, sigma=sigma),
        "patch_nn": lambda imgs: patch_nn_baseline(
            train_images, imgs, patch_size=patch_size, stride=stride, max_bank=max_bank, sigma=sigma, seed=seed
        ),
    }
    results, all_scores = {}, {}
    for name, method in methods.items():
        maps, scores = method(test_images)
        all_scores[name] = scores
        threshold = None
        if threshold_images is not None:
            threshold = threshold_from_normals(method(threshold_images)[1], rule="percentile", q=q)
        results[name] = metrics_at_size(test_labels, scores, test_masks, maps, defects, threshold)
    return (results, all_scores) if return_scores else results


def _check_images(train_images: torch.Tensor, test_images: torch.Tensor) -> None:
    if train_images.dim() != 4 or test_images.dim() != 4 or train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"train and test images must be (B, C, H, W) with the same C, H, W; got "
            f"{tuple(train_images.shape)} and {tuple(test_images.shape)}"
        )
    if train_images.shape[0] == 0:
        raise ValueError("the baselines need at least one training image, got none")
