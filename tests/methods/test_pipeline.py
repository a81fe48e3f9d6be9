import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transgan_lib.config import ConfigError, MappingConfig, TrainConfig
from transgan_lib.data.mvtec import MVTecAD
from transgan_lib.data.synthetic import cutpaste
from transgan_lib.methods import pipeline
from transgan_lib.detection.baselines import mean_image_baseline
from transgan_lib.methods.transgan.mapping_file import MAPPING_FORMAT
from transgan_lib.detection.maps import resize_maps
from transgan_lib.methods.pipeline import (
    FALLBACK_MAP_KIND,
    evaluate,
    format_metrics,
    load_mapping,
    load_splits,
    mapping_path,
    run_mapping,
    score_maps,
    select_map_kind,
    verdict,
)
from transgan_lib.metrics import image_auroc, pixel_auroc, threshold_from_normals
from transgan_lib.runs import file_fingerprint, run_paths

DEMO_MASK_SIZE = 64  # conftest's small demo is built at 64 px, masks included
METRICS_KEYS = {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "per_defect", "method",
                "iterations", "n_test", "seconds_per_image", "baselines", "map_kind", "map_selection", "sigma",
                "alternatives", "restarts", "candidates", "lambda_", "mapping_config", "fingerprints", "test_scores",
                "eval_size", "image_f1_at_threshold"}


def _map(cfg, encoder_epochs=50, **settings):
    config = MappingConfig(**{**dict(method="iterative", iterations=4, batch_size=8), **settings})
    return run_mapping(config, data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir,
                       device="cpu", encoder_epochs=encoder_epochs, progress=False)


def _evaluate(cfg, **kw):
    return evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, **kw)


def _splits_and_val(cfg, method="iterative"):
    """(validation images, their MappingResult) of cfg's mapping file."""
    saved = load_mapping(cfg.output_dir, cfg.category, method)
    return load_splits(cfg.data_root, cfg.category, TrainConfig.from_dict(saved.train_config))["val"]["images"], \
        saved.val.result


def _good_folder(folder, n, size=DEMO_MASK_SIZE, seed=900):
    """`folder` holding n good demo images that no split of the small demo holds (rng streams it never uses)."""
    import numpy as np
    from PIL import Image
    from transgan_lib.data.demo import make_demo_image
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_demo_image(np.random.default_rng([0, seed, i]), size)[0]).save(folder / f"{i:03d}.png")
    return folder


