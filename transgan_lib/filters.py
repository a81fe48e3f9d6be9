"""Gaussian filtering and SSIM of image tensors, shared by the anomaly maps (`detection.maps`) and
the restorer's training loss (`training.losses.ssim_loss`): one implementation below both stages.

Shape letters: B batch, C channels, H, W image height/width, K kernel length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, radius: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of length 2 * radius + 1 (sums to 1)."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_axis(maps: torch.Tensor, kernel: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """Convolve (B, C, H, W) maps with a 1-D kernel (K,) along H (axis=2) or W (axis=3)."""
    radius = kernel.numel() // 2
    c = int(maps.shape[1])  # a plain int: an exported graph (ONNX) needs the kernel's shape fixed
    if axis == 3:
        pad = (radius, radius, 0, 0)
        weight = kernel.view(1, 1, 1, -1)  # (1, 1, 1, K)
    else:
        pad = (0, 0, radius, radius)
        weight = kernel.view(1, 1, -1, 1)  # (1, 1, K, 1)
    padded = F.pad(maps, pad, mode=mode)
    # Depthwise: the same kernel for every channel.
    return F.conv2d(padded, weight.expand(c, 1, *weight.shape[2:]), groups=c)


def separable_blur(maps: torch.Tensor, sigma: float, radius: int, mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) maps; the radius is capped per axis so that
    reflect padding stays valid on small images."""
    h, w = int(maps.shape[2]), int(maps.shape[3])  # plain ints, fixed in an exported graph
    out = maps
    for axis, size in ((2, h), (3, w)):
        r = min(radius, size - 1)
        if r <= 0:
            continue
        kernel = gaussian_kernel1d(sigma, r, device=maps.device, dtype=maps.dtype)
        out = _blur_axis(out, kernel, axis, mode)
    return out


def ssim_index(x: torch.Tensor, y: torch.Tensor, *, sigma: float = 1.5, win_size: int = 11,
               data_range: float = 2.0) -> torch.Tensor:
    """Per-pixel, per-channel SSIM (B, C, H, W) of images x, y (B, C, H, W): Gaussian-weighted window
    of `win_size` (odd) and std `sigma`, population covariances, reflect padding (as skimage's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    radius = win_size // 2

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return separable_blur(t, sigma, radius)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x ** 2, local_mean(y * y) - mu_y ** 2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
