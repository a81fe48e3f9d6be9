"""The notebooks' set-up (issue 13): runtime detection, clone and install commands (checked, never
run: `run` is a fake), default paths on a faked Colab and Kaggle, the first cell generated from
REPO_URL, and the README's Colab badges."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transgan_lib import runtime as rt

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
COLAB = {"COLAB_RELEASE_TAG": "release-colab_20260101"}
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "KAGGLE_URL_BASE": "https://www.kaggle.com"}


class FakeRun:
    """Records commands; a `git clone` makes the clone folder (package and requirements.txt)."""

    def __init__(self):
        self.commands = []

    def __call__(self, command, check=False):
        self.commands.append(list(command))
        if command[:2] == ["git", "clone"]:
            dest = Path(command[-1])
            (dest / "transgan_lib").mkdir(parents=True)
            shutil.copy(ROOT / "requirements.txt", dest / "requirements.txt")
        return subprocess.CompletedProcess(command, 0)


def test_detect_runtime():
    assert rt.detect_runtime(COLAB) == "colab"
    assert rt.detect_runtime({"COLAB_GPU": "1"}) == "colab"
    assert rt.detect_runtime(KAGGLE) == "kaggle"
    assert rt.detect_runtime({"HOME": "/root"}) == "local"


def test_install_commands_keep_the_runtime_torch(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "# comment\ntorch>=2.1\ntorchvision>=0.16  # theirs\nnumpy>=1.23\n\nscikit-image>=0.21 # x\nipykernel>=6\n")
    editable, reqs = rt.install_commands(tmp_path, python="py")
    assert editable == ["py", "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(tmp_path)]
    assert reqs == ["py", "-m", "pip", "install", "--quiet", "numpy>=1.23", "scikit-image>=0.21"]
    # the repository's own file: everything but the runtime's packages, papermill included
    real = rt.requirements(ROOT)
    assert not [r for r in real if r.startswith(("torch", "torchvision", "ipykernel"))]
    assert any(r.startswith("papermill") for r in real) and any(r.startswith("numpy") for r in real)


def test_bootstrap_on_colab_clones_then_installs(tmp_path):
    run, clone = FakeRun(), tmp_path / "transgan-anomaly"
    done = rt.bootstrap(clone, runtime="colab", run=run, installed=False)
    assert run.commands == done
    assert done[0] == ["git", "clone", "--depth", "1", rt.REPO_URL, str(clone)]
    assert done[1][-3:] == ["--no-deps", "-e", str(clone)]
    assert done[2][-len(rt.requirements(clone)):] == rt.requirements(clone) and "torch>=2.1" not in done[2]


def test_bootstrap_skips_what_is_done(tmp_path):
    run, clone = FakeRun(), tmp_path / "transgan-anomaly"
    rt.bootstrap(clone, runtime="kaggle", run=run, installed=False)
    run.commands.clear()
    assert rt.bootstrap(clone, runtime="kaggle", run=run, installed=True) == []  # cloned and installed
    assert rt.bootstrap(clone, runtime="local", run=run, installed=False) == []  # never installs locally
    assert run.commands == []


def _mvtec(root: Path, *categories):
    for c in categories:
        (root / c / "train" / "good").mkdir(parents=True)
        (root / c / "test" / "good").mkdir(parents=True)
    return root


def test_default_paths_colab(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    assert rt.default_paths("colab", content=content) == {"data_root": None, "output_dir": str(content / "runs")}
    (content / "drive" / "MyDrive").mkdir(parents=True)  # Drive mounted
    out = rt.default_paths("colab", content=content)["output_dir"]
    assert out == str(content / "drive" / "MyDrive" / "transgan-anomaly" / "runs")


@pytest.mark.parametrize("layout", ["flat", "nested", "none"])
def test_default_paths_kaggle(tmp_path, layout):
    kaggle = tmp_path / "kaggle"
    (kaggle / "input" / "another-dataset" / "cats" / "train").mkdir(parents=True)  # attached, no train/good
    expected = {"flat": kaggle / "input" / "mvtec-ad",
                "nested": kaggle / "input" / "mvtec-ad" / "mvtec_anomaly_detection", "none": None}[layout]
    if expected is not None:
        _mvtec(expected, "bottle", "cable")
    paths = rt.default_paths("kaggle", kaggle=kaggle)
    assert paths["data_root"] == (str(expected) if expected else None)
    assert paths["output_dir"] == str(kaggle / "working" / "runs")
    assert rt.default_paths("local", kaggle=kaggle) == {"data_root": None, "output_dir": None}


def test_resolve_paths_keeps_injected_values():
    kaggle = rt.NotebookRuntime("kaggle", data_root="/kaggle/input/mvtec-ad", output_dir="/kaggle/working/runs")
    assert kaggle.resolve_paths(data_root="data/mvtec_ad", output_dir="runs") == \
        ("/kaggle/input/mvtec-ad", "/kaggle/working/runs")  # literal defaults: the runtime's
    assert kaggle.resolve_paths(data_root="/mine", output_dir="out") == ("/mine", "out")  # papermill -p wins
    assert kaggle.resolve_paths(data_root="data") == ("data",)  # notebook 05's CIFAR folder is not MVTec AD
    local = rt.NotebookRuntime("local")
    assert local.resolve_paths(data_root="data/mvtec_ad", output_dir="runs") == ("data/mvtec_ad", "runs")


def test_setup_notebook_on_faked_kaggle(tmp_path, capsys):
    run, kaggle = FakeRun(), tmp_path / "kaggle"
    _mvtec(kaggle / "input" / "mvtec-ad", "bottle")
    got = rt.setup_notebook(tmp_path / "clone", environ=KAGGLE, run=run, kaggle=kaggle)
    assert got == rt.NotebookRuntime("kaggle", str(kaggle / "input" / "mvtec-ad"), str(kaggle / "working" / "runs"))
    assert run.commands[0][:2] == ["git", "clone"]
    assert "runtime: kaggle" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the first cell
def _code_cells(nb_path):
    return [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_is_generated_from_repo_url(nb_path):
    """Cell 1 is setup_cell_source() exactly (a fork: `python -m transgan_lib.runtime` rewrites it),
    and the runtime paths are applied right after the parameters (and papermill's injected cell)."""
    cells = _code_cells(nb_path)
    assert "".join(cells[0]["source"]) == rt.setup_cell_source(), \
        f"{nb_path.name}: cell 1 differs from runtime.setup_cell_source(): run `python -m transgan_lib.runtime`"
    i = next(k for k, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    assert "runtime.resolve_paths(data_root=data_root, output_dir=output_dir)" in "".join(cells[i + 1]["source"])


def test_repo_url_is_written_in_one_module():
    holders = [p.name for p in (ROOT / "transgan_lib").rglob("*.py") if "github.com/" in p.read_text()]
    assert holders == ["runtime.py"]
    assert rt.REPO_URL in rt.setup_cell_source()
    assert rt.github_slug("https://github.com/someone/fork.git") == "someone/fork"


def _exec_first_cell(monkeypatch, tmp_path, *, importable):
    """Run notebook 01's first cell in this process on a faked Colab: working folder outside any
    clone, home in tmp_path, subprocess.run and runtime.bootstrap faked."""
    run, calls = FakeRun(), []
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(rt, "bootstrap", lambda repo_dir, **kw: calls.append((Path(repo_dir), kw["runtime"])))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: real_find_spec(name, *a) if importable or name != "transgan_lib" else None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for k, v in COLAB.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    namespace = {}
    exec("".join(_code_cells(NOTEBOOKS[0])[0]["source"]), namespace)
    return run.commands, calls, namespace


def test_first_cell_clones_when_the_package_is_missing(monkeypatch, tmp_path):
    commands, calls, ns = _exec_first_cell(monkeypatch, tmp_path, importable=False)
    clone = tmp_path / "home" / "transgan-anomaly"
    assert commands == [rt.clone_command(rt.REPO_URL, clone)]
    assert sys.path[0] == str(clone) and calls == [(clone, "colab")]
    assert ns["runtime"].name == "colab" and ns["runtime"].output_dir is not None


def test_first_cell_uses_the_installed_package(monkeypatch, tmp_path):
    commands, calls, ns = _exec_first_cell(monkeypatch, tmp_path, importable=True)
    assert commands == [] and calls == [] and ns["root"] is None


# ----------------------------------------------------------------------------- README and forks
def test_readme_has_a_colab_badge_per_notebook():
    readme = (ROOT / "README.md").read_text()
    for nb_path in NOTEBOOKS:
        assert rt.colab_badge(nb_path.stem) in readme, f"README: no Colab badge for {nb_path.stem}"


def test_sync_repository_rewrites_cells_and_badges(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    fork = "https://github.com/someone/fork"
    changed = rt.sync_repository(tmp_path, fork)
    assert len(changed) == len(NOTEBOOKS) + 1
    for nb_path in sorted((tmp_path / "notebooks").glob("0*.ipynb")):
        assert "".join(_code_cells(nb_path)[0]["source"]) == rt.setup_cell_source(fork)
    readme = (tmp_path / "README.md").read_text()
    assert rt.colab_badge("02_train_mvtec", fork) in readme and "transgan-anomaly/transgan-anomaly" not in readme
    assert rt.sync_repository(tmp_path, fork) == []  # nothing left to change
