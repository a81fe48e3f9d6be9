"""The all-category runner (`transgan_lib.benchmark`): parameter routing, resume, a failing category,
the results files, and readable progress. Fast tests use a stand-in notebook executor that writes what
notebook 04 would; one slow test runs the real notebooks at tiny settings on two demo-like categories."""
import csv
import json
import re
import shutil

import pytest
from PIL import Image

from transgan_lib import benchmark
from transgan_lib.benchmark import BenchmarkError, parse_value, run_benchmark
from transgan_lib.runs import run_paths
from transgan_lib.utils import LineProgress

TINY = dict(image_size=32, model_size="tiny", latent_dim=32, epochs=1, batch_size=8, sample_every=1,
            iterations=3, candidates=0, synthetic_copies=1, device="cpu")


class FakeNotebookError(Exception):
    """Like papermill's PapermillExecutionError: the notebook's exception name and value."""

    def __init__(self, ename, evalue):
        super().__init__(evalue)
        self.ename, self.evalue = ename, evalue


def fake_executor(calls, fail=("broken",)):
    """A stand-in for jobs.run_notebook: records (notebook, parameters), writes the executed copy and,
    for notebook 04, a metrics.json whose numbers depend on the category and method."""
    def execute(name, out_dir, parameters, *, cwd, progress=True, timeout=None):
        calls.append((name, dict(parameters)))
        if parameters["category"] in fail:
            raise FakeNotebookError("DatasetError", f"no training images under {parameters['category']}/train/good")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.ipynb").write_text("{}")
        if name == "04_residual_heatmaps":
            score = 0.5 + 0.1 * len(parameters["category"]) % 0.4 + (0.05 if parameters["method"] == "encoder" else 0)
            metrics = {"image_auroc": score, "pixel_auroc": score - 0.1, "aupro": score - 0.2, "image_f1_max": 0.7,
                       "method": parameters["method"],
                       "baselines": {"mean_image": {"image_auroc": 0.68, "pixel_auroc": 0.5, "aupro": 0.3},
                                     "patch_nn": {"image_auroc": 0.55, "pixel_auroc": 0.52, "aupro": 0.2}}}
            path = run_paths(parameters["output_dir"], parameters["category"]).metrics
            path.write_text(json.dumps(metrics))
        return out_dir / f"{name}.ipynb"
    return execute


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_value_reads_like_papermill():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-4") == 1e-4 and parse_value("0.5") == 0.5
    assert parse_value("True") is True and parse_value("False") is False and parse_value("None") is None
    assert parse_value("cuda") == "cuda" and parse_value("translation,cutout") == "translation,cutout"


def test_each_parameter_goes_to_the_notebooks_that_have_it(tmp_path):
    calls = []
    run_benchmark(categories="bottle", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                  overrides=dict(epochs=2, iterations=3, sigma=2.0, seed=5), execute=fake_executor(calls),
                  progress=False)
    by_name = {name: params for name, params in calls}
    assert list(by_name) == ["02_train_mvtec", "03_latent_mapping", "04_residual_heatmaps"]
    assert by_name["02_train_mvtec"]["epochs"] == 2 and "iterations" not in by_name["02_train_mvtec"]
    assert by_name["03_latent_mapping"]["iterations"] == 3 and "epochs" not in by_name["03_latent_mapping"]
    assert by_name["04_residual_heatmaps"]["sigma"] == 2.0 and "seed" not in by_name["04_residual_heatmaps"]
    assert by_name["02_train_mvtec"]["seed"] == 5 and by_name["03_latent_mapping"]["seed"] == 5
    assert all(p["category"] == "bottle" and p["output_dir"] == str((tmp_path / "out").resolve())
               for p in by_name.values())


def test_demo_categories_start_from_the_demo_settings(tmp_path):
    calls = []
    run_benchmark(categories="demo_holdout", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                  overrides=dict(epochs=3), execute=fake_executor(calls), progress=False)
    train = calls[0][1]
    assert train["epochs"] == 3  # -p wins over the demo's 110
    assert train["model_size"] == "tiny" and train["latent_dim"] == 128 and train["category"] == "demo_holdout"
    assert calls[1][1]["candidates"] == 64  # the demo's search settings


