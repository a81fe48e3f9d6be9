"""The main job (`python -m transgan_lib demo`): both detectors, in order, with their settings, and
the mean ± std over seeds of each; notebooks replaced by a stand-in that writes what 04 writes."""
import ast
import json
import time

import pytest

from transgan_lib import jobs
from transgan_lib.runs import run_paths


def _parameter_names(name):
    cells = json.loads((jobs.NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}


def test_every_detector_setting_names_a_notebook_parameter():
    assert list(jobs.DETECTORS) == ["restore", "iterative"]  # the GAN last: metrics.json stays the GAN's
    for detector, notebooks in jobs.DETECTORS.items():
        assert list(notebooks) == ["02_train_mvtec", "03_latent_mapping", "04_residual_heatmaps"]
        for name, params in notebooks.items():
            assert set(params) <= _parameter_names(name), (detector, name, set(params) - _parameter_names(name))
    restore = jobs.DEMO_RESTORE_PARAMETERS
    assert restore["02_train_mvtec"]["objective"] == "restore"
    assert restore["03_latent_mapping"]["method"] == restore["04_residual_heatmaps"]["method"] == "restore"


@pytest.fixture
def fake_notebooks(monkeypatch):
    """run_notebook replaced: records each call and, for 04, writes metrics as the pipeline does."""
    calls = []

    def run(name, out_dir, params, *, cwd, progress=True, timeout=None):
        calls.append((name, out_dir, dict(params)))
        if name == "04_residual_heatmaps":
            paths = run_paths(params["output_dir"], params["category"])
            seed = next(p["seed"] for n, _, p in reversed(calls) if n == "02_train_mvtec")
            value = (0.9 if params["method"] == "restore" else 0.6) + 0.01 * seed
            metrics = {"method": params["method"], "image_auroc": value, "pixel_auroc": value, "aupro": value,
                       "image_f1_max": value, "baselines": {"patch_nn": {k: 0.7 for k in
                                                                         ("image_auroc", "pixel_auroc", "aupro",
                                                                          "image_f1_max")}}}
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.method_metrics(params["method"]).write_text(json.dumps(metrics))
            paths.metrics.write_text(json.dumps(metrics))
        return out_dir / f"{name}.ipynb"

    monkeypatch.setattr(jobs, "run_notebook", run)
    return calls


def test_demo_runs_the_restorer_then_the_gan_and_reports_both(fake_notebooks, tmp_path, capsys):
    results = jobs.run_demo(data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), device="cpu",
                            category="demo_gravel", seed=3)
    assert list(results) == ["restore", "iterative"]
    assert results["restore"]["image_auroc"] == pytest.approx(0.93)
    assert results["iterative"]["image_auroc"] == pytest.approx(0.63)
    names = [(n, p.get("objective"), p.get("method")) for n, _, p in fake_notebooks]
    assert names == [("02_train_mvtec", "restore", None), ("03_latent_mapping", None, "restore"),
                     ("04_residual_heatmaps", None, "restore"), ("02_train_mvtec", None, None),
                     ("03_latent_mapping", None, "iterative"), ("04_residual_heatmaps", None, "iterative")]
    for name, folder, params in fake_notebooks:
        assert params["category"] == "demo_gravel" and params["output_dir"] == str((tmp_path / "out").resolve())
        if name != "04_residual_heatmaps":
            assert params["seed"] == 3 and params["device"] == "cpu"
    paths = run_paths(tmp_path / "out", "demo_gravel")
    assert [f for _, f, _ in fake_notebooks] == [paths.notebooks / "restore"] * 3 + [paths.notebooks] * 3
    assert json.loads(paths.metrics.read_text())["method"] == "iterative"  # the GAN's, as before
    out = capsys.readouterr().out
    assert "restorer" in out and "TransGAN AnoGAN" in out and out.count("floor patch_nn") == 2


def test_demo_seeds_summarize_each_detector(fake_notebooks, tmp_path, capsys):
    summary = jobs.run_demo_seeds(seeds=3, output_dir=str(tmp_path / "out"), data_root=str(tmp_path / "data"),
                                  device="cpu")
    assert summary["image_auroc"]["values"] == pytest.approx([0.60, 0.61, 0.62])  # the GAN at the top level
    assert summary["restorer"]["image_auroc"]["values"] == pytest.approx([0.90, 0.91, 0.92])
    assert summary["restorer"]["baselines"]["patch_nn"]["image_auroc"]["mean"] == pytest.approx(0.7)
    written = json.loads((tmp_path / "out" / "seeds" / "demo_summary.json").read_text())
    assert written["restorer"]["image_auroc"]["mean"] == pytest.approx(0.91)
    table = capsys.readouterr().out
    assert "| restorer | 0.910 ± 0.010" in table and "| TransGAN AnoGAN | 0.610 ± 0.010" in table


def test_demo_runs_one_detector_when_asked(fake_notebooks, tmp_path):
    results = jobs.run_demo(output_dir=str(tmp_path / "out"), data_root=str(tmp_path / "d"), detectors=["iterative"])
    assert list(results) == ["iterative"] and len(fake_notebooks) == 3
    with pytest.raises(ValueError, match="unknown detector"):
        jobs.run_demo(output_dir=str(tmp_path / "out"), detectors=["restorr"])


def test_cli_demo_passes_the_detectors(fake_notebooks, tmp_path):
    from transgan_lib.cli import main
    main(["demo", "--output-dir", str(tmp_path / "out"), "--data-root", str(tmp_path / "d"), "--detectors", "restore"])
    assert [p.get("method", p.get("objective")) for _, _, p in fake_notebooks] == ["restore"] * 3


def test_a_notebook_past_its_time_limit_is_stopped_and_named(tmp_path, monkeypatch):
    """A hung kernel (notebook 04's widget cell, twice) stalled the job forever: now it stops and says which."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("import time\ntime.sleep(120)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "99_sleepy.ipynb"))
    monkeypatch.setattr(jobs, "NOTEBOOKS", tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(jobs.NotebookTimeout, match="notebook 99_sleepy did not finish within its limit of 5 s"):
        jobs.run_notebook("99_sleepy", tmp_path / "out", {}, cwd=tmp_path, progress=False, timeout=5)
    assert time.perf_counter() - t0 < 60


def test_the_main_job_gives_every_notebook_a_time_limit(fake_notebooks, monkeypatch, tmp_path):
    limits = []
    real = jobs.run_notebook
    monkeypatch.setattr(jobs, "run_notebook", lambda *a, **kw: (limits.append(kw["timeout"]), real(*a, **kw))[1])
    jobs.run_demo(data_root=str(tmp_path), output_dir=str(tmp_path / "runs"), progress=False)
    assert len(limits) == 6 and set(limits) == {jobs.DEMO_TIMEOUT}


def test_the_demo_takes_the_registry_names_of_its_detectors():
    from transgan_lib.jobs import detector_names
    assert detector_names(["restorer", "iterative"]) == ["restore", "iterative"]
    assert detector_names(["restore"]) == ["restore"]
    with pytest.raises(ValueError, match="unknown detector"):
        detector_names(["hybrid"])  # a method the demo does not run
