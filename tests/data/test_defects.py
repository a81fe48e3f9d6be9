"""Synthetic defects of the restorer's training: exact masks, nothing changed outside them, seeded,
mask areas in their documented range, every source and mask kind usable."""
import pytest
import torch

from transgan_lib.data.synthetic import DEFECT_AREA, DEFECT_SOURCES, MASK_KINDS, random_mask, synthetic_defects


def _images(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8


@pytest.mark.parametrize("source", DEFECT_SOURCES)
def test_defects_change_only_and_exactly_their_masks(source):
    x = _images()
    before = x.clone()
    out, masks = synthetic_defects(x, seed=1, sources=(source,), opacity=(0.6, 1.0))
    assert torch.equal(x, before)  # the input is not modified
    assert out.shape == x.shape and masks.shape == (8, 32, 32) and out.dtype == x.dtype
    assert set(masks.unique().tolist()) <= {0.0, 1.0}  # binary
    assert out.min() >= -1 and out.max() <= 1
    changed = (out != x).any(dim=1)  # (B, H, W)
    assert not (changed & (masks == 0)).any()  # nothing outside the mask
    # the mask is the defect: (almost) every masked pixel changed (a pixel may land on its own value)
    assert changed[masks == 1].float().mean() > 0.95


def test_same_seed_same_defects_and_other_seed_others():
    x = _images()
    a, ma = synthetic_defects(x, seed=3)
    b, mb = synthetic_defects(x, seed=3)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    c, mc = synthetic_defects(x, seed=4)
    assert not torch.equal(ma, mc) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(synthetic_defects(x, generator=g1)[0], synthetic_defects(x, generator=g2)[0])


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_area_within_its_range(kind):
    g = torch.Generator().manual_seed(0)
    areas = torch.stack([random_mask(g, kind, 64, 64).mean() for _ in range(40)])
    lo, hi = DEFECT_AREA
    assert (areas >= lo - 1 / 4096).all() and (areas <= hi + 1 / 4096).all()
    assert areas.max() - areas.min() > 0.5 * (hi - lo)  # drawn across the range, not one size
    _, masks = synthetic_defects(_images(6, 64), seed=2, mask_kinds=(kind,), area=(0.05, 0.06))
    frac = masks.flatten(1).mean(1)
    assert ((frac >= 0.05 - 1 / 4096) & (frac <= 0.06 + 1 / 4096)).all()


def test_mask_kinds_have_their_shapes():
    g = torch.Generator().manual_seed(5)
    strip = random_mask(g, "strip", 64, 64, area=(0.1, 0.1))
    rows, cols = strip.any(dim=1).sum().item(), strip.any(dim=0).sum().item()
    assert max(rows, cols) >= 32  # a strip spans at least half the image along its length
    blob = random_mask(g, "blob", 64, 64, area=(0.05, 0.05))
    ys, xs = blob.nonzero(as_tuple=True)
    assert (ys.max() - ys.min()) < 32 and (xs.max() - xs.min()) < 32  # a compact region


def test_p_defect_leaves_normals_untouched_and_others_pool_is_used():
    x = _images(16)
    out, masks = synthetic_defects(x, seed=0, p_defect=0.5)
    clean = masks.flatten(1).sum(1) == 0
    assert 0 < clean.sum() < 16
    assert torch.equal(out[clean], x[clean])
    pool = torch.full((2, 3, 32, 32), 0.9)
    out, masks = synthetic_defects(x, seed=0, sources=("foreign",), others=pool, opacity=(1.0, 1.0))
    assert torch.allclose(out[masks.unsqueeze(1).expand_as(out) == 1], torch.tensor(0.9))
    with pytest.raises(ValueError, match="source"):
        synthetic_defects(x, sources=("nope",))
    with pytest.raises(ValueError, match="area"):
        synthetic_defects(x, area=(0.0, 0.1))
