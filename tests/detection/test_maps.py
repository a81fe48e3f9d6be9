"""Anomaly maps against hand-computed values."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from transgan_lib.detection.maps import (
    anomaly_maps,
    feature_residual_map,
    gaussian_smooth,
    max_score,
    mean_score,
    msgms_map,
    residual_map,
    resize_maps,
    shift_residual_map,
    ssim_map,
)


def test_residual_map_known_value():
    x = torch.zeros(1, 3, 4, 4)
    x_hat = torch.zeros(1, 3, 4, 4)
    x_hat[0, :, 1, 2] = torch.tensor([0.3, -0.6, 0.9])
    out = residual_map(x, x_hat)
    assert out.shape == (1, 4, 4)
    assert out[0, 1, 2].item() == pytest.approx(0.6)  # (0.3 + 0.6 + 0.9) / 3
    assert out.sum().item() == pytest.approx(0.6)


def test_gaussian_smooth_keeps_constant_and_mass():
    const = torch.full((2, 16, 16), 0.7)
    assert torch.allclose(gaussian_smooth(const, 4.0), const, atol=1e-6)  # radius capped to 15 here
    delta = torch.zeros(1, 33, 33)
    delta[0, 16, 16] = 1.0
    out = gaussian_smooth(delta, 2.0)  # radius 8 < 16 px to the border: no mass lost
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    # 2-D Gaussian peak 1 / (2 pi sigma^2) (discrete kernel normalisation changes it < 1%).
    assert out[0, 16, 16].item() == pytest.approx(1 / (2 * math.pi * 4), rel=0.01)
    assert out.argmax().item() == 16 * 33 + 16
    assert gaussian_smooth(delta, 0) is delta


def test_ssim_map_identical_and_different():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert ssim_map(x, x.clone()).abs().max().item() < 1e-5
    x_hat = x.clone()
    x_hat[:, :, 4:12, 4:12] = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    out = ssim_map(x, x_hat)
    assert out.shape == (2, 32, 32)
    assert out[:, 6:10, 6:10].min().item() > 0.2
    assert out[:, 24:, 24:].abs().max().item() < 1e-5  # far from the change


def test_ssim_map_matches_skimage_in_the_interior():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(24, 24))
    b = np.clip(a + rng.normal(scale=0.3, size=a.shape), -1, 1)
    _, full = structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    ours = ssim_map(torch.tensor(a)[None, None], torch.tensor(b)[None, None])[0].numpy()
    np.testing.assert_allclose(ours[6:-6, 6:-6], 1 - full[6:-6, 6:-6], atol=1e-6)


def test_msgms_single_scale_hand_value_on_a_ramp():
    # Horizontal ramp, step s per pixel in [-1, 1] -> step s/2 in [0, 1] grayscale; the Prewitt
    # magnitude is 2 * s/2 = s. Against a flat image: 1 - GMS = s^2 / (s^2 + c), c = 0.0026.
    s = 0.05
    x = (torch.arange(16.0) * s - 0.4).expand(1, 3, 16, 16)
    flat = torch.zeros(1, 3, 16, 16)
    out = msgms_map(x, flat, scales=1)
    torch.testing.assert_close(out[0, 2:-2, 2:-2], torch.full((12, 12), s**2 / (s**2 + 0.0026)), atol=1e-4, rtol=0)


def test_msgms_zero_for_identical_and_peaks_at_the_changed_edge():
    x = torch.full((1, 3, 32, 32), -0.5)
    assert msgms_map(x, x.clone()).abs().max().item() < 1e-6
    x_hat = x.clone()
    x_hat[..., 8:24, 16:] = 0.5  # new square: edges at rows 8/24 and column 16
    out = msgms_map(x, x_hat)
    assert out.shape == (1, 32, 32)
    assert 0 <= out.min().item() and out.max().item() < 1
    r, c = divmod(out[0].argmax().item(), 32)
    near_edge = (abs(c - 16) <= 2 and 6 <= r <= 25) or (min(abs(r - 8), abs(r - 24)) <= 2 and c >= 14)
    assert near_edge, (r, c)
    assert out[0, 0, 0].item() < 0.1 * out.max().item()


def test_feature_residual_map_location_after_upsampling():
    f_x = torch.zeros(2, 16, 8)  # (B, N, C), grid 4 x 4
    f_hat = f_x.clone()
    f_hat[1, 5] = 1.0  # token (row 1, col 1)
    out = feature_residual_map(f_x, f_hat, (4, 4), (16, 16))
    assert out.shape == (2, 16, 16)
    assert out[0].abs().max().item() == 0
    # Token cell = pixels 4..7; pixel 5 samples source coordinate 0.875 -> weight 0.875 per axis.
    assert out[1, 5, 5].item() == pytest.approx(0.875**2)
    r, c = divmod(out[1].argmax().item(), 16)
    assert 4 <= r <= 7 and 4 <= c <= 7
    with pytest.raises(ValueError, match="grid_hw"):
        feature_residual_map(f_x, f_hat, (4, 5), (16, 16))


def test_resize_and_scores():
    maps = torch.arange(16.0).reshape(1, 4, 4)
    assert resize_maps(maps, 4) is maps
    big = resize_maps(maps, (8, 8))
    assert big.shape == (1, 8, 8) and big.mean().item() == pytest.approx(7.5)
    assert max_score(maps).tolist() == [15.0]
    assert mean_score(maps).tolist() == [7.5]


def test_anomaly_maps_entry_point_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    x_hat = (torch.rand(1, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    assert torch.allclose(anomaly_maps(x, x_hat, "residual", sigma=0), residual_map(x, x_hat))
    for kind in ("residual", "shift_residual", "ssim", "msgms"):
        out = anomaly_maps(x, x_hat, kind, sigma=2.0)
        assert out.shape == (1, 16, 16)
        (grad,) = torch.autograd.grad(out.sum(), x_hat)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown anomaly map kind"):
        anomaly_maps(x, x_hat, "l2")


def test_shift_residual_forgives_a_one_pixel_shift_but_not_a_defect():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    shifted = torch.roll(x, shifts=(1, -1), dims=(2, 3))  # G drew the same image one pixel off
    plain, tolerant = residual_map(x, shifted), shift_residual_map(x, shifted)
    assert plain[:, 2:-2, 2:-2].mean() > 0.3
    assert torch.allclose(tolerant[:, 2:-2, 2:-2], torch.zeros(2, 12, 12))  # exact match one px away
    assert (tolerant <= plain + 1e-7).all()  # shift 0 is among those tried
    assert torch.equal(shift_residual_map(x, shifted, radius=0), plain)
    # A 6x6 defect on a flat surface: its centre has no matching pixel within 1 px.
    flat = torch.zeros(1, 3, 16, 16)
    defect = flat.clone()
    defect[..., 5:11, 5:11] = 0.8
    m = shift_residual_map(defect, flat)
    assert m[0, 5:11, 5:11].min().item() == pytest.approx(0.8) and m[0, :5].max() == 0
    with pytest.raises(ValueError, match="radius"):
        shift_residual_map(x, x, radius=-1)
