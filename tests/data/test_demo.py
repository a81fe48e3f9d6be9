"""Tests for the embedded demo category (transgan_lib.demo): layout, determinism, difficulty."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from transgan_lib.data import demo
from transgan_lib.data.demo import (
    DEMO_CATEGORY,
    DEMO_DEFECTS,
    HOLDOUT_CATEGORY,
    HOLDOUT_DEFECTS,
    ensure_demo_data,
    prepare_data,
)
from transgan_lib.data.mvtec import DatasetError, MVTecAD, stack_dataset

SMALL = dict(n_train=3, n_test_good=2, n_test_per_defect=2, size=48)


def tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    start = time.perf_counter()
    cat = ensure_demo_data(root)
    return root, cat, time.perf_counter() - start


def test_default_demo_layout_and_loading(default_demo):
    root, cat, seconds = default_demo
    assert cat == root / DEMO_CATEGORY and seconds < 60
    train = MVTecAD(data_root=root, category=DEMO_CATEGORY, split="train", image_size=64)
    test = MVTecAD(data_root=root, category=DEMO_CATEGORY, split="test", image_size=64)
    assert len(train) == 200 and len(test) == 40 + 20 * len(DEMO_DEFECTS)
    assert test.defect_types == sorted(DEMO_DEFECTS) and len(DEMO_DEFECTS) >= 3
    assert test.labels.count(0) == 40
    with Image.open(cat / "train" / "good" / "000.png") as img:
        assert img.mode == "RGB" and img.size == (128, 128)
        rgb = np.asarray(img, dtype=np.float32)
    assert rgb[..., 0].mean() > rgb[..., 2].mean() + 10  # tinted, not grey
    assert not list(root.glob(".*building*")) and not list(root.glob(".*old*"))  # no temp left


def test_default_demo_masks(default_demo):
    _, cat, _ = default_demo
    ranges = {"scratch": (0.005, 0.04), "stain": (0.01, 0.08), "patch": (0.01, 0.08)}
    for defect in DEMO_DEFECTS:
        images = sorted((cat / "test" / defect).glob("*.png"))
        assert len(images) == 20
        fractions = []
        for p in images:
            with Image.open(cat / "ground_truth" / defect / f"{p.stem}_mask.png") as mask_img, \
                    Image.open(p) as img:
                assert mask_img.mode == "L" and mask_img.size == img.size
                m = np.asarray(mask_img)
            assert set(np.unique(m)) == {0, 255}
            border = np.concatenate([m[:2].ravel(), m[-2:].ravel(), m[:, :2].ravel(), m[:, -2:].ravel()])
            assert border.max() == 0  # defects never touch the image border
            fractions.append((m > 0).mean())
        lo, hi = ranges[defect]
        assert lo <= min(fractions) and max(fractions) <= hi, (defect, min(fractions), max(fractions))


def test_default_demo_mean_intensity_does_not_separate(default_demo):
    root, _, _ = default_demo
    test = stack_dataset(MVTecAD(data_root=root, category=DEMO_CATEGORY, split="test", image_size=64))
    score = test["images"].mean(dim=(1, 2, 3)).numpy()
    auroc = roc_auc_score(test["labels"].numpy(), score)
    assert max(auroc, 1 - auroc) <= 0.7


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defects_are_visible_inside_mask_only(seed, category):
    # Same generator state -> same background and lighting, so the difference is the defect alone.
    good, good_mask = demo.make_demo_image(np.random.default_rng(seed), 64, "good", category)
    assert good_mask.max() == 0
    for defect in demo.demo_spec(category).defects:
        img, mask = demo.make_demo_image(np.random.default_rng(seed), 64, defect, category)
        m = mask > 0
        diff = np.abs(img.astype(np.float32) - good.astype(np.float32)).mean(-1)  # (H, W)
        smallest = 0.001 if defect in demo.INDEPENDENT_DEFECTS else 0.005  # cracks and spots: under 1 %
        assert smallest < m.mean() < 0.12, (defect, m.mean())
        assert diff[m].mean() > 8, (defect, diff[m].mean())
        assert diff[~m].mean() < 2, (defect, diff[~m].mean())
    with pytest.raises(ValueError, match=f"unknown {category} defect"):
        demo.make_demo_image(np.random.default_rng(0), 64, "dust", category)


def test_holdout_category_is_another_surface_with_other_defects(tmp_path):
    """The held-out demo is built like the demo, from another photo, with none of its defect kinds."""
    assert not set(HOLDOUT_DEFECTS) & set(DEMO_DEFECTS)
    cat = prepare_data(tmp_path, HOLDOUT_CATEGORY, **SMALL)
    test = MVTecAD(data_root=tmp_path, category=HOLDOUT_CATEGORY, split="test", image_size=32)
    assert test.defect_types == sorted(HOLDOUT_DEFECTS) and len(test) == 2 + 2 * 3
    with Image.open(cat / "train" / "good" / "000.png") as img:
        rgb = np.asarray(img, dtype=np.float32)
    assert rgb[..., 1].mean() > rgb[..., 0].mean() + 10  # green, not the demo's terracotta
    assert tree_bytes(cat) != tree_bytes(ensure_demo_data(tmp_path / "d", **SMALL))


NEW_SURFACES = [demo.RETINA_CATEGORY, demo.TEXT_CATEGORY, demo.HOPPER_CATEGORY]


@pytest.mark.parametrize("category", [demo.GRAVEL_CATEGORY, demo.TISSUE_CATEGORY] + NEW_SURFACES)
def test_more_held_out_surfaces_are_built_from_other_photos(tmp_path, category):
    """demo_gravel, demo_tissue and the three newest: other bundled photos (colour ones read as their grey
    level), their own defect folders, each build different from the demo's and the held-out demo's."""
    spec = demo.demo_spec(category)
    assert [s.texture for s in demo.DEMO_SPECS.values()].count(spec.texture) == 1
    assert demo._texture(spec.texture).ndim == 2
    cat = prepare_data(tmp_path, category, **SMALL)
    test = MVTecAD(data_root=tmp_path, category=category, split="test", image_size=32)
    assert test.defect_types == sorted(spec.defects) and len(test) == 2 + 2 * len(spec.defects)
    for other in (DEMO_CATEGORY, HOLDOUT_CATEGORY):
        assert tree_bytes(cat) != tree_bytes(ensure_demo_data(tmp_path / other, other, **SMALL))
    assert json.loads((cat / demo.MARKER).read_text())["defects"] == list(spec.defects)


def test_build_is_deterministic(tmp_path):
    a = ensure_demo_data(tmp_path / "a", **SMALL, seed=3)
    b = ensure_demo_data(tmp_path / "b", **SMALL, seed=3)
    c = ensure_demo_data(tmp_path / "c", **SMALL, seed=4)
    ta, tb, tc = tree_bytes(a), tree_bytes(b), tree_bytes(c)
    assert ta == tb
    assert ta.keys() == tc.keys() and ta["train/good/000.png"] != tc["train/good/000.png"]
    n_pngs = SMALL["n_train"] + SMALL["n_test_good"] + 2 * SMALL["n_test_per_defect"] * len(DEMO_DEFECTS)
    assert sum(k.endswith(".png") for k in ta) == n_pngs


def test_build_is_idempotent_and_rebuilds_on_new_params(tmp_path):
    cat = ensure_demo_data(tmp_path, **SMALL)
    marker = cat / demo.MARKER
    stamp = (marker.stat().st_mtime_ns, (cat / "train" / "good" / "000.png").stat().st_mtime_ns)
    time.sleep(0.01)
    assert ensure_demo_data(tmp_path, **SMALL) == cat
    assert (marker.stat().st_mtime_ns, (cat / "train" / "good" / "000.png").stat().st_mtime_ns) == stamp
    assert json.loads(marker.read_text())["n_train"] == 3
    ensure_demo_data(tmp_path, **{**SMALL, "n_train": 4})
    assert json.loads(marker.read_text())["n_train"] == 4
    assert len(list((cat / "train" / "good").glob("*.png"))) == 4
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_CATEGORY]  # no temp or old folders left


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = demo.make_demo_image

    def crash_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "make_demo_image", crash_later)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo, "make_demo_image", real)
    assert (ensure_demo_data(tmp_path, **SMALL) / demo.MARKER).is_file()


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / DEMO_CATEGORY / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not a complete demo build"):
        ensure_demo_data(tmp_path, **SMALL)
    assert (tmp_path / DEMO_CATEGORY / "train").is_dir()


def test_prepare_data(tmp_path):
    cat = prepare_data(tmp_path, DEMO_CATEGORY, **SMALL)
    assert (cat / "test" / "stain").is_dir()
    assert len(MVTecAD(data_root=tmp_path, category=DEMO_CATEGORY, split="test", image_size=16)) == 8
    with pytest.raises(DatasetError, match="Categories found under .*demo"):
        prepare_data(tmp_path, "bottle")
    (tmp_path / "copy").mkdir()
    (cat.rename(tmp_path / "copy" / "mycat"))
    assert prepare_data(tmp_path / "copy", "mycat") == tmp_path / "copy" / "mycat"


def test_prepare_data_keeps_an_existing_build_of_any_size(tmp_path):
    cat = prepare_data(tmp_path, DEMO_CATEGORY, **SMALL)
    marker = (cat / ".demo_complete").stat().st_mtime_ns
    assert prepare_data(tmp_path, DEMO_CATEGORY) == cat  # no kwargs: the small build stays
    assert (cat / ".demo_complete").stat().st_mtime_ns == marker
    assert len(MVTecAD(data_root=tmp_path, category=DEMO_CATEGORY, split="test", image_size=16)) == 8


def test_the_newest_surfaces_draw_their_defects_with_code_shared_with_no_other_defect():
    """demo_retina, demo_text and demo_hopper test on `independent_defects` only, a module that imports
    nothing from the training defects (synthetic), the map choice's probe defects, the other demo
    defects, or the repository's filters: whatever the detectors learn or choose on, these were drawn apart."""
    import ast
    import inspect

    from transgan_lib.data import independent_defects

    for category in NEW_SURFACES:
        assert set(demo.demo_spec(category).defects) <= set(independent_defects.DEFECTS)
        assert all(demo.GREY_DEFECTS[d] is independent_defects.DEFECTS[d] for d in demo.demo_spec(category).defects)
    tree = ast.parse(inspect.getsource(independent_defects))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "typing", "numpy", "PIL", "scipy"}, imported
    assert not set(independent_defects.DEFECTS) & set(demo.DEMO_DEFECTS + demo.HOLDOUT_DEFECTS + ("stain",))