def test_unknown_or_runner_parameter_is_refused_before_any_work(tmp_path):
    calls = []
    for overrides, match in ((dict(epoch=3), "did you mean 'epochs'"), (dict(category="x"), "--categories"),
                             (dict(method="encoder"), "--methods")):
        with pytest.raises(BenchmarkError, match=match):
            run_benchmark(categories="bottle", data_root=str(tmp_path), output_dir=str(tmp_path / "out"),
                          overrides=overrides, execute=fake_executor(calls), progress=False)
    with pytest.raises(BenchmarkError, match="choose from"):
        run_benchmark(categories="bottle", output_dir=str(tmp_path / "out"), methods=["pca"],
                      execute=fake_executor(calls), progress=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_command_line_parses_parameters_and_refuses_unknown_ones(monkeypatch):
    from transgan_lib.cli import main
    seen = {}
    monkeypatch.setattr(benchmark, "run_benchmark", lambda **kw: seen.update(kw))
    main(["benchmark", "--categories", "demo,demo_holdout", "-p", "epochs", "3", "-p", "lr", "1e-4",
          "-p", "diffaug", "translation", "-p", "eval_size", "None", "--methods", "iterative,encoder"])
    assert seen["overrides"] == {"epochs": 3, "lr": 1e-4, "diffaug": "translation", "eval_size": None}
    assert seen["methods"] == ["iterative", "encoder"] and seen["categories"] == "demo,demo_holdout"
    assert seen["command"].startswith("python -m transgan_lib benchmark --categories demo,demo_holdout -p epochs 3")
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="-p epoch: no notebook"):
        main(["benchmark", "--categories", "demo", "-p", "epoch", "3"])


def test_categories_default_all_and_list(tmp_path):
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    assert benchmark.resolve_categories(None, tmp_path)[:2] == ["bottle", "cable"]
    assert len(benchmark.resolve_categories("mvtec", tmp_path)) == 15
    assert benchmark.resolve_categories("all", tmp_path) == ["a", "b"]
    assert benchmark.resolve_categories("demo, demo_holdout,demo", tmp_path) == ["demo", "demo_holdout"]
    with pytest.raises(BenchmarkError):
        benchmark.resolve_categories("all", tmp_path / "missing")


def test_resume_failure_methods_and_tables(tmp_path, capsys):
    out, calls = tmp_path / "out", []
    kw = dict(categories="a,broken,bb", data_root=str(tmp_path), output_dir=str(out), methods=["iterative", "encoder"],
              execute=fake_executor(calls), progress=False, overrides=dict(epochs=1))
    result = run_benchmark(**kw)
    names = [(n, p["category"], p.get("method")) for n, p in calls]
    assert names.count(("02_train_mvtec", "a", None)) == 1  # trained once for both methods
    assert ("04_residual_heatmaps", "bb", "encoder") in names  # carried on after the failure
    assert set(result["errors"]) == {"broken"} and "02_train_mvtec: DatasetError" in result["errors"]["broken"]
    assert (out / "a" / "notebooks" / "02_train_mvtec.ipynb").is_file()
    assert (out / "a" / "notebooks" / "encoder" / "04_residual_heatmaps.ipynb").is_file()

    rows = read_csv(out / "results.csv")
    assert [(r["category"], r["method"]) for r in rows] == [
        ("a", "iterative"), ("a", "encoder"), ("broken", "iterative"), ("broken", "encoder"),
        ("bb", "iterative"), ("bb", "encoder"), ("mean", "iterative"), ("mean", "encoder")]
    assert "DatasetError" in rows[2]["error"] and rows[2]["image_auroc"] == "" and rows[0]["error"] == ""
    a, bb, mean = (next(r for r in rows if (r["category"], r["method"]) == (c, "encoder")) for c in ("a", "bb", "mean"))
    assert float(mean["image_auroc"]) == pytest.approx((float(a["image_auroc"]) + float(bb["image_auroc"])) / 2)
    assert mean["n"] == "2" and float(a["mean_image_image_auroc"]) == 0.68 and float(a["patch_nn_pixel_auroc"]) == 0.52
    assert (a["beats_floors"], bb["beats_floors"]) == ("False", "True")  # 0.65 and 0.75 against 0.68
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 8 and "floor mean_image" in table[0] and "**mean** (2 of 3 categories)" in table[-1]
    assert "- broken: 02_train_mvtec: DatasetError" in (out / "results.md").read_text()
    # a: 0.6 and 0.65 beat patch_nn (0.55), not mean_image (0.68)
    assert [line.split(" | ")[-2] for line in table[1:3]] == ["patch_nn", "patch_nn"]
    assert json.loads((out / "results.json").read_text())["errors"].keys() == {"broken"}
    with Image.open(out / "results.png") as image:
        assert image.size[0] > 300 and image.size[1] > 300

    # 2. a second call skips what is finished, says so, and retries only the failed category
    calls.clear()
    capsys.readouterr()
    run_benchmark(**kw)
    printed = capsys.readouterr().out
    assert [p["category"] for _, p in calls] == ["broken"]
    assert printed.count("skipped, already finished") == 4 and "a / encoder: skipped" in printed
    assert len(read_csv(out / "results.csv")) == 8

    # 3. a changed evaluation parameter reruns 03 and 04 (not 02) of every method
    calls.clear()
    run_benchmark(**{**kw, "overrides": dict(epochs=1, sigma=2.0), "categories": "a"})
    assert [(n, p.get("method")) for n, p in calls] == [
        ("03_latent_mapping", "iterative"), ("04_residual_heatmaps", "iterative"),
        ("03_latent_mapping", "encoder"), ("04_residual_heatmaps", "encoder")]
    # a changed training parameter reruns everything
    calls.clear()
    run_benchmark(**{**kw, "overrides": dict(epochs=2, sigma=2.0), "categories": "a", "methods": ["iterative"]})
    assert [n for n, _ in calls] == ["02_train_mvtec", "03_latent_mapping", "04_residual_heatmaps"]


