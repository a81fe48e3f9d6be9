import json
from pathlib import Path

import pytest
import torch

from transgan_lib.data.synthetic import cutpaste
from transgan_lib.detection.pipeline import (
    FALLBACK_MAP_KIND,
    evaluate,
    format_metrics,
    load_mapping,
    run_mapping,
    score_maps,
    select_map_kind,
    verdict,
)
from transgan_lib.metrics import image_auroc, threshold_from_normals

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
    val_scores = score_maps(mapping["splits"]["val"]["images"], mapping["val"], map_kind=on_disk["map_kind"])["score"]
    assert on_disk["threshold"] == pytest.approx(threshold_from_normals(val_scores))
    # Heatmaps are computed against the reconstructions G(z*) of the optimized codes.
    assert torch.allclose(arrays["reconstructions"], mapping["test"]["reconstructions"])
    assert arrays["maps"].shape == (15, 32, 32)
    assert "baseline: mean_image" in format_metrics(results)
    # The map kind was chosen on the validation normals and their CutPaste copies (mapped too).
    syn = saved["val_synthetic"]
    val_images = mapping["splits"]["val"]["images"]
    assert torch.equal(syn["images"], cutpaste(val_images.repeat_interleave(3, 0), seed=0)[0])
    assert syn["reconstructions"].shape == (12, 3, 32, 32)  # 3 copies of each of 4 normals
    sel = on_disk["map_selection"]
    assert on_disk["map_kind"] == sel["chosen"] == max(sel["synthetic_auroc"], key=sel["synthetic_auroc"].get)
    assert set(sel["synthetic_auroc"]) == {"residual", "shift_residual", "ssim", "msgms"}


def test_select_map_kind_picks_the_kind_that_separates_synthetic_anomalies():
    """Reconstructions one pixel off: only the shift-tolerant residual sees normals as normal."""
    stripes = ((torch.arange(32) // 4) % 2).float().expand(1, 3, 32, 32)  # vertical bars, period 8
    contrast = torch.tensor([0.1, 0.1, 0.1, 0.6, 0.9, 1.2]).view(6, 1, 1, 1)
    normals = contrast * stripes - 0.5  # (6, 3, 32, 32) lighting varies
    synthetic = normals[[0, 1, 2, 0, 1, 2]].clone()
    synthetic[:, :, 12:20, 12:20] += 0.25  # small squares on low-contrast normals
    # The generator reproduces each surface one pixel off, and never the squares.
    val = {"reconstructions": torch.roll(normals, shifts=1, dims=3), "total_score": None}
    syn = {"reconstructions": val["reconstructions"][[0, 1, 2, 0, 1, 2]], "total_score": None,
           "images": synthetic}
    sel = select_map_kind(normals, val, syn, sigma=1.0)
    labels = torch.tensor([0] * 6 + [1] * 6)
    for kind, auroc in sel["synthetic_auroc"].items():  # the table is the AUROC of each kind
        scores = torch.cat([score_maps(x, part, map_kind=kind, sigma=1.0)["score"]
                            for x, part in ((normals, val), (synthetic, syn))])
        assert auroc == pytest.approx(image_auroc(labels, scores))
    assert sel["chosen"] == "shift_residual" and sel["synthetic_auroc"]["shift_residual"] == 1.0
    assert select_map_kind(normals, val, None)["chosen"] == FALLBACK_MAP_KIND


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
