import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transgan_lib.config import ConfigError, MappingConfig
from transgan_lib.data.synthetic import cutpaste
from transgan_lib.detection.mapping_file import MAPPING_FORMAT
from transgan_lib.detection.pipeline import (
    FALLBACK_MAP_KIND,
    evaluate,
    format_metrics,
    load_mapping,
    mapping_path,
    run_mapping,
    score_maps,
    select_map_kind,
    verdict,
)
from transgan_lib.metrics import image_auroc, threshold_from_normals
from transgan_lib.runs import file_fingerprint, run_paths

METRICS_KEYS = {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "per_defect", "method",
                "iterations", "n_test", "seconds_per_image", "baselines", "map_kind", "map_selection", "sigma",
                "alternatives", "restarts", "candidates", "lambda_", "mapping_config", "fingerprints", "test_scores"}


def _map(cfg, encoder_epochs=50, **settings):
    config = MappingConfig(**{**dict(method="iterative", iterations=4, batch_size=8), **settings})
    return run_mapping(config, data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir,
                       device="cpu", encoder_epochs=encoder_epochs, progress=False)


def _evaluate(cfg, **kw):
    return evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, **kw)


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
    # The threshold comes from the validation normals' scores, never from the test set.
    val_scores = score_maps(splits["val"]["images"], mapping.val.result, map_kind=on_disk["map_kind"])["score"]
    assert on_disk["threshold"] == pytest.approx(threshold_from_normals(val_scores))
    # Heatmaps are computed against the reconstructions G(z*) of the optimized codes.
    assert torch.allclose(arrays["reconstructions"], mapping.test.result.reconstructions)
    assert arrays["maps"].shape == (15, 32, 32)
    assert "baseline: mean_image" in format_metrics(metrics)
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
                                         "threshold_q": 90.0}
    assert "90th percentile" in metrics["threshold_rule"]


def test_a_mapping_made_with_another_checkpoint_is_refused(trained_run, copy_run, tmp_path, demo_root):
    from transgan_lib.data.mvtec import load_image
    from transgan_lib.detection.scoring import score_images
    from transgan_lib.gan.train import train_gan
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
