"""Building blocks of the latent search (`mapping.map_to_latent`): freezing the networks, the
per-image initial codes, the feature function f and the per-image mapping loss.

Shape letters: B images, Z latent size, C channels, H/W image height/width, N feature tokens,
F feature width.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...config import FEATURE_KINDS
from ...models.perceptual import load_perceptual_net

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> (B, N, F)


@contextlib.contextmanager
def frozen(*modules: Optional[nn.Module]) -> Iterator[None]:
    """Eval mode and requires_grad=False for the modules' parameters; both restored on exit."""
    modules = [m for m in modules if m is not None]
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        yield
    finally:
        for m, training, grads in saved:
            m.train(training)
            for p, flag in grads:
                p.requires_grad_(flag)


def image_keys(images: torch.Tensor) -> List[int]:
    """One key per image, from its content: images (B, C, H, W) -> B ints in [0, 2**63).

    The sha256 of the image's fp32 bytes, so the same file loaded again gets the same key,
    wherever it sits in a folder and whatever else is scored with it.
    """
    x = images.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return [int.from_bytes(hashlib.sha256(row.numpy().tobytes()).digest()[:8], "little") >> 1 for row in x]


def latent_init(keys: Sequence[int], latent_dim: int, *, seed: int = 0, restart: int = 0) -> torch.Tensor:
    """Prior draws z ~ N(0, I), one generator per (seed, image key, restart).

    Args:
        keys: one non-negative int per image, e.g. `image_keys(images)`.
    Returns:
        (len(keys), Z) on CPU; row i depends on keys[i] alone, so the code of an image does not
        depend on how the images are batched, nor on which other images are mapped.
    """
    rows = []
    for key in keys:
        state = np.random.SeedSequence([seed, restart, int(key)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        rows.append(torch.randn(latent_dim, generator=g))
    return torch.stack(rows) if rows else torch.zeros(0, latent_dim)


def make_feature_fn(D: Optional[nn.Module], feature: str,
                    perceptual_net: Optional[nn.Module] = None) -> Tuple[Optional[FeatureFn], List[nn.Module]]:
    """The feature function f: images (B, C, H, W) -> tokens (B, N, F), and the modules to freeze.

    "discriminator": D's final patch tokens (`D(x, return_features=True)`, no augmentation);
    "perceptual": `perceptual_net` (or `load_perceptual_net()`) maps flattened to tokens;
    "none": no feature term (returns None).
    """
    if feature == "discriminator":
        if D is None:
            raise ValueError("feature='discriminator' needs the discriminator D; pass D or use feature='none'")
        return (lambda x: D(x, return_features=True)[1]), [D]
    if feature == "perceptual":
        net = perceptual_net if perceptual_net is not None else load_perceptual_net()
        return (lambda x: net(x).flatten(2).transpose(1, 2)), [net]  # (B, F, h, w) -> (B, h*w, F)
    if feature == "none":
        return None, []
    raise ValueError(f"unknown feature {feature!r}; choose one of {FEATURE_KINDS}")


def per_image_loss(x: torch.Tensor, x_hat: torch.Tensor, f_x: Optional[torch.Tensor],
                   f_hat: Optional[torch.Tensor], lambda_: float):
    """(loss, residual, feature) each (B,): loss = (1 - lambda_) * residual + lambda_ * feature,
    residual = mean |x - x_hat| per image, feature = mean |f_x - f_hat| per image (0 without f)."""
    residual = (x.float() - x_hat.float()).abs().flatten(1).mean(1)
    if f_x is None:
        return residual, residual, torch.zeros_like(residual)
    feat = (f_x.float() - f_hat.float()).abs().flatten(1).mean(1)
    return (1.0 - lambda_) * residual + lambda_ * feat, residual, feat
