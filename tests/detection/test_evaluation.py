"""Pixel metrics at the masks' own resolution (transgan_lib.detection.evaluation)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transgan_lib.detection.evaluation import EVAL_SIZE_CAP, load_evaluation_masks, metrics_at_size
from transgan_lib.metrics import compute_metrics

# Thin defects (rows r0:r1, cols c0:c1 of a 256 px mask), 3 px wide (16j - 1 to 16j + 1): between the
# rows and columns nearest neighbour reads at 16, 32 and 64 px (16k + 8, 8k + 4, 4k + 2), so shrunk
# to those sizes with nearest neighbour, every one of them vanishes.
SCRATCHES = {"000": [(111, 114, 70, 130)], "001": [(40, 100, 175, 178)],
             "002": [(207, 210, 20, 80), (20, 80, 239, 242)]}


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def scratched(tmp_path_factory):
    """data_root of a category "widget" with 256 px masks of thin scratches (2 good, 3 scratched);
    the images are black, 256 px as their masks (a mask must have its image's size)."""
    root = tmp_path_factory.mktemp("scratched")
    image = np.zeros((256, 256, 3), np.uint8)
    for name in ("000", "001"):
        _write(root / "widget" / "train" / "good" / f"{name}.png", image)
        _write(root / "widget" / "test" / "good" / f"{name}.png", image)
    for name, boxes in SCRATCHES.items():
        _write(root / "widget" / "test" / "scratch" / f"{name}.png", image)
        mask = np.zeros((256, 256), np.uint8)
        for r0, r1, c0, c1 in boxes:
            mask[r0:r1, c0:c1] = 255
        _write(root / "widget" / "ground_truth" / "scratch" / f"{name}_mask.png", mask)
    paths = [str(root / "widget" / "test" / d / f"{n}.png") for d, n in
             [("good", "000"), ("good", "001"), ("scratch", "000"), ("scratch", "001"), ("scratch", "002")]]
    return root, paths


def _perfect_map(size: int) -> torch.Tensor:
    """(5, size, size) maps at model resolution: 1 on every cell a scratch touches, else 0."""
    cell = 256 // size
    maps = torch.zeros(5, size, size)
    for i, boxes in enumerate(SCRATCHES.values()):
        for r0, r1, c0, c1 in boxes:
            maps[2 + i, r0 // cell:(r1 - 1) // cell + 1, c0 // cell:(c1 - 1) // cell + 1] = 1.0
    return maps


@pytest.mark.parametrize("model_size", [16, 32, 64])
def test_a_perfect_map_at_model_resolution_scores_about_one(scratched, model_size):
    """The masks stay at their own 256 px, every scratch pixel kept; the model-resolution mask,
    upsampled, ranks the scratches above nearly every normal pixel (only the normal pixels of the
    cells a scratch touches tie or beat some of them)."""
    root, paths = scratched
    masks, size = load_evaluation_masks(root, "widget", model_size, paths)
    assert size == 256 and masks.shape == (5, 256, 256)
    assert masks.sum().item() == 180 + 180 + 360  # every pixel of every scratch
    labels = torch.tensor([0, 0, 1, 1, 1])
    maps = _perfect_map(model_size)
    metrics = metrics_at_size(labels, maps.flatten(1).amax(1), masks, maps, ["good"] * 2 + ["scratch"] * 3)
    assert metrics["pixel_auroc"] > 0.99 and metrics["aupro"] > 0.95
    assert metrics["per_defect"]["scratch"]["pixel_auroc"] == metrics["pixel_auroc"]  # same pixels, same path


def test_masks_over_the_cap_are_shrunk_keeping_defects_and_a_size_can_be_given(tmp_path, scratched):
    root, paths = scratched
    image = np.zeros((600, 600, 3), np.uint8)
    _write(tmp_path / "big" / "train" / "good" / "000.png", image)
    _write(tmp_path / "big" / "test" / "crack" / "000.png", image)
    mask = np.zeros((600, 600), np.uint8)
    mask[300, 100:500] = 255  # one pixel wide
    _write(tmp_path / "big" / "ground_truth" / "crack" / "000_mask.png", mask)
    masks, size = load_evaluation_masks(tmp_path, "big", 32, [str(tmp_path / "big" / "test" / "crack" / "000.png")])
    assert size == EVAL_SIZE_CAP == 256 and masks.shape == (1, 256, 256)
    assert 0 < masks[0].any(dim=1).sum() <= 2 and masks.sum() >= 400 * 256 / 600  # one or two rows, whole length
    masks, size = load_evaluation_masks(root, "widget", 32, paths, eval_size=128)
    assert size == 128 and masks.shape == (5, 128, 128)
    assert masks.flatten(1).amax(1).tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="not the 4 images mapped"):
        load_evaluation_masks(root, "widget", 32, paths[:4])


def test_maps_are_upsampled_to_the_masks_bilinear():
    masks = torch.zeros(2, 8, 8)
    masks[1, 2:4, 2:4] = 1
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    got = metrics_at_size([0, 1], [0.1, 0.9], masks, maps)
    up = torch.nn.functional.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert got == compute_metrics([0, 1], [0.1, 0.9], masks, up)
    assert metrics_at_size([0, 1], [0.1, 0.9], None, maps)["pixel_auroc"] is None
