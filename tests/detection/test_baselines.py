"""Baselines on synthetic textures: a bright square must score higher and be localised."""
import math

import pytest
import torch

from transgan_lib.detection.baselines import (
    mean_image_baseline,
    patch_nn_baseline,
    run_baselines,
)

SIZE = 32
SQUARE = (slice(12, 20), slice(14, 22))  # rows, cols of the pasted defect


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(24, 3, SIZE, SIZE, generator=g) * 0.2).clamp(-1, 1)
    test = (torch.randn(8, 3, SIZE, SIZE, generator=g) * 0.2).clamp(-1, 1)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    masks = torch.zeros(8, 1, SIZE, SIZE)
    test[4:, :, SQUARE[0], SQUARE[1]] = 1.0
    masks[4:, :, SQUARE[0], SQUARE[1]] = 1.0
    val = (torch.randn(6, 3, SIZE, SIZE, generator=g) * 0.2).clamp(-1, 1)
    defects = ["good"] * 4 + ["square"] * 4
    return train, test, labels, masks, defects, val


def _assert_detects_and_localises(maps, scores, labels):
    assert maps.shape == (8, SIZE, SIZE) and scores.shape == (8,)
    assert scores[labels == 1].min() > scores[labels == 0].max()
    for m in maps[labels == 1]:
        r, c = divmod(m.argmax().item(), SIZE)
        assert SQUARE[0].start <= r < SQUARE[0].stop and SQUARE[1].start <= c < SQUARE[1].stop


@pytest.mark.parametrize("kind", ["residual", "msgms"])
def test_mean_image_baseline(data, kind):
    train, test, labels, *_ = data
    maps, scores = mean_image_baseline(train, test, kind=kind, sigma=2.0)
    _assert_detects_and_localises(maps, scores, labels)


def test_mean_image_baseline_ssim(data):
    # Against a flat mean image SSIM is low on every noisy pixel (no shared structure), so the
    # square only stands out a little: still the higher score and the higher map inside it.
    train, test, labels, masks, *_ = data
    maps, scores = mean_image_baseline(train, test, kind="ssim", sigma=2.0)
    assert scores[labels == 1].min() > scores[labels == 0].max()
    inside = masks[:, 0].bool()
    assert maps[inside].mean() > maps[~inside].mean() + 0.02


def test_mean_image_baseline_reconstructs_with_the_mean():
    train = torch.stack([torch.full((3, 8, 8), -0.5), torch.full((3, 8, 8), 0.5)])  # mean 0
    test = torch.full((1, 3, 8, 8), 0.3)
    maps, scores = mean_image_baseline(train, test, sigma=0)
    assert torch.allclose(maps, torch.full((1, 8, 8), 0.3)) and scores.item() == pytest.approx(0.3)


def test_patch_nn_baseline(data):
    train, test, labels, *_ = data
    maps, scores = patch_nn_baseline(train, test, patch_size=8, stride=4, sigma=2.0)
    _assert_detects_and_localises(maps, scores, labels)


def test_patch_nn_exact_match_is_zero_and_bank_subsample_is_seeded(data):
    train, test, *_ = data
    maps, scores = patch_nn_baseline(train, train[:2], patch_size=8, stride=4, sigma=0)
    # Every patch of a training image is in the bank (other patches are ~4 away; the small
    # residue is torch.cdist's matmul-based distance rounding).
    assert maps.abs().max().item() < 1e-2
    # Uncovered border (30 - 8 is not a multiple of 4) is still filled via padding.
    maps, _ = patch_nn_baseline(train[:, :, :30, :30], test[:, :, :30, :30], stride=4, sigma=0)
    assert (maps > 0).all()
    a = patch_nn_baseline(train, test, max_bank=50, seed=1, batch=7)[1]
    b = patch_nn_baseline(train, test, max_bank=50, seed=1)[1]
    c = patch_nn_baseline(train, test, max_bank=50, seed=2)[1]
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c)


def test_run_baselines_keys_and_thresholds(data):
    train, test, labels, masks, defects, val = data
    out = run_baselines(train, test, labels, masks, defects, threshold_images=val, sigma=2.0)
    assert set(out) == {"mean_image", "patch_nn"}
    for result in out.values():
        assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_f1_at_threshold",
                               "threshold", "at_threshold", "per_defect", "n_test"}
        assert result["image_auroc"] == pytest.approx(1.0)
        assert result["pixel_auroc"] > 0.9 and result["aupro"] > 0.5
        assert set(result["per_defect"]) == {"square"} and result["per_defect"]["square"]["n"] == 4
        assert result["at_threshold"]["recall"] == pytest.approx(1.0)
    # The threshold is the 99th percentile of the validation-normal scores, not anything from test.
    _, val_scores = mean_image_baseline(train, val, sigma=2.0)
    expected = torch.quantile(val_scores.double(), 0.99).item()
    assert out["mean_image"]["threshold"] == pytest.approx(expected, rel=1e-5)
    no_masks = run_baselines(train, test, labels, None, None)
    assert no_masks["patch_nn"]["pixel_auroc"] is None and "threshold" not in no_masks["patch_nn"]
    assert not math.isnan(no_masks["patch_nn"]["image_auroc"])
