"""The bad-input sweep (issue 21): each case a user hit, as the test's input. Every case here failed
(or was silently wrong) before its fix; see the README's "Bad input" section."""
import csv
import dataclasses
import json
import os
import shutil
import stat
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transgan_lib.cifar.config import CifarConfig
from transgan_lib.config import ConfigError, EncoderConfig, MappingConfig, ModelConfig, RestoreConfig, TrainConfig
from transgan_lib.data import images as image_files
from transgan_lib.data.mvtec import DatasetError, MVTecAD, list_images, load_image
from transgan_lib.metrics import compute_metrics
from transgan_lib.utils import atomic_write_json, atomic_write_text, check_writable, remove_stale_temp_files


# ----------------------------------------------------------------------------- 1. score overwrote heatmaps
def _mvtec_like_folder(demo_root, folder):
    """good/000.png, scratch/000.png, stain/000.png: one stem in three sub-folders."""
    test = demo_root / "demo" / "test"
    for sub, src_sub in (("good", "good"), ("scratch", "scratch"), ("stain", "patch")):
        (folder / sub).mkdir(parents=True)
        shutil.copy(sorted((test / src_sub).glob("*.png"))[0], folder / sub / "000.png")


def test_score_writes_one_heatmap_per_image_of_an_mvtec_style_folder(trained_run, demo_root, tmp_path):
    from transgan_lib.cli import main
    images, out = tmp_path / "test", tmp_path / "scored"
    _mvtec_like_folder(demo_root, images)
    main(["score", "--checkpoint", f"{trained_run.output_dir}/demo/checkpoint.pt", "--images", str(images),
          "--out", str(out), "--iterations", "1", "--threshold", "0.5", "--device", "cpu"])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    heatmaps = [r["heatmap"] for r in rows]
    assert len(rows) == 3 and len(set(heatmaps)) == 3  # before: three rows, one 000_heatmap.png
    assert sorted(str(Path(h).relative_to(out)) for h in heatmaps) == [
        "good/000_heatmap.png", "scratch/000_heatmap.png", "stain/000_heatmap.png"]
    assert all(Path(h).is_file() for h in heatmaps)


def test_score_refuses_two_images_that_would_share_a_heatmap(tmp_path):
    from transgan_lib.cli import heatmap_names
    folder = tmp_path / "imgs"
    paths = [folder / "a" / "000.png", folder / "a" / "000.jpg", folder / "b" / "000.png"]
    assert heatmap_names(folder, [paths[0], paths[2]]) == {paths[0]: Path("a/000_heatmap.png"),
                                                            paths[2]: Path("b/000_heatmap.png")}
    with pytest.raises(SystemExit, match=r"000.png and .*000.jpg would both write the heatmap a/000_heatmap.png"):
        heatmap_names(folder, paths)


def test_score_checks_out_before_any_work_and_names_the_restorer_fix(trained_run, tmp_path):
    from transgan_lib.cli import main
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write to the --out folder"):
        main(["score", "--checkpoint", str(tmp_path / "nowhere" / "checkpoint.pt"), "--images", str(tmp_path),
              "--out", str(blocker / "out")])  # fails on --out, before looking for the checkpoint
    with pytest.raises(FileNotFoundError, match="restorer.pt.*-p objective restore"):
        main(["score", "--checkpoint", f"{trained_run.output_dir}/demo/checkpoint.pt", "--images", str(tmp_path),
              "--out", str(tmp_path / "o"), "--method", "restore"])


# ----------------------------------------------------------------------------- 2. 16-bit images
def _save16(path, value_max, size=24):
    a = np.full((size, size), 200, dtype=np.uint16)
    a[0, 0] = value_max
    Image.fromarray(a).save(path)
    return path