def test_restore_method_trains_the_restorer_in_its_own_notebook_02(tmp_path, capsys):
    """--methods restore: 02 with objective "restore" then 03/04 in notebooks/restore/; the GAN's 02
    only when a GAN method is asked; a demo category starts from the demo job's restorer settings;
    a finished restore row is skipped; a changed 02 parameter retrains both."""
    from transgan_lib.jobs import DEMO_RESTORE_PARAMETERS
    calls, folders = [], []
    execute = fake_executor(calls)

    def recording(name, out_dir, parameters, **kw):
        folders.append(out_dir.name)
        return execute(name, out_dir, parameters, **kw)
    kw = dict(data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), execute=recording, progress=False)
    run_benchmark(categories="demo_gravel", methods=["restore"], overrides=dict(seed=4), **kw)
    assert [(n, p.get("objective"), p.get("method")) for n, p in calls] == [
        ("02_train_mvtec", "restore", None), ("03_latent_mapping", None, "restore"),
        ("04_residual_heatmaps", None, "restore")]
    assert folders == ["restore"] * 3 and calls[0][1]["seed"] == 4
    restorer_02 = DEMO_RESTORE_PARAMETERS["02_train_mvtec"]
    assert all(calls[0][1][k] == v for k, v in restorer_02.items() if k != "category")
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [(r["category"], r["method"]) for r in rows] == [("demo_gravel", "restore"), ("mean", "restore")]

    calls.clear(), folders.clear()
    run_benchmark(categories="demo_gravel", methods=["restore", "iterative"], overrides=dict(seed=4), **kw)
    assert [(n, p.get("objective")) for n, p in calls] == [
        ("02_train_mvtec", None), ("03_latent_mapping", None), ("04_residual_heatmaps", None)]  # the GAN only
    assert "demo_gravel / restore: skipped" in capsys.readouterr().out
    calls.clear()
    run_benchmark(categories="demo_gravel", methods=["restore", "iterative"], overrides=dict(seed=5), **kw)
    assert [(n, p.get("objective"), p.get("method")) for n, p in calls] == [
        ("02_train_mvtec", None, None), ("02_train_mvtec", "restore", None), ("03_latent_mapping", None, "restore"),
        ("04_residual_heatmaps", None, "restore"), ("03_latent_mapping", None, "iterative"),
        ("04_residual_heatmaps", None, "iterative")]


def test_line_progress_prints_readable_lines(capsys):
    bar = LineProgress(total=10, desc="demo", unit="step", step=0.2, min_interval=0.0)
    for i in range(10):
        bar.update(1)
        bar.set_postfix(epoch=i + 1, d_loss="0.123")
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("demo: 100% 10/10 step [")
    assert "ETA" in lines[0] and "epoch=1, d_loss=0.123" in lines[0]
    for _ in LineProgress(range(3), desc="encoder", unit="epoch", min_interval=60.0):
        pass  # throttled: only the line at the end
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("encoder: 100% 3/3 epoch")


