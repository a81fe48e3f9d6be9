"""Probe defects: the defects settings are chosen on (a detector's map kind) when the detector trained on
synthetic defects, drawn by code that shares nothing with those (`synthetic.py`) and of families it never
saw: a detector that only recognises its own training defects' signature is not rewarded for it.

Families, one per copy in turn (the masks mark what changed):
- "line": a thin bright or dark curve, 1-2 px wide;
- "pit": a small dark or bright spot with a soft edge;
- "smudge": a smooth blob shifting brightness and colour;
- "blur": a round region whose texture is smoothed away.

Shape letters: B batch, C channels, H, W image height and width.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ..filters import separable_blur

PROBE_FAMILIES = ("line", "pit", "smudge", "blur")


def _draw(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _grid(h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


def _line(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """(H, W) in [0, 1]: a quadratic Bezier curve across a third to most of the image, 1-2 px wide."""
    pts = torch.rand(3, 2, generator=g) * torch.tensor([h - 1.0, w - 1.0])  # start, control, end
    t = torch.linspace(0, 1, 4 * (h + w))[:, None]
    curve = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t ** 2 * pts[2]  # (N, 2)
    ys, xs = _grid(h, w)
    dist = torch.cdist(torch.stack([ys.flatten(), xs.flatten()], 1), curve).amin(1).view(h, w)
    return (1.0 - (dist - _draw(g, 0.3, 0.8)).clamp(0, 1)).clamp(0, 1)


def _disc(g: torch.Generator, h: int, w: int, radius: float, edge: float) -> torch.Tensor:
    """(H, W) in [0, 1]: a disc of `radius` px at a random place, soft over `edge` px."""
    cy, cx = _draw(g, radius, h - 1 - radius), _draw(g, radius, w - 1 - radius)
    ys, xs = _grid(h, w)
    dist = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    return ((radius - dist) / max(edge, 1e-6) + 0.5).clamp(0, 1)


def probe_defect(image: torch.Tensor, family: str, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One probe defect of `family` on `image` (C, H, W) in [-1, 1]: (defective image, mask (H, W) 0/1)."""
    c, h, w = image.shape
    side = min(h, w)
    sign = 1.0 if _draw(g) < 0.5 else -1.0
    if family == "line":
        alpha = _line(g, h, w)
        target = torch.full_like(image, sign)
        out = image + alpha * _draw(g, 0.6, 1.0) * (target - image)
    elif family == "pit":
        alpha = _disc(g, h, w, radius=max(1.0, _draw(g, 0.015, 0.04) * side), edge=1.0)
        out = image + alpha * _draw(g, 0.6, 0.9) * (sign - image)
    elif family == "smudge":
        alpha = _disc(g, h, w, radius=_draw(g, 0.08, 0.16) * side, edge=0.06 * side)
        shift = sign * _draw(g, 0.15, 0.35) + 0.2 * (torch.rand(c, 1, 1, generator=g) * 2 - 1)  # (C, 1, 1)
        out = image + alpha * shift
    elif family == "blur":
        alpha = _disc(g, h, w, radius=_draw(g, 0.08, 0.18) * side, edge=1.0)
        sigma = max(1.0, 0.04 * side)
        out = image + alpha * (separable_blur(image[None], sigma, int(3 * sigma), mode="replicate")[0] - image)
    else:
        raise ValueError(f"probe defect family must be one of {PROBE_FAMILIES}, got {family!r}")
    mask = (alpha > 0.5).to(image.dtype)
    return out.clamp(-1, 1), mask


def probe_defects(images: torch.Tensor, *, seed: int = 0, families: Sequence[str] = PROBE_FAMILIES
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Probe defects of normal images (B, C, H, W) in [-1, 1], row i of family `families[i % len]`.

    Returns (defective images (B, C, H, W), masks (B, H, W) float 0/1); the draws depend only on `seed`
    and the row index."""
    if images.dim() != 4 or min(images.shape[-2:]) < 8:
        raise ValueError(f"images must be (B, C, H, W) of at least 8x8 px, got shape {tuple(images.shape)}")
    outs, masks = [], []
    for i, image in enumerate(images):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        out, mask = probe_defect(image.float().cpu(), families[i % len(families)], g)
        outs.append(out.to(images))
        masks.append(mask.to(images))
    return torch.stack(outs), torch.stack(masks)


def family_names(n: int, families: Sequence[str] = PROBE_FAMILIES):
    """The family of each of `n` rows of `probe_defects`."""
    return [families[i % len(families)] for i in range(n)]


__all__ = ["PROBE_FAMILIES", "probe_defect", "probe_defects", "family_names"]
