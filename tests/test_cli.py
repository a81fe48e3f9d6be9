import csv
import shutil

import pytest

from transgan_lib.cli import DEMO_PARAMETERS, build_parser, main


def test_score_command_writes_csv_and_heatmaps(trained_run, demo_root, tmp_path):
    images = tmp_path / "new"
    images.mkdir()
    for src in sorted((demo_root / "demo" / "test" / "scratch").glob("*.png"))[:2]:
        shutil.copy(src, images / src.name)
    shutil.copy(next((demo_root / "demo" / "train" / "good").glob("*.png")), images / "good.png")
    ckpt = f"{trained_run.output_dir}/demo/checkpoint.pt"
    out = tmp_path / "scored"
    main(["score", "--checkpoint", ckpt, "--images", str(images), "--out", str(out), "--iterations", "3",
          "--threshold", "0.0", "--device", "cpu"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3
    assert all(r["decision"] == "anomalous" for r in rows)  # threshold 0: every image is flagged
    assert all(float(r["score"]) > 0 for r in rows)
    assert sorted(p.name for p in out.glob("*_heatmap.png")) == sorted(f"{p.stem}_heatmap.png" for p in images.iterdir())

    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SystemExit, match="broken.png"):
        main(["score", "--checkpoint", ckpt, "--images", str(images), "--out", str(out), "--iterations", "1"])
    with pytest.warns(UserWarning, match="skipped"):
        main(["score", "--checkpoint", ckpt, "--images", str(images), "--out", str(out), "--iterations", "1",
              "--skip-bad", "--threshold", "1e9"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3 and all(r["decision"] == "normal" for r in rows)


def test_demo_job_runs_the_three_notebooks_on_the_demo_category():
    assert list(DEMO_PARAMETERS) == ["02_train_mvtec", "03_latent_mapping", "04_residual_heatmaps"]
    assert all(p["category"] == "demo" for p in DEMO_PARAMETERS.values())
    assert DEMO_PARAMETERS["03_latent_mapping"]["method"] == DEMO_PARAMETERS["04_residual_heatmaps"]["method"]
    assert build_parser().parse_args(["demo"]).command == "demo"
    # every demo setting names a parameter the notebook has (papermill would inject an unused one)
    import ast
    import json

    from transgan_lib.cli import NOTEBOOKS
    for name, params in DEMO_PARAMETERS.items():
        cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
        source = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
        names = {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}
        assert set(params) <= names, (name, set(params) - names)


def test_score_reuses_the_evaluated_runs_search_settings(tmp_path):
    """Scores are only comparable with the saved threshold when searched the same way."""
    import argparse
    import json

    from transgan_lib.cli import _evaluated_run, _map_settings, _mapping_settings
    ckpt = tmp_path / "checkpoint.pt"
    (tmp_path / "metrics.json").write_text(json.dumps({"method": "iterative", "iterations": 50,
                                                       "restarts": 2, "candidates": 64,
                                                       "map_kind": "shift_residual", "sigma": 2.0}))
    flags = argparse.Namespace(method="iterative", map_kind=None, sigma=None)
    assert _map_settings(flags, _evaluated_run(flags, ckpt)) == {"map_kind": "shift_residual", "sigma": 2.0}
    flags.map_kind, flags.sigma = "ssim", 1.0  # flags given win
    assert _map_settings(flags, _evaluated_run(flags, ckpt)) == {"map_kind": "ssim", "sigma": 1.0}
    assert _map_settings(argparse.Namespace(map_kind=None, sigma=None), {}) == {"map_kind": "residual", "sigma": 4.0}
    args = argparse.Namespace(method="iterative", iterations=None, restarts=None, candidates=None)
    assert _mapping_settings(args, _evaluated_run(args, ckpt)) == {"iterations": 50, "restarts": 2, "candidates": 64}
    args.candidates = 0  # a flag given wins
    assert _mapping_settings(args, _evaluated_run(args, ckpt))["candidates"] == 0
    other = argparse.Namespace(method="hybrid", iterations=None, restarts=None, candidates=None)
    assert _mapping_settings(other, _evaluated_run(other, ckpt)) == {"iterations": None, "restarts": 1, "candidates": 0}