def test_mapping_then_metrics_follow_the_protocol(trained_run):
    cfg = trained_run
    mapping, splits = _map(cfg)
    saved = load_mapping(cfg.output_dir, cfg.category, "iterative")
    assert torch.equal(saved.test.result.z, mapping.test.result.z) and saved.test.result.iterations == 4
    assert saved.config == mapping.config == MappingConfig(iterations=4, batch_size=8)
    n_val = len(splits["val"]["images"])
    assert len(mapping.val.labels) == n_val == 4  # 10% of 40 train images
    assert set(mapping.val.labels.tolist()) == {0}  # validation = normals only

    metrics, arrays = _evaluate(cfg)
    on_disk = json.loads((Path(cfg.output_dir) / "demo" / "metrics.json").read_text())
    assert METRICS_KEYS <= set(on_disk) and on_disk["n_test"] == 15
    assert set(on_disk["baselines"]) == {"mean_image", "patch_nn"}
    assert set(on_disk["per_defect"]) == {"patch", "scratch", "stain"}
    assert 0.0 <= on_disk["image_auroc"] <= 1.0 and 0.0 <= on_disk["pixel_auroc"] <= 1.0
    # The threshold comes from the validation normals' scores, never from the test set: by default the
    # conformal rule, whose 4 normals support a false-positive bound of 1/5 at best (their largest score).
    val_scores = score_maps(splits["val"]["images"], mapping.val.result, map_kind=on_disk["map_kind"])["score"]
    assert on_disk["threshold"] == pytest.approx(float(val_scores.max()))
    assert on_disk["threshold_calibration"] == {
        "rule": "conformal", "n": 4, "held_apart": False, "normals": "the 4 validation normals (the map was also "
        "chosen on them)", "fpr_target": 0.05, "fpr_bound": 0.2, "supported": False, "normals_needed": 19,
        "fpr_upper_90": pytest.approx(1 - 0.1 ** (1 / 4))}  # the largest of 4: its rate is Beta(1, 4)
    # Heatmaps are computed against the reconstructions G(z*) of the optimized codes.
    assert torch.allclose(arrays["reconstructions"], mapping.test.result.reconstructions)
    assert arrays["maps"].shape == (15, 32, 32)
    assert "baseline: mean_image" in format_metrics(metrics)
    for row in (on_disk, *on_disk["baselines"].values(), *on_disk["alternatives"].values()):
        assert row["image_f1_at_threshold"] == row["at_threshold"]["f1"]  # beside the oracle F1-max
    # The settings and the files the scores were made from, and the per-image test scores.
    run = run_paths(cfg.output_dir, cfg.category)
    assert on_disk["mapping_config"] == MappingConfig(iterations=4, batch_size=8).to_dict()
    assert on_disk["fingerprints"] == {"checkpoint": file_fingerprint(run.checkpoint), "encoder": None,
                                       "mapping": file_fingerprint(run.mapping("iterative"))}
    assert on_disk["test_scores"]["paths"] == splits["test"]["paths"]
    assert on_disk["test_scores"]["scores"] == pytest.approx(arrays["scores"].tolist())
    # The map kind was chosen on the validation normals and their CutPaste copies (mapped too).
    syn = saved.val_synthetic
    assert torch.equal(syn.images, cutpaste(splits["val"]["images"].repeat_interleave(3, 0), seed=0)[0])
    assert syn.result.reconstructions.shape == (12, 3, 32, 32)  # 3 copies of each of 4 normals
    sel = on_disk["map_selection"]
    assert on_disk["map_kind"] == sel["chosen"] == max(sel["synthetic_auroc"], key=sel["synthetic_auroc"].get)
    assert set(sel["synthetic_auroc"]) == {"residual", "shift_residual", "ssim", "msgms"}


def test_evaluate_settings_come_from_the_mapping_file_unless_given(evaluated_run, copy_run, tmp_path):
    cfg = copy_run(evaluated_run[0], tmp_path, files=("checkpoint.pt", "mapping_iterative.pt"))
    metrics, _ = _evaluate(cfg, baselines=False)
    assert metrics["lambda_"] == 0.3 and metrics["sigma"] == 4.0  # the mapping file's MappingConfig
    assert metrics["mapping_config"] == evaluated_run[1].to_dict()
    metrics, _ = _evaluate(cfg, baselines=False, map_kind="ssim", sigma=2.0, threshold_q=90.0)
    assert metrics["map_kind"] == "ssim" and metrics["sigma"] == 2.0
    assert metrics["mapping_config"] == {**evaluated_run[1].to_dict(), "map_kind": "ssim", "sigma": 2.0,
                                         "threshold_q": 90.0, "threshold_rule": "percentile"}  # its old meaning
    assert "90th percentile" in metrics["threshold_rule"]
    v = score_maps(*_splits_and_val(cfg), map_kind="ssim", sigma=2.0)["score"]
    assert metrics["threshold"] == pytest.approx(threshold_from_normals(v, q=90.0))


def test_a_mapping_made_with_another_checkpoint_is_refused(trained_run, copy_run, tmp_path, demo_root):
    from transgan_lib.data.mvtec import load_image
    from transgan_lib.methods.scoring import score_images
    from transgan_lib.methods.transgan.train import train_gan
    cfg = copy_run(trained_run, tmp_path / "a")
    _map(cfg, iterations=1, synthetic_copies=0)
    # the fingerprints survive copying: a copied run (new paths, new mtimes) still evaluates
    moved = copy_run(cfg, tmp_path / "b", files=("checkpoint.pt", "mapping_iterative.pt"))
    _evaluate(moved, baselines=False)
    train_gan(dataclasses.replace(cfg, seed=1), resume=False, progress=False)  # retrain run "a": 1 epoch
    run = run_paths(cfg.output_dir, cfg.category)
    with pytest.raises(ConfigError, match="rerun notebook 03") as err:
        _evaluate(cfg, baselines=False)
    assert str(run.mapping("iterative")) in str(err.value) and str(run.checkpoint) in str(err.value)
    image = load_image(next((demo_root / "demo" / "test" / "good").glob("*.png")), 32)[None]
    with pytest.raises(ConfigError, match="another GAN checkpoint"):
        score_images(run.checkpoint, image, device="cpu", progress=False)


