"""Losses of the dual-discriminator reconstruction model (CIFAR-10 imbalanced setting); pure functions.

Shape letters: B batch, C channels, H, W height and width, L latent size, P patches per image.
Images are (B, C, H, W) in [-1, 1]; latents (B, L); discriminator logits (B,).

Generator side (each weighted by its own config weight in `cifar_train`):

1. `l1_loss`: mean |x - x_hat| over the normals.
2. `patch_loss`: per image, the mean of the `top_k` largest patch errors (mean |x - x_hat| over a
   non-overlapping `patch_size` patch) - a small badly reconstructed region counts fully instead of
   being diluted by the whole image as in L1.
3. `latent_loss`: mean squared ||z - z_rec||, z = E1(x), z_rec = E2(G(z)) (GANomaly's encoder loss).
4. `adversarial_normal_loss`: reconstructions of normals should look real to D_normal.
5. `adversarial_anomalous_loss`: the mirror image for D_anomalous, which tells real labelled
   anomalies from their reconstructions. The generator is rewarded when D_anomalous *recognises*
   the reconstruction of a labelled anomaly as a reconstruction (hinge: relu(1 + D), BCE:
   softplus(D); both bounded below by 0). So G is not trained to reproduce anomalies and their
   reconstructions drift away from them, which raises their reconstruction error (the score).
6. `abc_loss` (Yamanaka et al. 2019): with e the per-image reconstruction error, normals minimize e
   and labelled anomalies minimize -log(1 - exp(-e)), which falls as e grows.

Discriminator side: `discriminator_normal_loss` (real normals vs reconstructions of normals) and
`discriminator_anomalous_loss` (real labelled anomalies vs their reconstructions), hinge (default)
or BCE; neither needs a gradient penalty, hence no double backward through the ViT discriminators.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

D_LOSSES = ("hinge", "bce")


def _check_kind(kind: str) -> None:
    if kind not in D_LOSSES:
        raise ValueError(f"adversarial loss kind must be one of {D_LOSSES}, got {kind!r}")


# ----------------------------------------------------------------------------- per-image errors
def per_image_l1(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: (B, C, H, W) x2 -> (B,)."""
    return (x - x_hat).abs().flatten(1).mean(dim=1)


def per_image_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, C, H, W) x2 -> (B,)."""
    return (x - x_hat).pow(2).flatten(1).mean(dim=1)


def patch_errors(x: torch.Tensor, x_hat: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean absolute error of each non-overlapping patch: (B, C, H, W) x2 -> (B, P).

    H and W must be multiples of `patch_size`.
    """
    H, W = x.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not a multiple of patch_size {patch_size}")
    err = (x - x_hat).abs().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return F.avg_pool2d(err, patch_size).flatten(1)  # (B, P)


def per_image_patch_error(x: torch.Tensor, x_hat: torch.Tensor, patch_size: int = 8,
                          top_k: int = 4) -> torch.Tensor:
    """Mean of the `top_k` largest patch errors per image (B,); `top_k` is capped at P."""
    errors = patch_errors(x, x_hat, patch_size)  # (B, P)
    k = max(1, min(int(top_k), errors.shape[1]))
    return errors.topk(k, dim=1).values.mean(dim=1)


def per_image_latent_error(z: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
    """Mean squared latent difference per image: (B, L) x2 -> (B,)."""
    return (z - z_rec).pow(2).mean(dim=1)


# ----------------------------------------------------------------------------- generator losses
def l1_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1. L1 reconstruction loss, a scalar: mean |x - x_hat|."""
    return per_image_l1(x, x_hat).mean()


def patch_loss(x: torch.Tensor, x_hat: torch.Tensor, patch_size: int = 8, top_k: int = 4) -> torch.Tensor:
    """2. Patch loss, a scalar: batch mean of `per_image_patch_error`."""
    return per_image_patch_error(x, x_hat, patch_size, top_k).mean()


def latent_loss(z: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
    """3. Latent loss, a scalar: mean squared difference of E1(x) (B, L) and E2(G(E1(x))) (B, L)."""
    return per_image_latent_error(z, z_rec).mean()


def adversarial_normal_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """4. G's loss against D_normal on reconstructions of normals (B,) -> scalar.

    hinge: -mean(D); bce (non-saturating): mean softplus(-D) = -log sigmoid(D).
    """
    _check_kind(kind)
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()


def adversarial_anomalous_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """5. G's loss against D_anomalous on reconstructions of labelled anomalies (B,) -> scalar.

    G wants D_anomalous to call them reconstructions, not real anomalies (see module doc):
    hinge: mean relu(1 + D); bce: mean softplus(D) = -log(1 - sigmoid(D)). An empty batch gives 0.
    """
    _check_kind(kind)
    if fake_logits.numel() == 0:
        return fake_logits.sum()
    return F.relu(1.0 + fake_logits).mean() if kind == "hinge" else F.softplus(fake_logits).mean()


def abc_terms(errors: torch.Tensor, is_anomaly: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image ABC terms (B,): e for normals, -log(1 - exp(-e)) for labelled anomalies.

    1 - exp(-e) is computed as -expm1(-e) and clamped at `eps`, so e = 0 gives a finite -log(eps).
    """
    anomalous_term = -torch.log((-torch.expm1(-errors)).clamp_min(eps))
    return torch.where(is_anomaly.bool(), anomalous_term, errors)


def abc_loss(errors: torch.Tensor, is_anomaly: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """6. ABC loss (Yamanaka et al. 2019), a scalar: the batch mean of `abc_terms`.

    errors: (B,) non-negative reconstruction errors (here the per-image MSE); is_anomaly: (B,) bool.
    """
    return abc_terms(errors, is_anomaly, eps).mean()


# ----------------------------------------------------------------------------- discriminator losses
def _discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    _check_kind(kind)
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def discriminator_normal_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                              kind: str = "hinge") -> torch.Tensor:
    """D_normal's loss: real normals (B,) vs reconstructions of normals (B,) -> scalar.

    hinge: mean relu(1 - D(real)) + mean relu(1 + D(fake)); bce: mean softplus(-D(real)) +
    mean softplus(D(fake)) (binary cross-entropy with logits, real = 1, fake = 0).
    """
    return _discriminator_loss(real_logits, fake_logits, kind)


def discriminator_anomalous_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                                 kind: str = "hinge") -> torch.Tensor:
    """D_anomalous' loss: real labelled anomalies (B,) vs their reconstructions (B,) -> scalar.

    Same form as `discriminator_normal_loss`; an empty batch (no labelled anomaly) gives 0.
    """
    if real_logits.numel() == 0:
        return real_logits.sum() + fake_logits.sum()
    return _discriminator_loss(real_logits, fake_logits, kind)


__all__ = ["D_LOSSES", "per_image_l1", "per_image_mse", "patch_errors", "per_image_patch_error",
           "per_image_latent_error", "l1_loss", "patch_loss", "latent_loss", "adversarial_normal_loss",
           "adversarial_anomalous_loss", "abc_terms", "abc_loss", "discriminator_normal_loss",
           "discriminator_anomalous_loss"]