def test_progress_display_follows_the_environment(monkeypatch):
    from transgan_lib.utils import PROGRESS_ENV, progress_bar
    monkeypatch.setenv(PROGRESS_ENV, "lines")
    assert isinstance(progress_bar(total=3), LineProgress)
    assert not isinstance(progress_bar(total=3, disable=True), LineProgress)
    assert progress_bar(total=3, disable=True).disable
    monkeypatch.setenv(PROGRESS_ENV, "off")
    assert progress_bar(total=3).disable
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    bar = progress_bar(total=3)
    assert not isinstance(bar, LineProgress) and not bar.disable
    bar.close()


@pytest.mark.slow
def test_runner_on_two_demo_like_categories_end_to_end(demo_root, tmp_path, capfd):
    """The real notebooks at tiny settings: two categories finish, one mis-laid folder fails, the
    tables are written, progress lines stream, and a second call skips the finished ones."""
    root = tmp_path / "data"
    for name in ("demo_a", "demo_b"):
        shutil.copytree(demo_root / "demo", root / name)
    (root / "broken" / "test").mkdir(parents=True)  # no train/good: a mis-laid category
    kw = dict(categories="all", data_root=str(root), output_dir=str(tmp_path / "out"), overrides=TINY)
    result = run_benchmark(**kw)
    printed = capfd.readouterr().out
    assert set(result["errors"]) == {"broken"} and "DatasetError" in result["errors"]["broken"]
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [r["category"] for r in rows] == ["broken", "demo_a", "demo_b", "mean"]
    for row in rows[1:]:
        assert 0 <= float(row["image_auroc"]) <= 1 and 0 <= float(row["aupro"]) <= 1 and row["error"] == ""
        assert 0 <= float(row["mean_image_image_auroc"]) <= 1
    metrics = json.loads(run_paths(tmp_path / "out", "demo_b").metrics.read_text())
    assert float(rows[2]["pixel_auroc"]) == pytest.approx(metrics["pixel_auroc"])
    assert (tmp_path / "out" / "demo_a" / "notebooks" / "iterative" / "04_residual_heatmaps.ipynb").is_file()
    # progress: the stage, and the notebooks' own lines (training steps, search steps, with an ETA)
    assert "=== benchmark [2/3] demo_a" in printed and "--- 03_latent_mapping: running" in printed
    assert re.search(r"^demo_a: 100% \d+/\d+ step \[.* elapsed, ETA", printed, re.MULTILINE), printed[-3000:]
    assert re.search(r"^mapping \(iterative\): 100% \d+/\d+ step", printed, re.MULTILINE)
    assert "benchmark: 3 categories x 1 method(s)" in printed and "1 categories failed (broken)" in printed

    run_benchmark(**kw)
    printed = capfd.readouterr().out
    assert "demo_a / iterative: skipped, already finished" in printed and "demo_b / iterative: skipped" in printed
    assert "--- 02_train_mvtec: running" in printed  # only broken is tried again
    assert printed.count("--- ") == 1


def test_every_notebook_runs_under_a_time_limit_and_a_stopped_one_is_named(tmp_path):
    """A hung notebook 04 stalled a 15-category run forever; now each notebook has a limit."""
    from transgan_lib.jobs import NOTEBOOK_TIMEOUTS, NotebookTimeout
    limits, calls = {}, []
    inner = fake_executor(calls)

    def execute(name, out_dir, parameters, *, cwd, progress=True, timeout=None):
        limits[name] = timeout
        if name == "04_residual_heatmaps" and parameters["category"] == "hangs":
            raise NotebookTimeout(f"notebook {name} did not finish within its limit of {timeout:.0f} s")
        return inner(name, out_dir, parameters, cwd=cwd, progress=progress)
    result = run_benchmark(categories="bottle,hangs", data_root=str(tmp_path / "data"),
                           output_dir=str(tmp_path / "out"), execute=execute, progress=False)
    assert limits == NOTEBOOK_TIMEOUTS
    assert "04_residual_heatmaps" in result["errors"]["hangs"] and "bottle" not in result["errors"]
    run_benchmark(categories="other", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                  execute=execute, progress=False, timeout=60)
    assert set(limits.values()) == {60.0}