def test_load_mapping_errors_say_to_run_notebook_03(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 03.*method='hybrid'"):
        load_mapping(tmp_path, "demo", "hybrid")
    old = {"method": "iterative", "val": {"z": torch.zeros(2, 4)}, "test": {}, "iterations": 4}  # format 1
    mapping_path(tmp_path, "demo", "iterative").parent.mkdir(parents=True)
    torch.save(old, mapping_path(tmp_path, "demo", "iterative"))
    with pytest.raises(ConfigError, match="older version.*rerun notebook 03"):
        load_mapping(tmp_path, "demo", "iterative")
    assert MAPPING_FORMAT == 2


def test_select_map_kind_picks_the_kind_that_separates_synthetic_anomalies():
    """Reconstructions one pixel off: only the shift-tolerant residual sees normals as normal."""
    stripes = ((torch.arange(32) // 4) % 2).float().expand(1, 3, 32, 32)  # vertical bars, period 8
    contrast = torch.tensor([0.1, 0.1, 0.1, 0.6, 0.9, 1.2]).view(6, 1, 1, 1)
    normals = contrast * stripes - 0.5  # (6, 3, 32, 32) lighting varies
    synthetic = normals[[0, 1, 2, 0, 1, 2]].clone()
    synthetic[:, :, 12:20, 12:20] += 0.25  # small squares on low-contrast normals
    # The generator reproduces each surface one pixel off, and never the squares (score_maps reads
    # these attributes of a MappingResult).
    val = SimpleNamespace(reconstructions=torch.roll(normals, shifts=1, dims=3), total_score=None)
    syn = SimpleNamespace(reconstructions=val.reconstructions[[0, 1, 2, 0, 1, 2]], total_score=None)
    sel = select_map_kind(normals, val, synthetic, syn, sigma=1.0)
    labels = torch.tensor([0] * 6 + [1] * 6)
    for kind, auroc in sel["synthetic_auroc"].items():  # the table is the AUROC of each kind
        scores = torch.cat([score_maps(x, part, map_kind=kind, sigma=1.0)["score"]
                            for x, part in ((normals, val), (synthetic, syn))])
        assert auroc == pytest.approx(image_auroc(labels, scores))
    assert sel["chosen"] == "shift_residual" and sel["synthetic_auroc"]["shift_residual"] == 1.0
    assert select_map_kind(normals, val, None, None)["chosen"] == FALLBACK_MAP_KIND


def test_encoder_method_trains_then_reuses_the_encoder(trained_run):
    cfg = trained_run
    _map(cfg, method="encoder", encoder_epochs=1)
    path = Path(cfg.output_dir) / "demo" / "encoder.pt"
    stamp = path.stat().st_mtime_ns
    again, _ = _map(cfg, method="hybrid", iterations=2, encoder_epochs=1)
    assert path.stat().st_mtime_ns == stamp  # trained against this checkpoint: reused, not retrained
    assert again.test.result.iterations == 2 and again.test.result.method == "hybrid"
    assert again.fingerprints["encoder"] == file_fingerprint(path)


def test_verdict_warns_only_when_the_mean_image_is_not_beaten():
    row = {"image_auroc": 0.6, "baselines": {"mean_image": {"image_auroc": 0.7}}}
    assert "does not beat the mean training image" in verdict(row)
    assert "WARNING" in format_metrics({**row, "per_defect": {}})
    assert verdict({**row, "image_auroc": 0.8}) == ""


def test_pixel_metrics_are_computed_at_the_masks_own_size(evaluated_run, copy_run, tmp_path):
    """The demo's masks are 64 px, the model's maps 32 px: pixel metrics
    compare the masks at 64 px with the maps upsampled (bilinear), unless eval_size says otherwise."""
    cfg = copy_run(evaluated_run[0], tmp_path, files=("checkpoint.pt", "mapping_iterative.pt"))
    test = MVTecAD(data_root=cfg.data_root, category=cfg.category, split="test", image_size=32)
    train = load_splits(cfg.data_root, cfg.category, cfg)["train"]["images"]
    for eval_size, size in ((None, DEMO_MASK_SIZE), (32, 32)):
        metrics, arrays = _evaluate(cfg, eval_size=eval_size)
        masks = test.load_masks(size)  # (15, 1, S, S)
        assert metrics["eval_size"] == size and metrics["image_size"] == 32 and arrays["maps"].shape[-1] == 32
        assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc(masks, resize_maps(arrays["maps"], size)))
        floor = mean_image_baseline(train, arrays["images"], kind=metrics["map_kind"], sigma=metrics["sigma"])[0]
        assert metrics["baselines"]["mean_image"]["pixel_auroc"] == pytest.approx(
            pixel_auroc(masks, resize_maps(floor, size)))  # the floors at the same size, by the same code
        assert json.loads(run_paths(cfg.output_dir, cfg.category).metrics.read_text())["eval_size"] == size
        assert f"pixel metrics at {size} px" in format_metrics(metrics)


def test_the_map_kind_choice_uses_no_test_image(evaluated_run, copy_run, tmp_path, monkeypatch):
    """Evaluated again with other test images, labels and masks (the validation normals and their
    CutPaste copies unchanged), the map-kind table and choice stay exactly the same."""
    cfg = copy_run(evaluated_run[0], tmp_path, files=("checkpoint.pt", "mapping_iterative.pt"))
    first, _ = _evaluate(cfg, baselines=False)
    real_splits, real_masks = pipeline.load_splits, pipeline.load_evaluation_masks

    def other_test_set(*args, **kw):
        splits = real_splits(*args, **kw)
        test, order = splits["test"], torch.randperm(15, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(test["images"].shape, generator=torch.Generator().manual_seed(1))
        others = splits["train"]["images"][:15].flip(-1) + 0.3 * noise  # other images, flipped and noisy
        splits["test"] = {**test, "images": others.clamp(-1, 1), "labels": test["labels"][order],
                          "masks": test["masks"][order]}
        return splits

    def other_masks(*args, **kw):
        masks, size = real_masks(*args, **kw)
        return masks.flip(0), size

    monkeypatch.setattr(pipeline, "load_splits", other_test_set)
    monkeypatch.setattr(pipeline, "load_evaluation_masks", other_masks)
    second, _ = _evaluate(cfg, baselines=False)
    assert second["test_scores"]["scores"] != first["test_scores"]["scores"]  # the test set did change
    assert second["image_auroc"] != first["image_auroc"]
    assert second["map_selection"] == first["map_selection"] and second["map_kind"] == first["map_kind"]
    assert second["threshold"] == first["threshold"]  # from the validation normals alone too


def test_a_run_without_validation_normals_is_refused_before_any_work(trained_run, copy_run, tmp_path, monkeypatch):
    """val_fraction=0 leaves no normal to threshold on or to choose the map kind with: a ConfigError
    saying so, before the training images are read or anything is mapped."""
    cfg = copy_run(trained_run, tmp_path)
    real_load_detector = pipeline.load_detector

    def without_validation(*args, **kw):
        G, D, model_config, train_config = real_load_detector(*args, **kw)
        return G, D, model_config, dataclasses.replace(train_config, val_fraction=0.0)

    def expensive(*args, **kw):
        raise AssertionError("reached the expensive part")

    monkeypatch.setattr(pipeline, "load_detector", without_validation)
    monkeypatch.setattr(pipeline, "train_val_split", expensive)
    monkeypatch.setattr(pipeline, "detect", expensive)
    with pytest.raises(ConfigError, match=r"val_fraction=0\b.*validation normals.*val_fraction > 0"):
        _map(cfg)
    assert not mapping_path(cfg.output_dir, cfg.category, "iterative").exists()


def test_too_few_training_images_for_a_validation_normal_is_refused(tmp_path):
    from PIL import Image
    (tmp_path / "one" / "train" / "good").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "train" / "good" / "000.png")
    config = TrainConfig(data_root=str(tmp_path), category="one", image_size=32, val_fraction=0.1)
    with pytest.raises(ConfigError, match="0 validation images.*at least two training images"):
        load_splits(tmp_path, "one", config)


def test_format_metrics_labels_f1_max_as_an_oracle_beside_the_f1_at_the_threshold():
    row = {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7, "image_f1_max": 0.85, "image_f1_at_threshold": 0.61}
    text = format_metrics({**row, "threshold": 0.3, "at_threshold": {"f1": 0.61}, "eval_size": 128, "image_size": 32,
                           "per_defect": {"crack": {**row, "n": 3}}, "baselines": {"mean_image": row}})
    header, main = text.splitlines()[:2]
    assert "F1-max (oracle)" in header and "F1 @ val thr" in header
    assert header.index("F1-max (oracle)") < header.index("F1 @ val thr")
    assert main.split()[-2:] == ["0.850", "0.610"]
    assert "pixel metrics at 128 px" in text and "best threshold on the test set" in text


def test_the_threshold_is_set_on_held_apart_calibration_normals(restored_run, copy_run, tmp_path):
    from transgan_lib.methods.scoring import Scorer
    from transgan_lib.metrics import conformal_threshold
    cfg = copy_run(restored_run[0], tmp_path / "run", files=("restorer.pt", "mapping_restore.pt"))
    folder = _good_folder(tmp_path / "calibration" / "good", 19)
    metrics, _ = _evaluate(cfg, method="restore", calibration_dir=tmp_path / "calibration", fpr_target=0.1)
    # Scored as the run scores new images, the 19 held-apart normals give the threshold: k = ceil(20 * 0.9) = 18.
    from transgan_lib.data.images import load_image
    images = torch.stack([load_image(p, 32) for p in sorted(folder.iterdir())])
    scores = Scorer(run_paths(cfg.output_dir, cfg.category).root, method="restore", device="cpu").score(
        images, progress=False).scores
    assert metrics["threshold"] == pytest.approx(conformal_threshold(scores, 0.1)[0], rel=1e-5)
    assert metrics["threshold"] != pytest.approx(float(scores.max()))  # the 18th of 19, not their largest
    cal = metrics["threshold_calibration"]
    assert cal["held_apart"] and cal["n"] == 19 and cal["fpr_bound"] == pytest.approx(0.1) and cal["supported"]
    assert "calibration" in cal["normals"] and "apart from every split" in metrics["threshold_rule"]
    # the floors' thresholds are set on the same normals by the same rule
    from transgan_lib.detection.baselines import patch_nn_baseline
    train = load_splits(cfg.data_root, cfg.category, TrainConfig.from_dict(
        load_mapping(cfg.output_dir, cfg.category, "restore").train_config))["train"]["images"]
    floor = patch_nn_baseline(train, images, sigma=metrics["sigma"])[1]
    assert metrics["baselines"]["patch_nn"]["threshold"] == pytest.approx(conformal_threshold(floor, 0.1)[0], rel=1e-5)
    # scoring new images says which rule decided
    scored = Scorer(run_paths(cfg.output_dir, cfg.category).root, method="restore", device="cpu").score(
        images[:2], progress=False)
    assert scored.threshold_rule == metrics["threshold_rule"]


def test_calibration_normals_that_a_split_holds_or_none_are_refused(restored_run, copy_run, tmp_path):
    import shutil
    cfg = copy_run(restored_run[0], tmp_path / "run", files=("restorer.pt", "mapping_restore.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        _evaluate(cfg, method="restore", baselines=False, calibration_dir=tmp_path / "empty")
    with pytest.raises(ConfigError, match="apart from training, validation and test"):
        _evaluate(cfg, method="restore", baselines=False,
                  calibration_dir=Path(cfg.data_root) / cfg.category / "train")
    bad = _good_folder(tmp_path / "bad", 2)
    (bad / "002.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="calibration_dir"):
        _evaluate(cfg, method="restore", baselines=False, calibration_dir=bad)
    assert not (run_paths(cfg.output_dir, cfg.category).root / "metrics.json").exists()  # nothing written
    shutil.rmtree(bad)
