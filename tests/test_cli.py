import csv
import shutil
from pathlib import Path

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
    assert sorted(p.name for p in out.glob("*_heatmap.png")) == sorted(
        f"{p.stem}_heatmap.png" for p in images.iterdir())

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


def _score(cfg, folder, out, *flags):
    main(["score", "--checkpoint", f"{cfg.output_dir}/{cfg.category}/checkpoint.pt", "--images", str(folder),
          "--out", str(out), "--device", "cpu", *flags])
    return {Path(r["path"]).name: r for r in csv.DictReader(open(out / "scores.csv"))}


def test_an_images_score_does_not_depend_on_the_rest_of_the_folder(evaluated_run, demo_root, tmp_path):
    """Initial codes are keyed by the image's content, not by its place in the folder."""
    cfg, _ = evaluated_run
    sources = sorted((demo_root / "demo" / "test").rglob("*.png"))
    alone, many = tmp_path / "alone", tmp_path / "many"
    alone.mkdir(), many.mkdir()
    shutil.copy(sources[4], alone / "m.png")
    for name, src in (("a.png", sources[0]), ("b.png", sources[9]), ("m.png", sources[4]), ("z.png", sources[12])):
        shutil.copy(src, many / name)  # m.png is the third of four here, the only one alone
    one = _score(cfg, alone, tmp_path / "out1")["m.png"]
    four = _score(cfg, many, tmp_path / "out4")
    assert list(four)[2] == "m.png"
    # measured: equal to 2e-7 (float rounding of batched CPU matmuls)
    assert float(one["score"]) == pytest.approx(float(four["m.png"]["score"]), abs=1e-5)
    assert float(one["anogan_score"]) == pytest.approx(float(four["m.png"]["anogan_score"]), abs=1e-5)
    assert one["threshold"] == four["m.png"]["threshold"] != ""  # the evaluated run's


def test_score_takes_lambda_and_feature_from_the_evaluated_run(evaluated_run, demo_root, tmp_path):
    cfg, config = evaluated_run  # mapped with lambda_ 0.3 (the flag's old default was 0.1)
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(next((demo_root / "demo" / "test" / "patch").glob("*.png")), folder / "x.png")
    row = _score(cfg, folder, tmp_path / "out")["x.png"]
    residual, feature = float(row["residual_score"]), float(row["feature_score"])
    assert feature > 0  # the discriminator feature term of the mapping
    assert float(row["anogan_score"]) == pytest.approx((1 - config.lambda_) * residual + config.lambda_ * feature)


def test_method_names_come_from_the_registry_old_spellings_too():
    from transgan_lib.cli import build_parser
    base = ["score", "--checkpoint", "c", "--images", "i", "--out", "o", "--method"]
    assert build_parser().parse_args(base + ["restorer"]).method == "restore"
    assert build_parser().parse_args(base + ["restore"]).method == "restore"
    assert build_parser().parse_args(base + ["hybrid"]).method == "hybrid"
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["restorr"])
