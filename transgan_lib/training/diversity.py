"""Mode-collapse monitoring of a generator: the diversity of its samples relative to real images.

Shape letters: B batch, K fixed samples, L latent_dim, C channels, H, W image height and width.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..viz.figures import COLLAPSE_THRESHOLD


def sample_diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the flattened images (B, C, H, W); 0 for B < 2."""
    flat = images.detach().float().flatten(1).cpu()  # (B, C*H*W)
    return float(torch.pdist(flat).mean()) if flat.shape[0] >= 2 else 0.0


def diversity_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """sample_diversity(fake) / sample_diversity(real): ~1 healthy, ~0 collapsed (all samples
    alike); NaN when the real images have no diversity to compare with."""
    ref = sample_diversity(real)
    return sample_diversity(fake) / ref if ref > 0 else float("nan")


def evaluate_diversity(generator: nn.Module, fixed_z: torch.Tensor, real: torch.Tensor,
                       epoch: Optional[int] = None, warn: bool = True) -> Dict[str, Any]:
    """Generate from `fixed_z` (K, L); return {"diversity" (ratio to `real` (K', C, H, W)),
    "collapse_warning" (ratio < 0.1), "samples" (K, C, H, W) on CPU}. With `warn`, a flagged
    collapse also raises a RuntimeWarning."""
    device = next(generator.parameters()).device
    with torch.no_grad():
        samples = generator(fixed_z.to(device)).float().cpu()
    ratio = diversity_ratio(samples, real)
    collapsed = bool(ratio < COLLAPSE_THRESHOLD)
    if collapsed and warn:
        where = f"epoch {epoch}: " if epoch is not None else ""
        warnings.warn(f"{where}sample diversity ratio {ratio:.3f} < {COLLAPSE_THRESHOLD}: the "
                      "generator may have collapsed (its samples are nearly identical). Try a "
                      "lower lr, more n_critic, or DiffAugment.", RuntimeWarning, stacklevel=2)
    return {"diversity": ratio, "collapse_warning": collapsed, "samples": samples}


__all__ = ["sample_diversity", "diversity_ratio", "evaluate_diversity"]
