"""Tests for transgan_lib.cifar.losses against values computed by hand on tiny tensors."""
import math

import pytest
import torch

from transgan_lib.cifar import losses as L


def softplus(v):
    return math.log1p(math.exp(v))


def test_l1_loss_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[1.0, -1.0], [0.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    assert L.per_image_l1(x, x_hat).tolist() == [0.5, 0.5]
    assert L.l1_loss(x, x_hat).item() == pytest.approx(0.5)
    assert L.per_image_mse(x, x_hat).tolist() == [0.5, 0.25]


def test_patch_loss_by_hand_and_differs_from_l1_on_concentrated_error():
    x = torch.zeros(1, 3, 4, 4)
    x_hat = torch.zeros(1, 3, 4, 4)
    x_hat[:, :, :2, :2] = 1.0  # all the error in the top-left 2x2 patch
    assert L.patch_errors(x, x_hat, 2).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert L.patch_loss(x, x_hat, patch_size=2, top_k=1).item() == pytest.approx(1.0)
    assert L.patch_loss(x, x_hat, patch_size=2, top_k=2).item() == pytest.approx(0.5)
    assert L.l1_loss(x, x_hat).item() == pytest.approx(0.25)  # diluted over 4 patches
    spread = torch.full((1, 3, 4, 4), 0.25)  # same L1, error spread evenly
    assert L.l1_loss(x, spread).item() == pytest.approx(0.25)
    assert L.patch_loss(x, spread, patch_size=2, top_k=1).item() == pytest.approx(0.25)
    assert L.patch_loss(x, x_hat, patch_size=2, top_k=99).item() == pytest.approx(0.25)  # k capped at P
    with pytest.raises(ValueError, match="multiple of patch_size"):
        L.patch_errors(torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5), 2)


def test_latent_loss_by_hand_and_nonzero_for_different_latents():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z_rec = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert L.per_image_latent_error(z, z_rec).tolist() == [2.5, 4.5]
    assert L.latent_loss(z, z_rec).item() == pytest.approx(3.5)
    assert L.latent_loss(z, z.clone()).item() == 0.0
    assert L.latent_loss(torch.randn(4, 8), torch.randn(4, 8)).item() > 0


def test_adversarial_losses_by_hand():
    logits = torch.tensor([1.0, -3.0])
    assert L.adversarial_normal_loss(logits, "hinge").item() == pytest.approx(1.0)
    assert L.adversarial_normal_loss(logits, "bce").item() == pytest.approx((softplus(-1) + softplus(3)) / 2)
    logits = torch.tensor([0.5, -2.0])
    assert L.adversarial_anomalous_loss(logits, "hinge").item() == pytest.approx(0.75)  # (1.5 + 0) / 2
    assert L.adversarial_anomalous_loss(logits, "bce").item() == pytest.approx((softplus(0.5) + softplus(-2)) / 2)
    assert L.adversarial_anomalous_loss(torch.zeros(0)).item() == 0.0
    with pytest.raises(ValueError, match="hinge"):
        L.adversarial_normal_loss(logits, "wgan")


def test_adversarial_losses_push_in_opposite_directions():
    # G wants D_normal to say "real" (loss falls as the logit rises) and D_anomalous to say
    # "reconstruction" (loss rises with the logit).
    for kind in ("hinge", "bce"):
        lo, hi = torch.tensor([-0.5]), torch.tensor([0.5])
        assert L.adversarial_normal_loss(hi, kind) < L.adversarial_normal_loss(lo, kind)
        assert L.adversarial_anomalous_loss(hi, kind) > L.adversarial_anomalous_loss(lo, kind)


def test_abc_loss_by_hand():
    e = torch.tensor([0.5, 0.5, 2.0])
    anomalous = torch.tensor([False, True, True])
    expected = [0.5, -math.log(1 - math.exp(-0.5)), -math.log(1 - math.exp(-2.0))]
    assert L.abc_terms(e, anomalous).tolist() == pytest.approx(expected, rel=1e-6)
    assert L.abc_loss(e, anomalous).item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    # e = 0 for an anomaly is clamped, finite: -log(eps)
    assert L.abc_terms(torch.zeros(1), torch.ones(1, dtype=torch.bool), eps=1e-6).item() == pytest.approx(
        -math.log(1e-6), rel=1e-5)


def test_abc_loss_monotonic_on_a_grid():
    e = torch.linspace(0.01, 5.0, 200, requires_grad=True)
    normal = L.abc_terms(e, torch.zeros(200, dtype=torch.bool))
    anomaly = L.abc_terms(e, torch.ones(200, dtype=torch.bool))
    assert torch.all(normal.diff() > 0)  # normals: loss grows with the error
    assert torch.all(anomaly.diff() < 0)  # labelled anomalies: loss falls as the error grows
    grad, = torch.autograd.grad(anomaly.sum(), e)
    assert torch.all(grad < 0) and torch.isfinite(grad).all()


def test_discriminator_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: mean(relu(1 - real)) = (0 + 0.5) / 2, mean(relu(1 + fake)) = (0 + 1) / 2
    for fn in (L.discriminator_normal_loss, L.discriminator_anomalous_loss):
        assert fn(real, fake, "hinge").item() == pytest.approx(0.75)
        bce = (softplus(-2) + softplus(-0.5)) / 2 + (softplus(-2) + softplus(0)) / 2
        assert fn(real, fake, "bce").item() == pytest.approx(bce)
        bce_check = (torch.nn.functional.binary_cross_entropy_with_logits(real, torch.ones(2))
                     + torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros(2)))
        assert fn(real, fake, "bce").item() == pytest.approx(bce_check.item())
    assert L.discriminator_anomalous_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0
