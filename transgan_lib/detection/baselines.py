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


def patch_bank(train_images: torch.Tensor, patch_size: int, stride: int, max_bank: int, seed: int) -> torch.Tensor:
    """(M, D) raw-pixel training patches, randomly subsampled to at most max_bank."""
    patches = F.unfold(train_images.float(), kernel_size=patch_size, stride=stride)  # (B, D, L)
    bank = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B * L, D)
    if bank.shape[0] > max_bank:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(bank.shape[0], generator=generator)[:max_bank]
        bank = bank[keep.to(bank.device)]
    return bank


def patch_kernels(channels: int, patch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The constant kernels of `patch_distance_map`: one-hot (D, C, p, p) ones whose output channel k copies
    element k of a patch in unfold's (C, p, p) order, and a (1, 1, p, p) all-ones kernel to fold back."""
    d = channels * patch_size * patch_size
    return torch.eye(d).view(d, channels, patch_size, patch_size), torch.ones(1, 1, patch_size, patch_size)


def patch_distance_map(images: torch.Tensor, bank: torch.Tensor, patch_size: int, stride: int,
                       batch: int = 1024, kernels: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                       ) -> torch.Tensor:
    """(B, H, W) unsmoothed map: each pixel the mean, over the patches covering it, of the patch's
    Euclidean distance to its nearest `bank` row (M, D). Images are reflect-padded on the bottom/right
    so the patch grid covers every pixel.

    Written with conv2d, matmul and conv_transpose2d only (no unfold, fold or cdist) so the same code
    exports to ONNX (`export`, a fused map's patch part). `batch`: patches per distance chunk (memory
    ~ batch * M floats); a traced graph takes all at once. `kernels`: `patch_kernels`, made here when not
    given (a module that is traced passes them as its buffers, so the graph holds them as constants).
    """
    b, c, h, w = images.shape
    pad_h, pad_w = (-(h - patch_size)) % stride, (-(w - patch_size)) % stride
    x = F.pad(images.float(), (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else images.float()
    eye, ones = kernels if kernels is not None else patch_kernels(c, patch_size)
    d = eye.shape[0]
    patches = F.conv2d(x, eye.to(x), stride=stride)  # (B, D, h', w')
    grid = patches.shape[-2:]
    queries = patches.flatten(2).transpose(1, 2).reshape(-1, d)  # (B * L, D)
    bank = bank.to(queries)
    bank_sq = (bank * bank).sum(1)  # (M,)
    chunks = [queries] if torch.jit.is_tracing() else queries.split(batch)
    nearest = []
    for q in chunks:  # |q - m|^2 = |q|^2 - 2 q.m + |m|^2, its minimum over the bank
        sq = (q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_sq
        nearest.append(sq.amin(1).clamp_min(0).sqrt())
    dist = torch.cat(nearest).view(b, 1, *grid)  # (B, 1, h', w')
    ones = ones.to(x)
    summed = F.conv_transpose2d(dist, ones, stride=stride)  # each pixel: sum over its covering patches
    counts = F.conv_transpose2d(torch.ones_like(dist[:1]), ones, stride=stride)
    return (summed / counts.clamp_min(1.0))[:, 0, :h, :w]


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

    Each pixel's value is the mean distance of the test patches covering it (`patch_distance_map`);
    the map is then Gaussian-smoothed and the image score is its max.

    Args:
        train_images: (B_train, C, H, W). test_images: (B, C, H, W), same C.
        patch_size, stride: patch grid. max_bank: bank size cap (random subsample with `seed`).
        batch: test patches per distance chunk (memory ~ batch * max_bank * 4 bytes).
    Returns:
        maps (B, H, W) and scores (B,).
    """
    _check_images(train_images, test_images)
    bank = patch_bank(train_images.to(test_images.device), patch_size, stride, max_bank, seed)
    maps = gaussian_smooth(patch_distance_map(test_images, bank, patch_size, stride, batch), sigma)
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
    threshold_rule: str = "percentile",
    fpr_target: float = 0.05,
    return_scores: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Both baselines, scored with `evaluation.metrics_at_size` (`metrics.compute_metrics`).

    Args:
        train_images: (B_train, C, H, W) normal training images.
        test_images: (B, C, H, W); test_labels: (B,) 1 = defective; test_masks: (B, 1, h, w)
            or (B, h, w) or None (maps are upsampled to the mask size, bilinear); defects: (B,) names or None.
        threshold_images: calibration normal images; when given, each baseline's decision threshold is
            set on its scores on them by `threshold_rule` ("percentile": their q-th percentile; "conformal":
            `metrics.conformal_threshold` at `fpr_target`), never on the test set.
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
            threshold = threshold_from_normals(method(threshold_images)[1], rule=threshold_rule, q=q,
                                               fpr_target=fpr_target)
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
