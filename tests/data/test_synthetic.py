"""CutPaste anomalies: deterministic, confined to their masks, within the CutPaste size ranges."""
import pytest
import torch

from transgan_lib.data.synthetic import CUTPASTE_AREA, cutpaste


def _images(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_cutpaste_changes_only_the_masked_region_and_is_seeded():
    x = _images()
    before = x.clone()
    out, masks = cutpaste(x, seed=3)
    assert torch.equal(x, before)  # the input is not modified
    assert out.shape == x.shape and masks.shape == (8, 32, 32)
    assert out.min() >= -1 and out.max() <= 1
    changed = (out != x).any(dim=1)  # (B, H, W)
    assert not (changed & (masks == 0)).any()  # nothing outside the mask
    assert (changed.flatten(1).sum(1) > 0).all()  # every image got an anomaly
    again, masks_again = cutpaste(x, seed=3)
    assert torch.equal(out, again) and torch.equal(masks, masks_again)
    other, _ = cutpaste(x, seed=4)
    assert not torch.equal(out, other)


def test_cutpaste_rectangles_and_scars_have_their_shapes():
    out, masks = cutpaste(_images(10, 64), seed=0)
    area = masks.flatten(1).mean(1)  # fraction of the image
    rect = area[0::2]
    assert (rect >= CUTPASTE_AREA[0] * 0.8).all() and (rect <= CUTPASTE_AREA[1] * 1.2).all()
    for m in masks[1::2]:  # a scar is a thin strip: one side at most 8% of 64 px (5 px)
        rows, cols = m.any(dim=1).sum().item(), m.any(dim=0).sum().item()
        assert min(rows, cols) <= 5 and max(rows, cols) >= 19
    with pytest.raises(ValueError, match="B, C, H, W"):
        cutpaste(torch.zeros(3, 32, 32))
