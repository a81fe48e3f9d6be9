"""Tests for transgan_lib.data on tiny fake MVTec AD folders written in tmp_path."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from transgan_lib.data.mvtec import (
    MVTEC_CATEGORIES,
    DatasetError,
    MVTecAD,
    load_image,
    load_mask,
    resize_mask,
    split_train_val,
    stack_dataset,
)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_category(root: Path, name: str = "widget", *, n_train: int = 5, n_good: int = 3,
                   defects=(("crack", 2), ("hole", 1)), size: int = 24, seed: int = 0) -> Path:
    """A fake MVTec category: random RGB images, rectangular masks at rows 4:10, cols 6:12."""
    rng = np.random.default_rng(seed)
    cat = root / name
    for i in range(n_train):
        write_png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
    for i in range(n_good):
        write_png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
    for defect, n in defects:
        for i in range(n):
            write_png(cat / "test" / defect / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[4:10, 6:12] = 255
            write_png(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return cat


# ----------------------------------------------------------------------------- loading
def test_mvtec_categories_are_the_official_fifteen():
    assert len(MVTEC_CATEGORIES) == 15 and "metal_nut" in MVTEC_CATEGORIES and "zipper" in MVTEC_CATEGORIES


def test_load_image_scales_to_minus_one_one(tmp_path):
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 0, 51, 255
    x = load_image(write_png(tmp_path / "a.png", arr), 20)
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[2], torch.tensor(1.0))
    assert torch.allclose(x[1], torch.tensor(51 / 127.5 - 1), atol=1e-6)


def test_grayscale_rgba_palette_become_rgb_and_resize(tmp_path):
    grey = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (30, 1))  # (30, 30) horizontal ramp
    x = load_image(write_png(tmp_path / "g.png", grey), 16)
    assert x.shape == (3, 16, 16)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x[0, 0, -1] > x[0, 0, 0]  # the ramp survives the resize
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    y = load_image(write_png(tmp_path / "rgba.png", rgba), 16)
    assert y.shape == (3, 16, 16) and torch.allclose(y[0], torch.tensor(1.0))
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).convert("P").save(tmp_path / "p.png")
    z = load_image(tmp_path / "p.png", 8)
    assert z.shape == (3, 8, 8) and abs(z.mean().item() - (200 / 127.5 - 1)) < 0.05


def test_load_mask_is_binary_nearest(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 7  # any value > 0 is defective
    mask = load_mask(write_png(tmp_path / "m.png", m), 16)
    assert mask.shape == (1, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum().item() == 64  # 16x16 square -> 8x8 at half size


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_a_thin_scratch_keeps_its_pixels_at_every_size(tmp_path, size):
    """A 3 x 60 px scratch of a 256 px mask, between the rows nearest neighbour reads at 16, 32 and
    64 px (16k + 8, 8k + 4, 4k + 2): a shrunk mask must still mark it, and only around it."""
    m = np.zeros((256, 256), np.uint8)
    m[111:114, 70:130] = 255
    mask = load_mask(write_png(tmp_path / "scratch_mask.png", m), size)
    assert mask.shape == (1, size, size) and set(mask.unique().tolist()) <= {0.0, 1.0}
    cell = 256 // size
    rows, cols = mask[0].nonzero(as_tuple=True)
    assert len(rows) > 0  # the scratch survives
    # only the cells the scratch touches: rows 111-113 and columns 70-129 of the full mask
    assert rows.min() == 111 // cell and rows.max() == 113 // cell
    assert cols.min() == 70 // cell and cols.max() == 129 // cell
    if size == 256:
        assert mask.sum() == 180


def test_resize_mask_keeps_regions_of_an_odd_ratio_and_enlarges_by_nearest():
    m = torch.zeros(1, 900, 900)
    m[:, 450:452, 100:800] = 1  # 2 px line of a 900 px mask (a 0.07 cell at 32 px)
    small = resize_mask(m, 32)
    assert small.shape == (1, 32, 32) and small.sum() > 0 and small[0].any(dim=1).sum() <= 2
    assert resize_mask(torch.eye(4)[None], 8).sum() == 16  # each pixel a 2 x 2 block
    assert torch.equal(resize_mask(m, 900), m)


def test_masks_at_their_own_size(tmp_path):
    write_category(tmp_path, size=24)
    ds = MVTecAD(data_root=tmp_path, category="widget", split="test", image_size=8, mask_size=24)
    assert ds.native_mask_size() == 24
    crack = ds[0]
    assert crack["image"].shape == (3, 8, 8) and crack["mask"].shape == (1, 24, 24)
    assert crack["mask"].sum() == 36  # the 6 x 6 square at full size
    masks = ds.load_masks(12)  # any size, images not decoded
    assert masks.shape == (6, 1, 12, 12) and masks[0].sum() == 9 and masks[2].sum() == 0
    assert MVTecAD(data_root=tmp_path, category="widget", split="train").native_mask_size() is None


# ----------------------------------------------------------------------------- dataset
def test_train_items(tmp_path):
    write_category(tmp_path)
    ds = MVTecAD(data_root=tmp_path, category="widget", split="train", image_size=16)
    assert len(ds) == 5 and ds.labels == [0] * 5 and ds.defects == ["good"] * 5
    assert ds.paths == sorted(ds.paths) and ds.defect_types == []
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert item["image"].min() >= -1 and item["image"].max() <= 1 and item["image"].std() > 0.1
    assert item["label"] == 0 and item["defect"] == "good" and item["mask"].sum() == 0
    assert item["path"].endswith("train/good/000.png")


def test_test_items_labels_masks_defects(tmp_path):
    write_category(tmp_path, size=24)
    ds = MVTecAD(data_root=tmp_path, category="widget", split="test", image_size=24)
    assert len(ds) == 6
    assert ds.defects == ["crack", "crack", "good", "good", "good", "hole"]  # sorted by folder
    assert ds.labels == [1, 1, 0, 0, 0, 1]
    assert ds.defect_types == ["crack", "hole"]
    crack, good = ds[0], ds[2]
    expected = torch.zeros(1, 24, 24)
    expected[:, 4:10, 6:12] = 1
    assert torch.equal(crack["mask"], expected) and crack["label"] == 1 and crack["defect"] == "crack"
    assert good["mask"].sum() == 0 and good["label"] == 0
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["label"].tolist() == [1, 1, 0, 0]


def test_extensions_case_insensitive_and_hidden_files_skipped(tmp_path):
    cat = write_category(tmp_path, n_train=1)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(cat / "train" / "good" / "x.JPG", format="JPEG")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(cat / "train" / "good" / "y.bmp")
    (cat / "train" / "good" / "._000.png").write_bytes(b"AppleDouble junk")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    ds = MVTecAD(data_root=tmp_path, category="widget", split="train", image_size=8)
    assert [Path(p).name for p in ds.paths] == ["000.png", "x.JPG", "y.bmp"]
    ds.verify()


def test_cache_keeps_decoded_tensors(tmp_path):
    cat = write_category(tmp_path, n_train=1)
    for cache in (True, False):
        ds = MVTecAD(data_root=tmp_path, category="widget", image_size=8, cache=cache)
        first = ds[0]["image"].clone()
        write_png(cat / "train" / "good" / "000.png", np.full((24, 24, 3), 255, np.uint8))
        assert torch.equal(ds[0]["image"], first) == cache
        write_category(tmp_path, n_train=1)  # restore the original file


# ----------------------------------------------------------------------------- errors
def test_missing_root_says_how_to_get_data(tmp_path):
    with pytest.raises(DatasetError) as e:
        MVTecAD(data_root=tmp_path / "nope", category="bottle")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "mvtec.com" in msg and "demo" in msg
    assert "bottle/train/good" in msg


def test_missing_category_lists_found_ones(tmp_path):
    write_category(tmp_path, "alpha")
    write_category(tmp_path, "beta")
    (tmp_path / "random_folder").mkdir()
    with pytest.raises(DatasetError) as e:
        MVTecAD(data_root=tmp_path, category="gamma")
    msg = str(e.value)
    assert "alpha, beta" in msg and "random_folder" not in msg and "train/good" in msg
    assert str(tmp_path / "gamma") in msg


def test_misplaced_root_pointing_at_category(tmp_path):
    cat = write_category(tmp_path, "widget")
    with pytest.raises(DatasetError, match="parent folder") as e:
        MVTecAD(data_root=cat, category="widget")
    assert str(tmp_path) in str(e.value)


def test_category_one_level_deeper_is_suggested(tmp_path):
    write_category(tmp_path / "mvtec_anomaly_detection", "widget")
    with pytest.raises(DatasetError, match="one level deeper") as e:
        MVTecAD(data_root=tmp_path, category="widget")
    assert str(tmp_path / "mvtec_anomaly_detection") in str(e.value)


def test_empty_train_folder_is_named(tmp_path):
    cat = write_category(tmp_path, n_train=0)
    (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetError, match="no images") as e:
        MVTecAD(data_root=tmp_path, category="widget", split="train")
    assert str(cat / "train" / "good") in str(e.value)


def test_empty_or_missing_test_folder_is_named(tmp_path):
    cat = write_category(tmp_path, n_good=0, defects=())
    with pytest.raises(DatasetError, match="missing") as e:
        MVTecAD(data_root=tmp_path, category="widget", split="test")
    assert str(cat / "test") in str(e.value)
    (cat / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images") as e:
        MVTecAD(data_root=tmp_path, category="widget", split="test")
    assert str(cat / "test") in str(e.value)


def test_missing_mask_names_image_and_expected_mask(tmp_path):
    cat = write_category(tmp_path)
    (cat / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(DatasetError) as e:
        MVTecAD(data_root=tmp_path, category="widget", split="test")
    msg = str(e.value)
    assert str(cat / "test" / "hole" / "000.png") in msg
    assert str(cat / "ground_truth" / "hole" / "000_mask.png") in msg
    MVTecAD(data_root=tmp_path, category="widget", split="train")  # train does not need masks


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_raises_on_load_and_verify(tmp_path, kind):
    cat = write_category(tmp_path, n_train=3)
    bad = cat / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not a png at all" * 8 if kind == "garbage" else data[: len(data) // 2])
    ds = MVTecAD(data_root=tmp_path, category="widget", image_size=8)  # construction is cheap
    ds[0]
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[1]
    assert str(bad) in str(e.value) and "delete or replace" in str(e.value)
    with pytest.raises(DatasetError) as e:
        MVTecAD(data_root=tmp_path, category="widget", image_size=8).verify()
    assert str(bad) in str(e.value) and "1 unreadable" in str(e.value)


def test_verify_passes_and_fills_cache(tmp_path):
    write_category(tmp_path)
    ds = MVTecAD(data_root=tmp_path, category="widget", split="test", image_size=8)
    assert ds.verify() is ds and len(ds._cache) == len(ds)


# ----------------------------------------------------------------------------- helpers
def test_split_train_val_deterministic_disjoint_sized(tmp_path):
    write_category(tmp_path, n_train=20)
    ds = MVTecAD(data_root=tmp_path, category="widget", image_size=8)
    tr, va = split_train_val(ds, 0.1, seed=0)
    tr2, va2 = split_train_val(ds, 0.1, seed=0)
    _, va3 = split_train_val(ds, 0.25, seed=1)
    assert (len(tr), len(va)) == (18, 2)
    assert tr.indices == tr2.indices and va.indices == va2.indices
    assert not set(tr.indices) & set(va.indices)
    assert sorted(tr.indices + va.indices) == list(range(20))
    assert len(va3) == 5 and va3.indices != va.indices
    assert len(split_train_val(ds, 0.0)[1]) == 0


def test_split_train_val_at_least_one_val(tmp_path):
    write_category(tmp_path, n_train=3)
    ds = MVTecAD(data_root=tmp_path, category="widget", image_size=8)
    tr, va = split_train_val(ds, 0.01)
    assert (len(tr), len(va)) == (2, 1)
    with pytest.raises(ValueError):
        split_train_val(ds, 1.0)


def test_stack_dataset(tmp_path):
    write_category(tmp_path)
    ds = MVTecAD(data_root=tmp_path, category="widget", split="test", image_size=16)
    s = stack_dataset(ds)
    assert s["images"].shape == (6, 3, 16, 16) and s["masks"].shape == (6, 1, 16, 16)
    assert s["labels"].dtype == torch.long and s["labels"].tolist() == ds.labels
    assert s["defects"] == ds.defects and s["paths"] == ds.paths
    assert torch.equal(s["images"][5], ds[5]["image"])
    assert (s["masks"].sum((1, 2, 3)) > 0).long().tolist() == ds.labels
    sub = stack_dataset(split_train_val(ds, 0.5, seed=0)[1])
    assert sub["images"].shape == (3, 3, 16, 16)
