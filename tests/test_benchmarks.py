"""The benchmarks run end to end on tiny models and report what their issues ask: the mapping and methods
benchmarks on a tiny checkpoint, the prepared GPU check in its CPU dry run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mapping.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_mapping", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_mapping_smoke(trained_run, tmp_path, capsys):
    cfg = trained_run
    bench = _load_bench()
    out = bench.main(["--checkpoint", str(Path(cfg.output_dir) / "demo" / "checkpoint.pt"),
                      "--data-root", cfg.data_root, "--iterations", "3", "--n-images", "8", "--loop-images", "2",
                      "--batch-size", "4", "--encoder-epochs", "1", "--repeats", "1", "--device", "cpu",
                      "--output-dir", str(tmp_path)])
    methods = [r["method"] for r in out["rows"]]
    assert methods == ["loop (batch 1)", "iterative", "encoder", "hybrid", "mean-image baseline"]
    assert all(r["seconds_per_image"] > 0 for r in out["rows"][:4])
    assert [t["target"] for t in out["targets"]] == [20.0, 500.0, None]
    # Every map kind is compared on the batched search's reconstructions.
    assert set(out["map_kinds"]) == {"residual", "shift_residual", "ssim", "msgms", "feature (D tokens)"}
    assert all(0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 for a, b in out["map_kinds"].values())
    assert json.loads((tmp_path / "bench_mapping.json").read_text())["rows"][1]["method"] == "iterative"
    printed = capsys.readouterr().out
    assert "batched iterative vs one-image loop" in printed and "anomaly maps of the batched" in printed


@pytest.mark.slow
def test_bench_methods_smoke(trained_run, tmp_path, capsys):
    """The four detectors and the floors on the same images, pixel AUROC at the masks' size, and the
    restore speed-up against 1000-iteration search (scaled from the iterations run)."""
    spec = importlib.util.spec_from_file_location("bench_methods", BENCH.parent / "bench_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = trained_run
    out = bench.main(["--gan-run", cfg.output_dir, "--data-root", cfg.data_root, "--iterations", "4",
                      "--n-images", "9", "--batch-size", "4", "--encoder-epochs", "1", "--restore-epochs", "1",
                      "--device", "cpu", "--output-dir", str(tmp_path)])
    rows = {r["method"]: r for r in out["rows"]}
    assert list(rows)[:4] == ["restore", "floor mean-image (32 px)", "floor patch-NN (32 px)", "iterative"]
    assert {"encoder", "hybrid"} <= set(rows) and len(out["rows"]) == 8  # the floors at each model's size
    assert {r["images"] for r in out["rows"]} == {9}
    assert all(rows[m]["seconds_per_image"] > 0 for m in ("restore", "iterative", "encoder", "hybrid"))
    assert rows["iterative"]["iterations"] == 4 and rows["hybrid"]["iterations"] == 1
    assert out["mask_size"] == 64  # the small demo's masks, not the 32 px models
    expected = rows["iterative"]["seconds_per_image"] * 1000 / 4 / rows["restore"]["seconds_per_image"]
    assert out["restore_speedup_vs_1000_iterations"] == pytest.approx(expected)
    assert all(0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1 for r in out["rows"])
    assert (tmp_path / "demo" / "restorer.pt").is_file()
    assert "restore vs 1000-iteration iterative" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """`bash benchmarks/gpu_check.sh --dry-run`: every section on the CPU with tiny models, one step each, so
    the GPU check cannot rot between the rare runs on a GPU."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(BENCH.parent / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = {name: json.loads((tmp_path / f"{name}.json").read_text())["rows"]
            for name in ("env", "train", "score", "compile", "demo")}
    assert not [r for section in rows.values() for r in section if "error" in r]
    assert [(r["objective"], r["amp"]) for r in rows["train"]] == [("gan", "fp16"), ("gan", "off"),
                                                                   ("restore", "fp16"), ("restore", "off")]
    assert all(r["finite"] and r["images_per_s"] > 0 and r["gflop_per_step"] > 0 and r["ops_per_step"] > 0
               for r in rows["train"])
    assert [r["work"] for r in rows["score"]] == ["restorer pass", "encoder pass", "search 1000 it (off)",
                                                  "search 1000 it (bf16)"]
    assert all(r["images_per_s"] > 0 for r in rows["score"])
    assert [r["compile"] for r in rows["compile"]] == ["off", "eager"] and rows["compile"][1]["compile_seconds"] > 0
    assert [r["method"] for r in rows["demo"]] == ["restore (tiny)", "floor mean-image (32 px)",
                                                   "floor patch-NN (32 px)"]
    assert all(0 <= r["image_auroc"] <= 1 and 0 <= r["pixel_auroc"] <= 1 for r in rows["demo"])
    summary = (tmp_path / "summary.md").read_text()
    assert "## demo" in summary and "| restore (tiny) |" in summary and summary in proc.stdout


def test_bench_onnx_smoke(capsys):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("bench_onnx", BENCH.parent / "bench_onnx.py")
    bench_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_onnx)
    row = bench_onnx.main(["--size", "32", "--batch", "4", "--repeats", "1", "--threads", "1"])
    assert row["torch_images_per_s"] > 0 and row["onnxruntime_images_per_s"] > 0
    assert row["max_abs_difference"] < 1e-4
    assert "ONNX Runtime" in capsys.readouterr().out
