"""The restorer exported to ONNX scores as the trained one does, and the standalone predictor reads it."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=["defect", "fused"])
def evaluated_restorer(request, evaluate_restored_copy):
    """A restorer run evaluated with its head's map, and one with the fused map (whose patch bank goes into
    the graph)."""
    return evaluate_restored_copy(request.param)[0]


def test_onnx_maps_and_scores_match_pytorch(evaluated_restorer, demo_root, tmp_path):
    from transgan_lib.cli import main
    from transgan_lib.data.images import load_image
    from transgan_lib.methods.scoring import Scorer
    from transgan_lib.export import read_settings
    run = Path(evaluated_restorer.output_dir) / "demo"
    main(["export", "--checkpoint", str(run / "restorer.pt"), "--format", "onnx", "--out", str(tmp_path / "x")])
    onnx_path = tmp_path / "x" / "restorer.onnx"
    settings = read_settings(onnx_path)
    scorer = Scorer(run, method="restore", device="cpu")
    assert settings["threshold"] == scorer.run.threshold and settings["map_kind"] == scorer.run.map_kind
    paths = sorted((demo_root / "demo" / "test").rglob("*.png"))[:7]  # an odd batch: the batch axis is free
    images = torch.stack([load_image(p, 32) for p in paths])
    expected = scorer.score(images, progress=False)
    maps, scores, restorations = ort.InferenceSession(str(onnx_path)).run(None, {"images": images.numpy()})
    assert np.abs(maps - expected.maps.numpy()).max() < 1e-4
    assert np.abs(scores - expected.scores.numpy()).max() < 1e-4
    assert np.abs(restorations - expected.reconstructions.numpy()).max() < 1e-4

    # the standalone predictor (numpy, Pillow, onnxruntime) reads the images as the library does
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "deploy" / "predict_onnx.py"),
                           str(onnx_path), str(paths[0].parent), "--out", str(tmp_path / "rows.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "rows.csv"))}
    first = rows[paths[0].name]
    assert float(first["score"]) == pytest.approx(float(expected.scores[0]), abs=1e-4)
    assert first["decision"] == ("anomalous" if expected.decisions[0] else "normal")


def test_the_latent_search_does_not_export(evaluated_restorer):
    from transgan_lib.export import scoring_module
    with pytest.raises(ValueError, match="latent search"):
        scoring_module(Path(evaluated_restorer.output_dir) / "demo", method="iterative")


def test_the_fanogan_encoder_exports_and_scores_as_pytorch(trained_run, copy_run, tmp_path):
    """f-AnoGAN's one pass, x^ = G(E(x)) with the run's map kind: the ONNX graph's maps, scores and
    reconstructions agree with the library's scoring of the evaluated encoder run within 1e-4."""
    from transgan_lib.config import MappingConfig
    from transgan_lib.export import export_onnx, read_settings
    from transgan_lib.methods.pipeline import evaluate, run_mapping
    from transgan_lib.methods.scoring import Scorer
    cfg = copy_run(trained_run, tmp_path / "run")
    run_mapping(MappingConfig(method="encoder", batch_size=8, synthetic_copies=1), data_root=cfg.data_root,
                category="demo", output_dir=cfg.output_dir, device="cpu", encoder_epochs=1, progress=False)
    evaluate(data_root=cfg.data_root, category="demo", output_dir=cfg.output_dir, method="encoder", baselines=False)
    run = Path(cfg.output_dir) / "demo"
    path = export_onnx(run / "checkpoint.pt", tmp_path / "x", method="encoder")
    assert path.name == "encoder.onnx"
    scorer = Scorer(run, method="encoder", device="cpu")
    settings = read_settings(path)
    assert settings["method"] == "encoder" and settings["threshold"] == scorer.run.threshold
    assert settings["source"]["checkpoint"].endswith("checkpoint.pt")
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = scorer.score(images, progress=False)
    maps, scores, reconstructions = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    assert np.abs(maps - expected.maps.numpy()).max() < 1e-4
    assert np.abs(scores - expected.scores.numpy()).max() < 1e-4
    assert np.abs(reconstructions - expected.reconstructions.numpy()).max() < 1e-4
