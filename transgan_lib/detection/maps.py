"""Anomaly maps: per-pixel "how different is x from its reconstruction x_hat".

Pure torch functions, differentiable where natural, device-agnostic (CPU/CUDA).
Images are float tensors in [-1, 1]; every map is (B, H, W) with higher = more anomalous.

Shape letters: B batch, C channels, H, W image height/width, N tokens (N = h * w on a
token grid of h × w), K kernel length.

Downstream image-score rule: the max of the Gaussian-smoothed map (`anomaly_maps` then
`max_score`); the functions here stay generic.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..config import MAP_KINDS
from ..filters import separable_blur, ssim_index

# Image data range of [-1, 1] images, used by SSIM's stabilising constants.
DATA_RANGE = 2.0
# GMS stabilising constant from RIAD (Zavrtanik et al. 2021), defined for images in [0, 1].
GMS_C = 0.0026


def residual_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Absolute residual |x - x_hat| averaged over channels.

    Args:
        x, x_hat: (B, C, H, W) images.
    Returns:
        (B, H, W) map.
    """
    _check_pair(x, x_hat)
    return (x - x_hat).abs().mean(dim=1)


def shift_residual_map(x: torch.Tensor, x_hat: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Residual tolerant to a misalignment of up to `radius` pixels: per pixel, the smallest
    channel-averaged |x - x_hat| over x_hat shifted by (dy, dx) in [-radius, radius]^2.

    Why: a generator places thin edges (mortar lines, seams, printed text) a sub-pixel off or
    slightly blurred, and the plain residual then lights up along every edge of a normal image.
    A defect wider than the tolerance has no matching pixel nearby and keeps its residual.
    radius 0 is `residual_map`. Shifts read x_hat with replicate padding at the border.

    Args:
        x, x_hat: (B, C, H, W) images.
    Returns:
        (B, H, W) map.
    """
    _check_pair(x, x_hat)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    h, w = x.shape[-2:]
    padded = F.pad(x_hat, (radius, radius, radius, radius), mode="replicate")  # (B, C, H+2r, W+2r)
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = (x - padded[..., dy:dy + h, dx:dx + w]).abs().mean(dim=1)  # (B, H, W)
            best = d if best is None else torch.minimum(best, d)
    return best


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of anomaly maps (reflect padding, kernel radius ceil(4 sigma)).

    Args:
        maps: (B, H, W).
        sigma: standard deviation in pixels; 0 returns the maps unchanged.
    Returns:
        (B, H, W) smoothed maps.
    """
    if maps.dim() != 3:
        raise ValueError(f"gaussian_smooth expects (B, H, W) maps, got shape {tuple(maps.shape)}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return maps
    radius = int(math.ceil(4.0 * sigma))
    return separable_blur(maps.unsqueeze(1), sigma, radius).squeeze(1)


def ssim_map(x: torch.Tensor, x_hat: torch.Tensor, *, sigma: float = 1.5, win_size: int = 11) -> torch.Tensor:
    """Per-pixel 1 - SSIM (Gaussian-weighted window, population covariances), averaged over channels.

    Matches skimage ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=2)`` away from the border (`filters.ssim_index`).

    Args:
        x, x_hat: (B, C, H, W) images in [-1, 1] (data range 2).
        sigma: Gaussian window std; win_size: window length (odd), 11 for sigma 1.5.
    Returns:
        (B, H, W) map, 0 where the images agree, up to 2.
    """
    _check_pair(x, x_hat)
    return (1.0 - ssim_index(x, x_hat, sigma=sigma, win_size=win_size, data_range=DATA_RANGE)).mean(dim=1)


def _gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude of (B, 1, H, W) grayscale images (replicate padding)."""
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=gray.device, dtype=gray.dtype) / 3.0
    kernels = torch.stack([prewitt, prewitt.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (B, 2, H, W)
    # The epsilon keeps sqrt differentiable on flat regions.
    return torch.sqrt((grads**2).sum(dim=1, keepdim=True) + 1e-12)  # (B, 1, H, W)


def msgms_map(x: torch.Tensor, x_hat: torch.Tensor, *, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient-magnitude-similarity anomaly map (RIAD, Zavrtanik et al. 2021).

    Both images go to grayscale in [0, 1]; at each scale (halved by 2×2 average pooling)
    GMS = (2 g_x g_y + c) / (g_x² + g_y² + c) with Prewitt gradient magnitudes and c = 0.0026;
    each GMS map is upsampled (bilinear) back to H × W and the map is 1 - mean over scales.

    Args:
        x, x_hat: (B, C, H, W) images in [-1, 1].
        scales: number of scales (stops early once a side would drop below 2 px).
    Returns:
        (B, H, W) map in [0, 1), 0 where the images agree.
    """
    _check_pair(x, x_hat)
    h, w = x.shape[-2:]
    gx = ((x.mean(dim=1, keepdim=True) + 1.0) / 2.0)  # (B, 1, H, W) grayscale in [0, 1]
    gy = ((x_hat.mean(dim=1, keepdim=True) + 1.0) / 2.0)
    total = torch.zeros_like(gx)
    used = 0
    for scale in range(scales):
        if scale > 0:
            if min(gx.shape[-2:]) < 4:
                break
            gx, gy = F.avg_pool2d(gx, 2), F.avg_pool2d(gy, 2)
        mag_x, mag_y = _gradient_magnitude(gx), _gradient_magnitude(gy)
        gms = (2 * mag_x * mag_y + GMS_C) / (mag_x**2 + mag_y**2 + GMS_C)
        if gms.shape[-2:] != (h, w):
            gms = F.interpolate(gms, size=(h, w), mode="bilinear", align_corners=False)
        total = total + gms
        used += 1
    return (1.0 - total / used).squeeze(1)


def feature_residual_map(
    f_x: torch.Tensor, f_hat: torch.Tensor, grid_hw: Tuple[int, int], out_hw: Tuple[int, int]
) -> torch.Tensor:
    """Token-feature residual upsampled to image size.

    Args:
        f_x, f_hat: (B, N, C) token features with N = h * w (row-major token grid).
        grid_hw: (h, w) token grid.
        out_hw: (H, W) output size.
    Returns:
        (B, H, W) map: per-token mean |f_x - f_hat| over C, bilinearly upsampled.
    """
    if f_x.shape != f_hat.shape or f_x.dim() != 3:
        raise ValueError(
            f"feature_residual_map expects two (B, N, C) tensors of equal shape, got "
            f"{tuple(f_x.shape)} and {tuple(f_hat.shape)}"
        )
    h, w = grid_hw
    b, n, _ = f_x.shape
    if n != h * w:
        raise ValueError(f"token count N={n} does not match grid_hw={grid_hw} (h*w={h * w})")
    per_token = (f_x - f_hat).abs().mean(dim=-1)  # (B, N)
    grid = per_token.reshape(b, 1, h, w)  # (B, 1, h, w)
    return F.interpolate(grid, size=tuple(out_hw), mode="bilinear", align_corners=False).squeeze(1)


def resize_maps(maps: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Bilinear resize of (B, H, W) maps to `size` ((H', W') or an int for square)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def max_score(maps: torch.Tensor) -> torch.Tensor:
    """Image score = max over pixels of (B, H, W) maps -> (B,)."""
    return maps.flatten(1).amax(dim=1)


def mean_score(maps: torch.Tensor) -> torch.Tensor:
    """Image score = mean over pixels of (B, H, W) maps -> (B,)."""
    return maps.flatten(1).mean(dim=1)


def anomaly_maps(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "residual", sigma: float = 4.0) -> torch.Tensor:
    """Compute the chosen anomaly map then Gaussian-smooth it.

    Args:
        x, x_hat: (B, C, H, W) images in [-1, 1].
        kind: one of MAP_KINDS: "residual", "shift_residual" (1 px tolerance), "ssim", "msgms".
        sigma: smoothing std in pixels (0 = none).
    Returns:
        (B, H, W) smoothed map.
    """
    if kind == "residual":
        maps = residual_map(x, x_hat)
    elif kind == "shift_residual":
        maps = shift_residual_map(x, x_hat)
    elif kind == "ssim":
        maps = ssim_map(x, x_hat)
    elif kind == "msgms":
        maps = msgms_map(x, x_hat)
    else:
        raise ValueError(f"unknown anomaly map kind {kind!r}; choose one of {MAP_KINDS}")
    return gaussian_smooth(maps, sigma)


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape != x_hat.shape:
        raise ValueError(
            f"expected two (B, C, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
