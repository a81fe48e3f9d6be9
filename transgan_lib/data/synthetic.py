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
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

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


# ----------------------------------------------------------------------------- restorer training defects
DEFECT_AREA = (0.02, 0.2)  # mask area as a fraction of the image, drawn uniformly
MASK_KINDS = ("noise", "strip", "blob")
DEFECT_SOURCES = ("foreign", "self", "cutpaste", "texture")
OPACITY = (0.5, 1.0)  # blending opacity of the source inside the mask, drawn uniformly


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _choice(g: torch.Generator, options: Sequence):
    return options[int(torch.randint(len(options), (), generator=g))]


def _smooth_noise(g: torch.Generator, h: int, w: int, cells: int) -> torch.Tensor:
    """(H, W) Gaussian noise on a cells x cells grid, bicubically upsampled (one Perlin-like octave)."""
    grid = torch.randn(1, 1, cells + 1, cells + 1, generator=g)
    return F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0, 0]


def _score_field(g: torch.Generator, kind: str, h: int, w: int) -> torch.Tensor:
    """(H, W) smooth field whose top quantile is a mask of the kind."""
    if kind == "noise":  # two octaves of smooth noise: irregular, possibly several regions
        cells = int(2 ** torch.randint(1, 4, (), generator=g))  # 2, 4 or 8 cells per side
        return _smooth_noise(g, h, w, cells) + 0.5 * _smooth_noise(g, h, w, 2 * cells)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    cy, cx = _uniform(g, -0.6, 0.6), _uniform(g, -0.6, 0.6)
    wobble = 0.15 * _smooth_noise(g, h, w, 4)
    if kind == "strip":  # a band around a random line through (cy, cx), with wavy edges
        angle = _uniform(g, 0, math.pi)
        dist = ((ys - cy) * math.cos(angle) - (xs - cx) * math.sin(angle)).abs()
        return -(dist + wobble)
    if kind == "blob":  # an irregular disc around (cy, cx)
        return -(((ys - cy) ** 2 + (xs - cx) ** 2).sqrt() + wobble)
    raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")


def random_mask(g: torch.Generator, kind: str, h: int, w: int, area: Tuple[float, float] = DEFECT_AREA
                ) -> torch.Tensor:
    """A (H, W) float 0/1 mask of `kind` whose area fraction is drawn uniformly in `area` (exact up
    to one pixel's rounding: the field is thresholded at its own quantile)."""
    field = _score_field(g, kind, h, w).flatten()  # (H*W,)
    n = min(max(1, int(round(_uniform(g, *area) * h * w))), h * w)
    mask = torch.zeros(h * w)
    mask[field.topk(n).indices] = 1
    return mask.view(h, w)


def _texture(g: torch.Generator, c: int, h: int, w: int) -> torch.Tensor:
    """(C, H, W) procedural texture in [-1, 1]: a random grating and smooth coloured noise."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    angle, period = _uniform(g, 0, math.pi), _uniform(g, 2.0, max(3.0, h / 4))
    grating = torch.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    colour = torch.rand(c, 1, 1, generator=g) * 2 - 1  # (C, 1, 1)
    noise = torch.stack([_smooth_noise(g, h, w, 8) for _ in range(c)])  # (C, H, W)
    tex = colour + _uniform(g, 0.1, 0.6) * grating + 0.3 * noise
    return tex.clamp(-1, 1)


def _shifted(g: torch.Generator, image: torch.Tensor) -> torch.Tensor:
    """`image` (C, H, W) rolled by a random offset of at least a quarter side."""
    h, w = image.shape[-2:]
    dy, dx = (int(torch.randint(n // 4, n - n // 4 + 1, (), generator=g)) for n in (h, w))
    return image.roll((dy, dx), dims=(-2, -1))


def _source(g: torch.Generator, kind: str, image: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The (C, H, W) fill of a defect of source `kind` for `image` (`other`: another normal)."""
    c, h, w = image.shape
    if kind == "foreign":
        return _shifted(g, other)
    if kind == "self":  # shifted, rotated by a multiple of 90 degrees, flipped, colour-changed
        src = _shifted(g, image)
        if h == w:
            src = torch.rot90(src, int(torch.randint(4, (), generator=g)), dims=(-2, -1))
        if torch.rand((), generator=g).item() < 0.5:
            src = src.flip(-1)
        gain = 1 + 0.5 * (torch.rand(c, 1, 1, generator=g) * 2 - 1)  # (C, 1, 1)
        return src * gain + 0.4 * (torch.rand(c, 1, 1, generator=g) * 2 - 1)
    if kind == "cutpaste":  # CutPaste's light jitter of a shifted copy
        return _shifted(g, image) * (1 + JITTER * _uniform(g, -1, 1)) + JITTER * _uniform(g, -1, 1)
    if kind == "texture":
        return _texture(g, c, h, w).to(image)
    raise ValueError(f"defect source must be one of {DEFECT_SOURCES}, got {kind!r}")


def synthetic_defects(images: torch.Tensor, *, seed: int = 0, generator: Optional[torch.Generator] = None,
                      sources: Sequence[str] = DEFECT_SOURCES, mask_kinds: Sequence[str] = MASK_KINDS,
                      opacity: Tuple[float, float] = OPACITY, area: Tuple[float, float] = DEFECT_AREA,
                      p_defect: float = 1.0, others: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthetic defects of normal images with exact masks (module docstring).

    Args:
        images: (B, C, H, W) normal images in [-1, 1]; not modified.
        seed: seeds the draws when no `generator` is given (same seed, same defects).
        generator: a CPU torch.Generator to draw from (training: the epoch's generator).
        sources, mask_kinds: the kinds drawn from, uniformly per image.
        opacity: range of the blending opacity; area: range of the mask's area fraction.
        p_defect: probability that an image gets a defect (the others stay normal, mask 0).
        others: (M, C, H, W) other normal images for the "foreign" source (default: the batch
            itself, each image taking the next one's content).
    Returns:
        (images with defects (B, C, H, W) in [-1, 1], masks (B, H, W) float 0/1).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if not 0 < area[0] <= area[1] <= 1 or not 0 <= opacity[0] <= opacity[1] <= 1:
        raise ValueError(f"need 0 < area <= 1 and 0 <= opacity <= 1, got area {area}, opacity {opacity}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    x = images.detach().float().cpu()
    pool = x if others is None else others.detach().float().cpu()
    out, masks = x.clone(), torch.zeros(b, h, w)
    for i in range(b):
        if torch.rand((), generator=g).item() >= p_defect:
            continue
        j = (i + 1) % len(pool) if others is None else int(torch.randint(len(pool), (), generator=g))
        mask = random_mask(g, _choice(g, mask_kinds), h, w, area)
        fill = _source(g, _choice(g, sources), x[i], pool[j]).clamp(-1, 1)
        alpha = _uniform(g, *opacity) * mask  # (H, W)
        out[i] = torch.where(mask.bool(), (1 - alpha) * x[i] + alpha * fill, x[i])
        masks[i] = mask
    return out.to(images), masks.to(images)


__all__ = ["cutpaste", "synthetic_defects", "random_mask", "DEFECT_AREA", "MASK_KINDS", "DEFECT_SOURCES",
           "OPACITY", "CUTPASTE_AREA"]
