"""DiffAugment (Zhao, Liu, Lin, Zhu, Han, "Differentiable Augmentation for Data-Efficient GAN
Training", NeurIPS 2020), written from the paper.

Shape letters: B batch, C channels, H, W image height and width.

The same random, differentiable transforms are applied to the real AND the fake images the
discriminator sees during training (never at scoring time), so D cannot memorise the few normal
images of a category while G still receives gradients through the transforms.

Random numbers are drawn on the CPU (from `generator` when given, else the global CPU RNG) and
then moved to the images' device, so a seeded generator gives the same result on every device.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

Transform = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def _rand(x: torch.Tensor, generator: Optional[torch.Generator], *shape: int) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the CPU, moved to x's device and dtype."""
    return torch.rand(*shape, generator=generator).to(device=x.device, dtype=x.dtype)


def _randint(x: torch.Tensor, generator: Optional[torch.Generator], low: int, high: int,
             *shape: int) -> torch.Tensor:
    """Integers in [low, high) drawn on the CPU, moved to x's device."""
    return torch.randint(low, high, shape, generator=generator).to(x.device)


def adjust_brightness(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add U(-0.5, 0.5) per image."""
    return x + (_rand(x, generator, x.shape[0], 1, 1, 1) - 0.5)


def adjust_saturation(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by U(0, 2) per image."""
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (_rand(x, generator, x.shape[0], 1, 1, 1) * 2) + mean


def adjust_contrast(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scale the deviation from the image mean by U(0.5, 1.5) per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_rand(x, generator, x.shape[0], 1, 1, 1) + 0.5) + mean


def translate(x: torch.Tensor, generator: Optional[torch.Generator] = None,
              ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in y and x; uncovered pixels become 0."""
    B, C, H, W = x.shape
    max_dy, max_dx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = _randint(x, generator, -max_dy, max_dy + 1, B, 1, 1)  # (B, 1, 1)
    dx = _randint(x, generator, -max_dx, max_dx + 1, B, 1, 1)
    # output pixel (i, j) reads input pixel (i - dy, j - dx); reads outside the image give 0
    rows = torch.arange(H, device=x.device).view(1, H, 1) - dy  # (B, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W) - dx  # (B, 1, W)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)  # (B, H, W)
    index = rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)  # (B, H, W) flat source index
    index = index.view(B, 1, H * W).expand(B, C, H * W)  # (B, C, H*W)
    shifted = x.flatten(2).gather(2, index).view(B, C, H, W)  # gather is differentiable in x
    return shifted * inside.unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, generator: Optional[torch.Generator] = None,
           ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio*H, ratio*W) rectangle at a random place in each image (it may be clipped
    by the border, as in the paper's code)."""
    B, _, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = _randint(x, generator, 0, H + (1 - ch % 2), B, 1, 1)  # (B, 1, 1) centre row
    cx = _randint(x, generator, 0, W + (1 - cw % 2), B, 1, 1)
    top, left = cy - ch // 2, cx - cw // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype)


AUGMENTATIONS: Dict[str, List[Transform]] = {
    "color": [adjust_brightness, adjust_saturation, adjust_contrast],
    "translation": [translate],
    "cutout": [cutout],
}


def parse_policy(policy: Optional[str]) -> List[str]:
    """'color,translation' -> ['color', 'translation']; '' / None / 'none' -> []."""
    if not policy or policy.strip().lower() == "none":
        return []
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown} in {policy!r}; "
                         f"choose from {sorted(AUGMENTATIONS)} (comma-separated), or '' for none")
    return names


def diff_augment(x: torch.Tensor, policy: Optional[str] = "color,translation,cutout",
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply the DiffAugment `policy` to a batch of images.

    Args:
        x: (B, C, H, W) images (any range; the transforms are the paper's, written for [-1, 1]).
        policy: comma-separated subset of "color", "translation", "cutout", applied in that
            written order; "" (or None) returns `x` unchanged.
        generator: a CPU torch.Generator for reproducible draws; None uses the global CPU RNG.

    Returns:
        (B, C, H, W) augmented images, differentiable w.r.t. `x`; each image gets its own draw.
    """
    for name in parse_policy(policy):
        for transform in AUGMENTATIONS[name]:
            x = transform(x, generator)
    return x


__all__ = ["diff_augment", "parse_policy", "adjust_brightness", "adjust_saturation",
           "adjust_contrast", "translate", "cutout", "AUGMENTATIONS"]
