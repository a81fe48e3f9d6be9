import json
from pathlib import Path

import pytest
import torch

from transgan_lib.metrics import threshold_from_normals
from transgan_lib.pipeline import evaluate, format_metrics, load_mapping, run_mapping, score_maps, verdict

METRICS_KEYS = {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "per_defect", "method",
                "iterations", "n_test", "seconds_per_image", "baselines"}


def _map(cfg, **kw):
    args = dict(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, method="iterative",
                iterations=4, batch_size=8, device="cpu", progress=False)
    return run_mapping(**{**args, **kw})


def test_mapping_then_metrics_follow_the_protocol(trained_run):
    cfg = trained_run
    mapping = _map(cfg)
    saved = load_mapping(cfg.output_dir, cfg.category, "iterative")
    assert torch.equal(saved["test"]["z"], mapping["test"]["z"]) and saved["iterations"] == 4
    n_val = len(mapping["splits"]["val"]["images"])
    assert len(mapping["val"]["labels"]) == n_val == 4  # 10% of 40 train images
    assert set(mapping["val"]["labels"].tolist()) == {0}  # validation = normals only

    results = evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir)
    arrays = results.pop("arrays")
    on_disk = json.loads((Path(cfg.output_dir) / "demo" / "metrics.json").read_text())
    assert METRICS_KEYS <= set(on_disk) and on_disk["n_test"] == 15
    assert set(on_disk["baselines"]) == {"mean_image", "patch_nn"}
    assert set(on_disk["per_defect"]) == {"patch", "scratch", "stain"}
    assert 0.0 <= on_disk["image_auroc"] <= 1.0 and 0.0 <= on_disk["pixel_auroc"] <= 1.0
    # The threshold comes from the validation normals' scores, never from the test set.
    val_scores = score_maps(mapping["splits"]["val"]["images"], mapping["val"])["score"]
    assert on_disk["threshold"] == pytest.approx(threshold_from_normals(val_scores))
    # Heatmaps are computed against the reconstructions G(z*) of the optimized codes.
    assert torch.allclose(arrays["reconstructions"], mapping["test"]["reconstructions"])
    assert arrays["maps"].shape == (15, 32, 32)
    assert "baseline: mean_image" in format_metrics(results)


def test_encoder_method_trains_then_reuses_the_encoder(trained_run):
    cfg = trained_run
    _map(cfg, method="encoder", encoder_epochs=1)
    path = Path(cfg.output_dir) / "demo" / "encoder.pt"
    stamp = path.stat().st_mtime_ns
    again = _map(cfg, method="hybrid", iterations=2, encoder_epochs=1)
    assert path.stat().st_mtime_ns == stamp  # trained against this checkpoint: reused, not retrained
    assert again["iterations"] == 2 and again["test"]["method"] == "hybrid"


def test_verdict_warns_only_when_the_mean_image_is_not_beaten():
    row = {"image_auroc": 0.6, "baselines": {"mean_image": {"image_auroc": 0.7}}}
    assert "does not beat the mean training image" in verdict(row)
    assert "WARNING" in format_metrics({**row, "per_defect": {}})
    assert verdict({**row, "image_auroc": 0.8}) == ""
