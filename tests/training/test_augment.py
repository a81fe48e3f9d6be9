"""DiffAugment: shapes, determinism, identity, gradients, and each transform's effect."""
import pytest
import torch

from transgan_lib.training.augment import cutout, diff_augment, parse_policy, translate

POLICY = "color,translation,cutout"


def _images(seed=0, B=4, size=16):
    return torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", POLICY])
def test_shape_preserved_and_changed(policy):
    x = _images()
    y = diff_augment(x, policy, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(x, y)


def test_deterministic_under_seed_and_seeds_differ():
    x = _images()
    a, b = diff_augment(x, POLICY, _gen(7)), diff_augment(x, POLICY, _gen(7))
    c = diff_augment(x, POLICY, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_empty_policy_is_identity():
    x = _images()
    for policy in ("", None, "none"):
        assert torch.equal(diff_augment(x, policy, _gen(0)), x)


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="colour.*translation"):
        parse_policy("colour,translation")


def test_gradient_flows_to_input():
    x = _images().requires_grad_(True)
    diff_augment(x, POLICY, _gen(1)).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_content_and_zero_pads():
    # one bright pixel at the centre moves by at most 1/8 of the size; the count of zero pixels
    # grows by whole rows/columns
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = translate(x, _gen(3))
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert (y.flatten(1).sum(1) == 1).all()  # the pixel stays inside for shifts <= 2
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert (dy != 0).any() or (dx != 0).any()
    ones = translate(torch.ones(8, 1, 16, 16), _gen(3))
    zero_rows = (ones[:, 0].sum(2) == 0).sum(1)  # (B,) rows entirely padded
    assert torch.equal(zero_rows, dy.abs())


def test_cutout_zeroes_one_square_at_most_half_size():
    x = torch.ones(16, 3, 16, 16)
    y = cutout(x, _gen(4))
    zeros = (y[:, 0] == 0).flatten(1).sum(1)  # (B,)
    assert (zeros > 0).all() and (zeros <= 64).all()
    assert (zeros == 64).any()  # a full 8x8 square when it lies inside
    assert torch.equal(y[:, 0], y[:, 2])  # the same hole in every channel


def test_color_keeps_spatial_structure():
    # colour transforms are per-image affine maps: a constant image stays constant per channel
    x = torch.full((4, 3, 8, 8), 0.2)
    y = diff_augment(x, "color", _gen(5))
    assert torch.allclose(y, y[:, :, :1, :1].expand_as(y))
    assert not torch.allclose(y, x)


def test_same_result_on_any_device_draws_on_cpu():
    # random numbers come from the CPU generator, so the result does not depend on torch's
    # global RNG
    x = _images()
    torch.manual_seed(0)
    a = diff_augment(x, POLICY, _gen(9))
    torch.manual_seed(1)
    b = diff_augment(x, POLICY, _gen(9))
    assert torch.equal(a, b)
