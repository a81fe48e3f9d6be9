"""A user's own folders (anomalib's Folder names): good parts, rejects, optional masks, any image format."""
import csv
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from transgan_lib.data.folder import FolderDataset, FolderSpec, folder_spec_of
from transgan_lib.data.images import DatasetError


def _folders(demo_root, root, *, masks: bool, odd: bool = False):
    """good/ (the demo's 40 training normals), rejects scratch/ and patch/, and masks/ when asked; with
    `odd`, a 16-bit grey and a 3:2 image among the good parts."""
    demo = demo_root / "demo"
    (root / "good").mkdir(parents=True)
    for p in sorted((demo / "train" / "good").glob("*.png")):
        shutil.copy(p, root / "good" / p.name)
    for defect in ("scratch", "patch"):
        (root / defect).mkdir()
        for p in sorted((demo / "test" / defect).glob("*.png")):
            shutil.copy(p, root / defect / f"{defect}_{p.name}")
            if masks:
                (root / "masks").mkdir(exist_ok=True)
                mask = demo / "ground_truth" / defect / f"{p.stem}_mask.png"
                shutil.copy(mask, root / "masks" / f"{defect}_{p.name}")
    if odd:
        grey = np.asarray(Image.open(next((root / "good").glob("*.png"))).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(root / "good" / "z_16bit.png")
        Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(root / "good" / "z_wide.tif")
    return root


def test_folder_splits_defects_and_optional_masks(demo_root, tmp_path):
    root = _folders(demo_root, tmp_path / "line", masks=True)
    spec = FolderSpec.create(normal_dir=root / "good", abnormal_dir=[str(root / "scratch"), str(root / "patch")],
                             mask_dir=root / "masks")
    train, test = FolderDataset(spec, split="train", image_size=32), FolderDataset(spec, split="test", image_size=32)
    assert len(train) == 32 and test.labels.count(0) == 8 and test.labels.count(1) == 6  # 20 % of 40 held out
    assert not set(train.paths) & set(test.paths)  # the held-out good parts are never trained on
    assert test.defect_types == ["patch", "scratch"] and test.has_masks
    assert test.load_masks(32)[test.labels.index(1)].sum() > 0
    no_masks = FolderDataset(FolderSpec.create(normal_dir=root / "good", abnormal_dir=root / "scratch"), split="test")
    assert not no_masks.has_masks and no_masks[len(no_masks) - 1]["mask"].sum() == 0
    # relative folders are read from root; a config's training seed does not move the test split
    again = FolderDataset(FolderSpec.create(normal_dir="good", abnormal_dir="scratch", root=root), split="train")
    assert sorted(again.paths) == sorted(train.paths)
    assert folder_spec_of({"normal_dir": None}) is None
    assert folder_spec_of({"normal_dir": "good", "seed": 7}).seed == 0


def test_folder_errors_name_the_fix(demo_root, tmp_path):
    root = _folders(demo_root, tmp_path / "line", masks=True)
    with pytest.raises(DatasetError, match="normal_dir .*nowhere is not a folder"):
        FolderDataset(FolderSpec.create(normal_dir=tmp_path / "nowhere"))
    next((root / "masks").glob("scratch_*")).unlink()
    with pytest.raises(DatasetError, match="has no mask there .*leave mask_dir out"):
        spec = FolderSpec.create(normal_dir=root / "good", abnormal_dir=root / "scratch", mask_dir=root / "masks")
        FolderDataset(spec, split="test")
    with pytest.raises(DatasetError, match="no good test parts"):
        FolderSpec.create(normal_dir=root / "good", abnormal_dir=root / "scratch", normal_split_ratio=0)


@pytest.mark.parametrize("masks", [False, True])
def test_own_folders_train_evaluate_and_score(demo_root, tmp_path, masks):
    """Notebooks 02 -> 03 -> 04 and `score` through the library calls they make, on Folder data (with 16-bit
    and 3:2 images among the good parts); pixel metrics only with masks."""
    from transgan_lib.cli import main
    from transgan_lib.config import MappingConfig, TrainConfig
    from transgan_lib.methods.pipeline import evaluate, run_mapping
    from transgan_lib.methods.transgan.train import train_gan
    root = _folders(demo_root, tmp_path / "line", masks=masks, odd=True)
    cfg = TrainConfig(category="line", output_dir=str(tmp_path / "runs"), normal_dir=str(root / "good"),
                      abnormal_dir=[str(root / "scratch"), str(root / "patch")],
                      mask_dir=str(root / "masks") if masks else None, image_size=32, model_size="tiny",
                      latent_dim=32, epochs=1, batch_size=8, data_root=str(tmp_path / "no_mvtec_here"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes on the 16-bit and non-square files
        train_gan(cfg, progress=False)
        run_mapping(MappingConfig(iterations=2, batch_size=16, synthetic_copies=1), data_root=cfg.data_root,
                    category="line", output_dir=cfg.output_dir, device="cpu", progress=False)
        metrics, _ = evaluate(data_root=cfg.data_root, category="line", output_dir=cfg.output_dir)
    assert metrics["n_test"] == 14 and 0 <= metrics["image_auroc"] <= 1
    if masks:
        assert 0 <= metrics["pixel_auroc"] <= 1 and "unavailable" not in metrics
    else:
        assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
        assert "no mask" in metrics["unavailable"]["pixel_auroc"]
        assert metrics["baselines"]["patch_nn"]["pixel_auroc"] is None
    main(["score", "--checkpoint", f"{cfg.output_dir}/line/checkpoint.pt", "--images", str(root / "scratch"),
          "--out", str(tmp_path / "scored"), "--device", "cpu"])
    rows = list(csv.DictReader(open(tmp_path / "scored" / "scores.csv")))
    assert len(rows) == 3 and all(r["decision"] in ("normal", "anomalous") for r in rows)