def test_16_bit_frames_of_one_scene_load_alike_whatever_their_maximum(tmp_path, monkeypatch):
    monkeypatch.setattr(image_files, "_NOTES_GIVEN", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        low = load_image(_save16(tmp_path / "a.png", 250), 16)
        high = load_image(_save16(tmp_path / "b.png", 256), 16)
    # before: means 0.008 and -0.998 (each image divided by its own maximum)
    assert abs(float(low.mean()) - float(high.mean())) < 1e-3
    assert float(low.mean()) == pytest.approx(200 / 65535 * 2 - 1, abs=2e-3)  # scaled by the bit depth
    notes = [str(w.message) for w in seen if "12-bit" in str(w.message)]
    assert len(notes) == 1  # one note for both, not one per image


def test_a_16_bit_frame_keeps_its_precision_through_the_resize(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 12-bit values 0..4092
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = load_image(tmp_path / "ramp.png", 32)
    assert len(np.unique(x[0].numpy())) > 1000  # an 8-bit round left 17 levels


# ----------------------------------------------------------------------------- 3. lambda_ and 4. settings
@pytest.mark.parametrize("value", [2, -0.1, 1.5])
def test_lambda_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"MappingConfig.lambda_ must be >= 0 and <= 1"):
        MappingConfig(lambda_=value)


@pytest.mark.parametrize("cls, field, value, message", [
    (TrainConfig, "epochs", "ten", "must be a whole number, got 'ten'"),
    (TrainConfig, "epochs", 0, "epochs must be >= 1"),
    (TrainConfig, "batch_size", 0, "batch_size must be >= 1"),
    (TrainConfig, "checkpoint_every", 0, "checkpoint_every must be >= 1"),
    (TrainConfig, "lr", 0, "lr must be > 0"),
    (TrainConfig, "val_fraction", 1.0, "val_fraction must be >= 0 and < 1"),
    (TrainConfig, "ema_decay", 1.5, "ema_decay must be >= 0 and <= 1"),
    (TrainConfig, "loss", "hing", "Did you mean 'hinge'"),
    (TrainConfig, "diffaug", "color,flip", "diffaug must list ops"),
    (ModelConfig, "image_size", "64", "image_size must be a whole number"),
    (RestoreConfig, "p_defect", 0, "p_defect must be > 0"),
    (RestoreConfig, "seg_weight", -1, "seg_weight must be >= 0"),
    (MappingConfig, "iterations", "5", "iterations must be a whole number or None"),
    (MappingConfig, "restarts", 0, "restarts must be >= 1"),
    (MappingConfig, "threshold_q", 0, "threshold_q must be > 0"),
    (EncoderConfig, "lr", -1e-4, "lr must be > 0"),
    (EncoderConfig, "epochs", True, "must be a whole number"),
    (CifarConfig, "labelled_anomaly_ratio", 1.2, "labelled_anomaly_ratio must be >= 0 and < 1"),
    (CifarConfig, "w_abc", -1, "w_abc must be >= 0"),
    (CifarConfig, "max_train_images", 0, "max_train_images must be >= 1"),
    (CifarConfig, "batch_size", "64", "batch_size must be a whole number"),
])
def test_each_config_refuses_a_wrong_type_or_range_when_built(cls, field, value, message):
    extra = {"dataset": "digits"} if cls is CifarConfig else {}
    with pytest.raises(ConfigError, match=message):
        cls(**extra, **{field: value})


def test_a_whole_float_is_taken_as_an_integer():
    assert TrainConfig(epochs=10.0).epochs == 10 and isinstance(TrainConfig(epochs=10.0).epochs, int)


def test_a_notebook_refuses_a_parameter_it_does_not_have():
    from transgan_lib.runtime import ParameterError, NotebookRuntime, unknown_parameters
    history = ["import x", "# 3. Parameters (papermill: -p name value)\nepochs = 350\nlr = 1e-4\n",
               "# Parameters\nepoch = 1\nlr = 0.001\n", "data_root = 1"]
    assert unknown_parameters(history) == [("epoch", "epochs")]
    assert unknown_parameters(history[:2] + history[3:]) == []  # nothing injected
    with pytest.raises(ParameterError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        NotebookRuntime.check_parameters({"In": [""] + history})


@pytest.mark.slow
def test_notebook_02_with_a_misspelt_parameter_stops_before_training(tmp_path):
    """`-p epoch 1` (for epochs) used to train the default 350 epochs behind papermill's warning."""
    pm = pytest.importorskip("papermill")
    from transgan_lib.jobs import NOTEBOOKS
    t0 = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError, match="did you mean 'epochs'"):
        pm.execute_notebook(str(NOTEBOOKS / "02_train_mvtec.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"epoch": 1, "output_dir": str(tmp_path)}, cwd=str(tmp_path),
                            kernel_name="python3", progress_bar=False)
    assert time.perf_counter() - t0 < 120 and not (tmp_path / "bottle").exists()  # no work done


# ----------------------------------------------------------------------------- 5. masks of another size
@pytest.mark.parametrize("mask_size", ["half", (300, 100)])
def test_a_mask_of_another_size_or_aspect_is_refused(demo_root, tmp_path, mask_size):
    """Before: a half-size or 3:1 mask was stretched onto its image (and one odd mask raised eval_size)."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "demo", root / "demo")
    mask = sorted((root / "demo" / "ground_truth" / "scratch").glob("*.png"))[0]
    image_size = Image.open(root / "demo" / "test" / "scratch" / mask.name.replace("_mask", "")).size
    mask_size = tuple(s // 2 for s in image_size) if mask_size == "half" else mask_size
    Image.new("L", mask_size, 255).save(mask)
    with pytest.raises(DatasetError, match=rf"{mask.name} is {mask_size[0]}x{mask_size[1]} but its image .* is "
                                           rf"{image_size[0]}x{image_size[1]}"):
        MVTecAD(data_root=root, category="demo", split="test", image_size=32)


# ----------------------------------------------------------------------------- 6. single-class test sets
def test_a_single_class_test_set_gives_null_metrics_with_the_reason_in_strict_json(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one reason in the result, not a warning per metric
        metrics = compute_metrics([0, 0, 0], [0.1, 0.4, 0.2], threshold=0.3)
    assert "only good images" in metrics["unavailable"]["image_auroc"]
    path = atomic_write_json(metrics, tmp_path / "metrics.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    parsed = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict token {token}"))
    assert parsed["image_auroc"] is None and parsed["at_threshold"]["fpr"] == pytest.approx(1 / 3)
    assert "image_auroc" not in compute_metrics([0, 1], [0.1, 0.4]).get("unavailable", {})


def test_json_files_never_hold_nan_tokens(tmp_path):
    values = {"a": float("nan"), "b": [np.float32("inf"), 1], "c": np.float64(0.5)}
    path = atomic_write_json(values, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1], "c": 0.5}


# ----------------------------------------------------------------------------- 7. file modes, temp files
def test_written_files_get_the_umask_mode_and_stale_temp_files_are_removed(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text("x", tmp_path / "metrics.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # before: 0o600
    stale = tmp_path / ".checkpoint.pt.999999999.abc123.tmp"  # its writer (that pid) is gone
    older = tmp_path / ".checkpoint.pt.k2j4h5.tmp"  # the name before pids were recorded
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.q1w2e3.tmp"  # a writer still running
    for p in (stale, older, live):
        p.write_bytes(b"half a checkpoint")
    atomic_write_text("x", tmp_path / "checkpoint.pt")
    assert not stale.exists() and not older.exists() and live.exists()
    assert remove_stale_temp_files(tmp_path / "checkpoint.pt") == []


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        check_writable(tmp_path / "file" / "runs")
    from transgan_lib.methods.transgan.train import train_gan
    cfg = TrainConfig(data_root=str(tmp_path / "no_data"), category="demo", output_dir=str(tmp_path / "file" / "runs"),
                      image_size=32, model_size="tiny", latent_dim=32, epochs=1)
    with pytest.raises(PermissionError, match="output folder"):  # before the data is even looked at
        train_gan(cfg, progress=False)


# ----------------------------------------------------------------------------- 9. smaller ones
def test_tif_files_are_read(tmp_path):
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "a.tif")
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "b.TIFF")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.TIFF"]
    assert load_image(tmp_path / "a.tif", 8).shape == (3, 8, 8)


def test_a_non_square_image_is_stretched_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(image_files, "_NOTES_GIVEN", set())
    Image.fromarray(np.zeros((30, 60, 3), np.uint8)).save(tmp_path / "wide.png")
    with pytest.warns(UserWarning, match="non-square images .*60x30.* stretched"):
        load_image(tmp_path / "wide.png", 16)


def test_the_missing_data_message_names_a_function_that_exists(tmp_path):
    import importlib
    with pytest.raises(DatasetError) as info:
        MVTecAD(data_root=tmp_path / "nothing", category="demo")
    name = "transgan_lib.data.demo.prepare_data"
    assert name in str(info.value)
    assert callable(getattr(importlib.import_module(name.rsplit(".", 1)[0]), "prepare_data"))


def test_notebook_03_before_02_says_train_first(demo_root, tmp_path):
    from transgan_lib.methods.pipeline import run_mapping
    with pytest.raises(Exception, match="[Tt]rain first"):  # before: a raw FileNotFoundError from the fingerprint
        run_mapping(MappingConfig(iterations=1), data_root=str(demo_root), category="demo",
                    output_dir=str(tmp_path), device="cpu", progress=False)


def test_a_resumed_run_says_what_it_resumed(trained_run, copy_run, tmp_path, capsys):
    from transgan_lib.methods.transgan.train import train_gan
    cfg = dataclasses.replace(copy_run(trained_run, tmp_path), epochs=1)
    train_gan(cfg, progress=False)
    assert "already trained for 1 of 1 epochs" in capsys.readouterr().out
    train_gan(dataclasses.replace(cfg, epochs=2), progress=False)
    out = capsys.readouterr().out
    assert "resuming from" in out and "1 of 2 epochs done" in out
