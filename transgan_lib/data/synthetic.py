"""Synthetic anomalies made from normal images, for choosing settings without the test set.

`cutpaste` follows CutPaste (Li et al., CVPR 2021): a rectangle cut from the image, lightly
colour-jittered and pasted elsewhere in the same image ("cutpaste"), or a long thin strip of it
("scar"). They are generic (nothing about any dataset's real defects), cost nothing to make, and
come with exact masks, so the validation normals plus their CutPaste copies form a small labelled
set on which a score rule can be chosen honestly (see `pipeline.select_map_kind`).

Shape letters: B batch, C channels, H, W image height and width.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

CUTPASTE_AREA = (0.02, 0.15)  # rectangle area as a fraction of the image (Li et al.)
CUTPASTE_ASPECT = (0.3, 1 / 0.3)  # its aspect ratio, drawn log-uniformly (Li et al.)
SCAR_LENGTH = (0.3, 0.8)  # strip length as a fraction of the side
SCAR_WIDTH = (0.03, 0.08)  # strip width as a fraction of the side (at least 1 px)
JITTER = 0.1  # gain 1 +- JITTER and offset +- JITTER on the pasted pixels (images in [-1, 1])


def _box(g: torch.Generator, h: int, w: int, scar: bool) -> Tuple[int, int]:
    """(height, width) of the pasted region."""
    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    if scar:
        bh = int(round(uniform(*SCAR_LENGTH) * h))
        bw = max(1, int(round(uniform(*SCAR_WIDTH) * w)))
        if torch.rand((), generator=g).item() < 0.5:  # horizontal or vertical strip
            bh, bw = bw, bh
    else:
        area = uniform(*CUTPASTE_AREA) * h * w
        aspect = math.exp(uniform(*(math.log(a) for a in CUTPASTE_ASPECT)))
        bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    return min(max(bh, 1), h - 1), min(max(bw, 1), w - 1)


def cutpaste(images: torch.Tensor, *, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """CutPaste anomalies of normal images: even rows get a rectangle, odd rows a scar.

    Args:
        images: (B, C, H, W) normal images in [-1, 1]; not modified.
        seed: the draws depend only on it and the row index order (same seed, same anomalies).
    Returns:
        (anomalous images (B, C, H, W) clamped to [-1, 1], masks (B, H, W) float 0/1 of the pasted
        regions).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if h < 4 or w < 4:
        raise ValueError(f"images of {h}x{w} px are too small for CutPaste (need at least 4x4)")
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    masks = torch.zeros(b, h, w, dtype=images.dtype, device=images.device)
    for i in range(b):
        bh, bw = _box(g, h, w, scar=i % 2 == 1)
        sy, sx, ty, tx = (int(torch.randint(0, n - size + 1, (), generator=g))
                          for n, size in ((h, bh), (w, bw), (h, bh), (w, bw)))
        gain = 1 + JITTER * (2 * torch.rand((), generator=g).item() - 1)
        offset = JITTER * (2 * torch.rand((), generator=g).item() - 1)
        patch = images[i, :, sy:sy + bh, sx:sx + bw] * gain + offset  # (C, bh, bw)
        out[i, :, ty:ty + bh, tx:tx + bw] = patch.clamp(-1, 1)
        masks[i, ty:ty + bh, tx:tx + bw] = 1
    return out, masks


__all__ = ["cutpaste"]
