"""Notebooks 01-04 executed by papermill at tiny settings on the (small) demo category."""
import json
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name, tmp_path, **parameters):
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters, cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False)
    return out


@pytest.mark.slow
def test_notebooks_01_to_04_run_end_to_end(demo_root, tmp_path):
    common = dict(data_root=str(demo_root), category="demo", output_dir=str(tmp_path / "runs"))
    _run("01_data_exploration", tmp_path, **common, image_size=32)
    summary = json.loads((tmp_path / "runs" / "demo" / "data_summary.json").read_text())
    assert summary["counts"]["train/good"] == 40 and summary["counts"]["test/scratch"] == 3

    _run("02_train_mvtec", tmp_path, **common, image_size=32, model_size="tiny", latent_dim=32, epochs=2,
         batch_size=8, device="cpu", sample_every=1)
    run_dir = tmp_path / "runs" / "demo"
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "samples_latest.png").is_file()
    assert json.loads((run_dir / "train_summary.json").read_text())["epochs_done"] == 2

    _run("03_latent_mapping", tmp_path, **common, method="hybrid", iterations=3, batch_size=16, device="cpu",
         encoder_epochs=1)
    summary = json.loads((run_dir / "mapping_hybrid.json").read_text())
    assert summary["iterations"] == 3 and summary["n_val_synthetic"] == 3 * summary["n_val"]

    executed = _run("04_residual_heatmaps", tmp_path, **common, method="hybrid")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "per_defect", "method",
                "iterations", "n_test", "seconds_per_image", "baselines"):
        assert key in metrics
    assert metrics["method"] == "hybrid" and metrics["n_test"] == 15
    cells = json.loads(executed.read_text())["cells"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))  # the explorer
