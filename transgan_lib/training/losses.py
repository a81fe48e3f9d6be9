"""GAN losses as pure functions of discriminator logits (and, for the penalty, of D itself).

Shape letters: B batch, C channels, H, W image height and width. Logits are (B,) tensors, the
output of the discriminator: higher means "looks real".

WGAN-GP (Gulrajani et al. 2017) with the drift term of Karras et al. (2018) is the default;
the hinge loss (Lim & Ye 2017; Miyato et al. 2018) is the alternative.

Beside them, for methods that repair images and segment defects: 1 - SSIM (as DRAEM) and the focal
loss (Lin et al. 2017).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..filters import ssim_index
from ..models.transgan import math_attention


def d_loss_wgan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic loss E[D(fake)] - E[D(real)] (minimised by D)."""
    return fake_logits.mean() - real_logits.mean()


def g_loss_wgan(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss -E[D(fake)]."""
    return -fake_logits.mean()


def d_loss_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss -E[D(fake)] (the same form as the WGAN generator loss)."""
    return -fake_logits.mean()


def drift_penalty(real_logits: torch.Tensor) -> torch.Tensor:
    """E[D(real)^2]: keeps WGAN critic outputs from drifting far from 0 (weighted ~1e-3)."""
    return real_logits.pow(2).mean()


def gradient_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                     alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """WGAN-GP penalty E[(||grad_x D(x_hat)||_2 - 1)^2] on x_hat = alpha*real + (1-alpha)*fake.

    D runs under `math_attention()`: the fused attention kernels have no double backward, and
    the penalty's gradient w.r.t. D's parameters needs one (create_graph=True). Call this
    outside autocast: the double backward is kept in full precision.

    Args:
        D: maps (B, C, H, W) -> (B,) logits (a tuple output uses its first element).
        real, fake: (B, C, H, W); both are detached here.
        generator: CPU generator for alpha ~ U(0, 1) per sample (None: global CPU RNG).
        alpha: (B,) or (B, 1, 1, 1) fixed mixing weights instead of random ones (for tests).

    Returns:
        0-d tensor, differentiable w.r.t. D's parameters.
    """
    B = real.shape[0]
    if alpha is None:
        alpha = torch.rand(B, generator=generator)
    alpha = alpha.to(device=real.device, dtype=real.dtype).view(B, 1, 1, 1)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    with math_attention():
        out = D(x_hat)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # samples are independent in D, so d(sum)/dx_hat holds every sample's own gradient
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    # sqrt(. + eps): a finite gradient of the norm even where the input gradient is exactly 0
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)  # (B,)
    return (norm - 1).pow(2).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, *, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """Mean 1 - SSIM of images x, y (B, C, H, W) in [-1, 1] (Gaussian window, data range 2): the
    loss form of `detection.maps.ssim_map`, both from `filters.ssim_index`."""
    return (1 - ssim_index(x, y, sigma=sigma, win_size=2 * radius + 1, data_range=2.0)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (1 - p_t)^gamma * BCE of per-pixel logits against a 0/1 target of the
    same shape; gamma 0 is the plain BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma == 0:
        return bce.mean()
    p_t = torch.exp(-bce)  # the probability given to the true class
    return ((1 - p_t) ** gamma * bce).mean()


__all__ = ["ssim_loss", "focal_loss", "d_loss_wgan", "g_loss_wgan", "d_loss_hinge", "g_loss_hinge", "drift_penalty",
           "gradient_penalty"]
