"""Notebooks 02, 03 and 04 with the restorer's settings (objective / method "restore") under papermill
at tiny settings on the (small) demo category."""
import json

import pytest

pm = pytest.importorskip("papermill")

from tests.test_notebooks import _run  # noqa: E402  (the same papermill runner)


@pytest.mark.slow
def test_notebooks_02_to_04_with_the_restorer(demo_root, tmp_path):
    common = dict(data_root=str(demo_root), category="demo", output_dir=str(tmp_path / "runs"))
    _run("02_train_mvtec", tmp_path, **common, image_size=32, model_size="tiny", epochs=1, batch_size=8,
         device="cpu", sample_every=1, objective="restore", restore={"head_dim": 8, "enc_depth": 1})
    run_dir = tmp_path / "runs" / "demo"
    assert (run_dir / "restorer.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
    summary = json.loads((run_dir / "restore_train_summary.json").read_text())
    assert not (run_dir / "train_summary.json").exists()  # a GAN's summary, if any, is kept
    assert summary["config"]["objective"] == "restore" and "val_seg_pixel_auroc" in summary["last_epoch"]

    _run("03_latent_mapping", tmp_path, **common, method="restore", batch_size=16, device="cpu")
    summary = json.loads((run_dir / "mapping_restore.json").read_text())
    assert summary["iterations"] == 0 and summary["n_val_synthetic"] == 3 * summary["n_val"]

    executed = _run("04_residual_heatmaps", tmp_path, **common, method="restore")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((run_dir / "metrics_restore.json").read_text()) == metrics
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "per_defect", "method",
                "iterations", "n_test", "seconds_per_image", "baselines", "alternatives", "map_selection"):
        assert key in metrics
    assert metrics["method"] == "restore" and metrics["n_test"] == 15
    assert "defect" in metrics["map_selection"]["synthetic_auroc"]
    cells = json.loads(executed.read_text())["cells"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))  # the explorer
