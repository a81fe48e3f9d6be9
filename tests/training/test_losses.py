"""GAN losses against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from transgan_lib.training.losses import (
    d_loss_hinge,
    d_loss_wgan,
    drift_penalty,
    g_loss_hinge,
    g_loss_wgan,
    gradient_penalty,
)

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-3.0, 0.0, 1.5])


def test_wgan_values():
    # E[fake] - E[real] = (-1.5/3) - (1.5/3) = -1
    assert d_loss_wgan(REAL, FAKE).item() == pytest.approx(-1.0)
    assert g_loss_wgan(FAKE).item() == pytest.approx(0.5)
    assert drift_penalty(REAL).item() == pytest.approx((4 + 0.25 + 1) / 3)


def test_hinge_values():
    # real: relu(1 - [2, .5, -1]) = [0, .5, 2] -> 2.5/3; fake: relu(1 + [-3, 0, 1.5]) = [0, 1, 2.5] -> 3.5/3
    assert d_loss_hinge(REAL, FAKE).item() == pytest.approx(6.0 / 3)
    assert g_loss_hinge(FAKE).item() == pytest.approx(0.5)


class LinearD(nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


class QuadraticD(nn.Module):
    """D(x) = c * sum(x^2): input gradient 2 c x."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x):
        return self.c * x.pow(2).flatten(1).sum(1)


def test_gradient_penalty_linear_critic_is_exact():
    w = torch.zeros(1, 2, 2, 2)
    w.view(-1)[:3] = torch.tensor([1.0, 2.0, 2.0])  # ||w|| = 3 -> GP = (3 - 1)^2 = 4
    D = LinearD(w)
    real, fake = torch.randn(5, 2, 2, 2), torch.randn(5, 2, 2, 2)
    gp = gradient_penalty(D, real, fake, torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(4.0, rel=1e-6)
    # d GP / d w = 2 (||w|| - 1) w / ||w||, needs the double backward
    gp.backward()
    assert torch.allclose(D.w.grad, 2 * (3 - 1) * w / 3, atol=1e-6)


def test_gradient_penalty_quadratic_critic_by_hand():
    c = 0.3
    D = QuadraticD(c)
    real = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]])  # (2, 1, 1, 2)
    fake = torch.tensor([[[[3.0, 0.0]]], [[[2.0, 1.0]]]])
    alpha = torch.tensor([0.25, 0.5])
    gp = gradient_penalty(D, real, fake, alpha=alpha)
    # x_hat_0 = .25*[1,2] + .75*[3,0] = [2.5, .5];  x_hat_1 = .5*[0,-1] + .5*[2,1] = [1, 0]
    # grad = 2 c x_hat -> norms 0.6*sqrt(6.5) and 0.6*1
    n0, n1 = 2 * c * math.sqrt(2.5 ** 2 + 0.5 ** 2), 2 * c * 1.0
    expected = ((n0 - 1) ** 2 + (n1 - 1) ** 2) / 2
    assert gp.item() == pytest.approx(expected, rel=1e-6)
    # d GP / d c = mean(2 (n_i - 1) n_i / c)
    gp.backward()
    assert D.c.grad.item() == pytest.approx((2 * (n0 - 1) * n0 / c + 2 * (n1 - 1) * n1 / c) / 2, rel=1e-5)


def test_gradient_penalty_seeded_alpha_is_reproducible():
    D = QuadraticD(0.7)
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    a = gradient_penalty(D, real, fake, torch.Generator().manual_seed(5))
    b = gradient_penalty(D, real, fake, torch.Generator().manual_seed(5))
    alpha = torch.rand(4, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item() == pytest.approx(gradient_penalty(D, real, fake, alpha=alpha).item())


def test_gradient_penalty_runs_on_transgan_discriminator():
    from transgan_lib.config import ModelConfig
    from transgan_lib.models import build_discriminator
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(image_size=32, model_size="tiny", latent_dim=32))  # sdpa
    gp = gradient_penalty(D, torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.Generator().manual_seed(0))
    gp.backward()
    assert torch.isfinite(gp) and D.head.weight.grad.abs().sum() > 0


def test_ssim_loss_is_the_mean_of_the_ssim_map():
    """The restorer's SSIM loss and notebook 04's SSIM map are one computation (filters.ssim_index)."""
    from transgan_lib.detection.maps import ssim_map
    from transgan_lib.training.losses import ssim_loss
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    assert ssim_loss(x, y).item() == pytest.approx(ssim_map(x, y).mean().item(), rel=1e-6)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6) and ssim_loss(x, y).item() > 0.1
