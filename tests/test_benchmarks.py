"""The mapping benchmark runs end to end on a tiny checkpoint and reports what the issue asks."""
import importlib.util
import json
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
