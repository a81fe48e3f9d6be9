"""Repository hygiene: notebooks stripped, parameter names kept, CI runs the README's test command."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))

# The parameter names (and defaults) the issues give: users' scripts call them, keep them exactly.
REQUIRED_PARAMETERS = {
    "01_data_exploration": {"data_root": "data/mvtec_ad", "category": "bottle"},
    "02_train_mvtec": {
        "data_root": "data/mvtec_ad", "category": "bottle", "image_size": None, "model_size": None,
        "latent_dim": 1024, "epochs": None, "batch_size": None, "lr": None, "beta1": 0.001,
        "beta2": 0.99, "output_dir": "runs", "seed": 0, "device": "auto"},
    "03_latent_mapping": {
        "data_root": "data/mvtec_ad", "category": "bottle", "output_dir": "runs",
        "method": "iterative", "iterations": 1000, "lambda_": 0.1, "batch_size": 32, "device": "auto"},
    "04_residual_heatmaps": {"data_root": "data/mvtec_ad", "category": "bottle", "output_dir": "runs"},
    "05_cifar_dual_discriminator": {
        "dataset": "cifar10", "data_root": "data", "anomaly_class": 0, "labelled_anomaly_ratio": 0.05,
        "image_size": 32, "model_size": "base", "pretrained": True, "output_dir": "runs", "seed": 0,
        "device": "auto", "latent_dim": None, "epochs": None, "batch_size": None},
}


def _parameters(nb_path):
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: expected exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_all_notebooks_present():
    assert [p.stem for p in NOTEBOOKS] == sorted(REQUIRED_PARAMETERS)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_outputs_stripped(nb_path):
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{nb_path.name} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"{nb_path.name} has execution counts"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_parameters_and_no_definitions(nb_path):
    params = _parameters(nb_path)
    for name, default in REQUIRED_PARAMETERS[nb_path.stem].items():
        assert name in params, f"{nb_path.name}: parameter {name!r} missing"
        if default is not None:
            assert params[name] == default, f"{nb_path.name}: {name} = {params[name]!r}, expected {default!r}"
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            assert not re.search(r"^\s*(def|class)\s", src, re.M), f"{nb_path.name}: logic belongs in transgan_lib"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(nb_path):
    """papermill -p only warns ("Passed unknown parameter") about a line it cannot parse, e.g. a
    comment holding "=": every parameter must be one papermill sees."""
    pm = pytest.importorskip("papermill")
    assert set(pm.inspect_notebook(str(nb_path))) == set(_parameters(nb_path))


def _field_defaults(cls) -> dict:
    import dataclasses
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def _signature_defaults(fn) -> dict:
    import inspect
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _library_defaults(stem: str) -> tuple:
    """(the defaults a notebook's parameters must equal, the parameters no library default backs)."""
    from transgan_lib.cifar.config import CifarConfig
    from transgan_lib.config import EncoderConfig, MappingConfig, TrainConfig
    from transgan_lib.methods.pipeline import evaluate, run_mapping
    train = _field_defaults(TrainConfig)
    if stem == "01_data_exploration":  # no objective here: the images at the GAN's default training size
        return TrainConfig().to_dict(), ()
    if stem == "02_train_mvtec":  # None stands for the objective's own default (TrainConfig.__post_init__)
        return train, ("gpus",)
    if stem == "03_latent_mapping":
        encoder = {"encoder_epochs": _field_defaults(EncoderConfig)["epochs"]}
        return {**train, **_signature_defaults(run_mapping), **_field_defaults(MappingConfig), **encoder}, ()
    if stem == "04_residual_heatmaps":
        # evaluate's None means "the mapping's setting": the MappingConfig defaults are the ones that apply
        return {**train, **_signature_defaults(evaluate), **_field_defaults(MappingConfig)}, ()
    return _field_defaults(CifarConfig), ("all_classes", "resume")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defaults_are_the_library_defaults(nb_path):
    """Every parameter of a notebook has the default of the config field (or library argument) it sets,
    so a default chosen on validation data (README) cannot change in one place and not in the other; a
    parameter no library default backs is named here."""
    defaults, free = _library_defaults(nb_path.stem)
    params = _parameters(nb_path)
    unbacked = sorted(set(params) - set(defaults) - set(free))
    assert not unbacked, f"{nb_path.name}: parameters without a library default: {unbacked}"
    shared = sorted(set(params) & set(defaults))
    assert {k: params[k] for k in shared} == {k: defaults[k] for k in shared}


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"^```bash\n(?:.*\n)*?(?P<cmd>.*pytest.*)\n", readme, re.M)
    assert m, "README.md must give the test command in a bash block"
    assert m.group("cmd").strip() in ci.splitlines(), "README's test command must appear verbatim in .ci/run"


def test_kaggle_metadata_points_at_notebooks():
    metas = sorted((ROOT / "kaggle").glob("*.json"))
    assert metas, "kaggle/ holds one kernel metadata file per notebook"
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        for key in ("id", "title", "code_file", "language", "kernel_type", "enable_gpu", "enable_internet"):
            assert key in meta, f"{meta_path.name}: {key} missing"
        assert (ROOT / "notebooks" / meta["code_file"]).exists(), f"{meta_path.name}: {meta['code_file']} not found"
        assert meta["kernel_type"] == "notebook" and meta["language"] == "python"


# import name -> distribution name, for the modules transgan_lib imports from other packages
DISTRIBUTIONS = {"IPython": "ipykernel", "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn"}


def test_every_imported_package_is_declared():
    """A package the library imports is a declared dependency in pyproject.toml (scipy once was not)."""
    import sys
    imported = set()
    for path in (ROOT / "transgan_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "transgan_lib"}
    text = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', text.split("dependencies = [")[1].split("]")[0], re.M))
    missing = sorted(m for m in third_party if DISTRIBUTIONS.get(m, m) not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_readme_layout_table_matches_the_tree():
    """Every module of transgan_lib is listed in the README's Layout table under its folder, and
    every module listed there exists."""
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0].startswith("`transgan_lib/"):
            folder = cells[0].strip("`")
            listed |= {folder + name for name in re.findall(r"`([\w]+\.py)`", cells[1])}
    tree = {str(p.relative_to(ROOT)) for p in (ROOT / "transgan_lib").rglob("*.py") if p.name != "__init__.py"}
    assert listed == tree, f"README lists but missing: {sorted(listed - tree)}; not listed: {sorted(tree - listed)}"


def test_ruff_passes():
    """The linter CI runs (rules and line length 120 in pyproject.toml)."""
    import shutil
    import subprocess
    import sys
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True).returncode:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(root)], capture_output=True,
                          text=True, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
