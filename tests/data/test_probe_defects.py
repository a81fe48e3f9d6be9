"""Probe defects: seeded, one family per row in turn, the change inside the mask, and drawn by code that
shares nothing with the training defects."""
import ast
from pathlib import Path

import pytest
import torch

from transgan_lib.data.probe_defects import PROBE_FAMILIES, family_names, probe_defects


def _normals(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = 0.3 * torch.sin(xs / 3.0) * torch.cos(ys / 5.0)  # a texture, so blur has something to remove
    return (base + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


def test_probe_defects_are_seeded_and_change_the_image_inside_their_masks():
    x = _normals()
    a, masks = probe_defects(x, seed=3)
    b, _ = probe_defects(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, probe_defects(x, seed=4)[0])
    assert a.shape == x.shape and masks.shape == (8, 32, 32) and a.abs().max() <= 1
    assert family_names(8) == list(PROBE_FAMILIES) * 2
    change = (a - x).abs().mean(1)  # (B, H, W)
    for i in range(8):
        inside, outside = change[i][masks[i] > 0].mean(), change[i][masks[i] == 0].mean()
        assert masks[i].sum() >= 1 and inside > 5 * outside, (family_names(8)[i], float(inside), float(outside))


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="probe defect family"):
        probe_defects(_normals(2), families=("scratch",))


def test_probe_defects_share_no_code_with_the_training_defects():
    """Selection must not reward recognising the training defects: the probe module imports nothing of
    `synthetic.py` (the Gaussian blur of `filters.py` is shared by the maps, not by the training defects)."""
    source = Path(__file__).resolve().parents[2] / "transgan_lib" / "data" / "probe_defects.py"
    imported = {n.module or "" for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.ImportFrom)}
    assert not any("synthetic" in m for m in imported) and imported <= {"__future__", "typing", "filters"}
    assert not {"cutpaste", "foreign", "self", "texture"} & set(PROBE_FAMILIES)
