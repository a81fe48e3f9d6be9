"""Notebook runtime set-up, called by the first cell of every notebook.

It finds out where the notebook runs ("colab", "kaggle" or "local"); on Colab or Kaggle, where the
package is not installed, it installs the clone the cell made (`pip install --no-deps -e`, then the
other requirements: the runtime's own torch and torchvision are never touched); it shows figures
inline, reports the device torch will use, and picks default paths for the runtime: MVTec AD under
Kaggle's `/kaggle/input/...` when attached, runs on the Colab Drive when mounted (else
`/content/runs`), `/kaggle/working/runs` on Kaggle. Papermill's `-p` values always win: a notebook
applies these defaults only to paths still at their literal defaults (`NotebookRuntime.resolve_paths`).

The repository URL lives here only (`REPO_URL`): the notebooks' first cell is generated from it
(`setup_cell_source`, checked by tests/test_runtime.py), as are the README's Colab badges; a fork
changes `REPO_URL` and runs `python -m transgan_lib.runtime` to rewrite both.

Only the standard library is imported at module level: this module runs before the requirements
are installed.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

REPO_URL = "https://github.com/transgan-anomaly/transgan-anomaly"
DISTRIBUTION = "transgan-anomaly"  # the name pip knows the package by (pyproject.toml)
CLONE_DIR = "transgan-anomaly"  # the clone made by the first cell: ~/transgan-anomaly
# Requirements the set-up leaves to the hosted runtime: its torch build matches its CUDA, and the
# notebook machinery (kernel, widgets, front end) belongs to the running service; pytest is for CI.
KEEP_RUNTIME = ("torch", "torchvision", "ipykernel", "ipywidgets", "jupyterlab", "pytest")
# A path parameter still at its literal default takes the runtime's default (see resolve_paths).
LITERAL_DEFAULTS = {"data_root": "data/mvtec_ad", "output_dir": "runs"}
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def detect_runtime(environ=None) -> str:
    """"colab", "kaggle" or "local", from the variables those services set."""
    environ = os.environ if environ is None else environ
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or "KAGGLE_URL_BASE" in environ:
        return "kaggle"
    return "local"


# ----------------------------------------------------------------------------- clone and install
def clone_command(url: str, dest) -> List[str]:
    """The `git clone` (shallow) of `url` into `dest`."""
    return ["git", "clone", "--depth", "1", url, str(dest)]


def requirements(repo_dir) -> List[str]:
    """The clone's requirements.txt lines, without those in KEEP_RUNTIME (torch, torchvision, ...)."""
    reqs = []
    for line in (Path(repo_dir) / "requirements.txt").read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
        if req and name not in KEEP_RUNTIME:
            reqs.append(req)
    return reqs


def install_commands(repo_dir, python: str = sys.executable) -> List[List[str]]:
    """pip commands installing the clone `repo_dir` editable without its dependencies, then its
    requirements but those in KEEP_RUNTIME (pip keeps installed versions that satisfy them)."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    return [pip + ["--no-deps", "-e", str(repo_dir)], pip + requirements(repo_dir)]


def is_installed(distribution: str = DISTRIBUTION) -> bool:
    """Whether pip has installed `distribution` (editable or not) in this environment."""
    try:
        metadata.version(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def bootstrap(repo_dir, *, runtime: str, url: str = REPO_URL, run: Callable = subprocess.run,
              installed: Optional[bool] = None) -> List[List[str]]:
    """Clone `url` into `repo_dir` unless it holds the package already, then, on Colab or Kaggle
    when the package is not installed, install it (`install_commands`). Locally nothing is
    installed: a clone works from its folder, or `pip install -e .` as the README says.

    Args:
        run: called as `run(command, check=True)` for every command (a fake in tests).
        installed: whether the package is installed (None: ask pip's metadata).
    Returns:
        the commands run, in order.
    """
    done = []
    repo_dir = Path(repo_dir)
    if not (repo_dir / "transgan_lib").is_dir():
        done.append(clone_command(url, repo_dir))
        run(done[-1], check=True)
    installed = is_installed() if installed is None else installed
    if runtime != "local" and not installed:
        for command in install_commands(repo_dir):
            done.append(command)
            run(command, check=True)
    return done


# ----------------------------------------------------------------------------- default paths
def _is_mvtec_root(folder: Path) -> bool:
    """A folder holding at least one category in MVTec layout (`<category>/train/good/`)."""
    return any((sub / "train" / "good").is_dir() for sub in folder.iterdir() if sub.is_dir())


def find_mvtec_root(input_dir, depth: int = 3) -> Optional[Path]:
    """The first folder (breadth first, names sorted, those naming MVTec first) under `input_dir`,
    at most `depth` levels down, that holds MVTec-layout category folders; None if there is none.
    Kaggle mounts a dataset at /kaggle/input/<slug>/, sometimes with a folder inside."""
    level = [Path(input_dir)] if Path(input_dir).is_dir() else []
    for _ in range(depth):
        subs = sorted((d for folder in level for d in folder.iterdir() if d.is_dir()),
                      key=lambda d: ("mvtec" not in d.name.lower(), str(d)))
        for folder in subs:
            if _is_mvtec_root(folder):
                return folder
        level = subs
    return None


def default_paths(runtime: str, *, content=Path("/content"), kaggle=Path("/kaggle")) -> dict:
    """{"data_root": ..., "output_dir": ...} for the runtime, None where the literal default stays.

    Colab: output_dir in the Drive folder `<content>/drive/MyDrive/transgan-anomaly/runs` when
    Drive is mounted, else `<content>/runs` (lost when the runtime is recycled).
    Kaggle: data_root the MVTec AD dataset attached under `<kaggle>/input` (found by its layout),
    output_dir `<kaggle>/working/runs` (kept as the kernel's output).
    Local: both None. `content` and `kaggle` are the mount points (tests pass temporary folders).
    """
    if runtime == "colab":
        drive = Path(content) / "drive" / "MyDrive"
        out = drive / CLONE_DIR / "runs" if drive.is_dir() else Path(content) / "runs"
        return {"data_root": None, "output_dir": str(out)}
    if runtime == "kaggle":
        found = find_mvtec_root(Path(kaggle) / "input")
        return {"data_root": str(found) if found else None, "output_dir": str(Path(kaggle) / "working" / "runs")}
    return {"data_root": None, "output_dir": None}


# ----------------------------------------------------------------------------- parameters
PARAMETERS_HEADER = "# 3. Parameters"  # the first line of every notebook's `parameters` cell
INJECTED_HEADER = "# Parameters"  # the first line of the cell papermill injects after it


class ParameterError(ValueError):
    """A notebook was given a parameter its `parameters` cell does not have."""


def assigned_names(source: str) -> List[str]:
    """The names a cell assigns at its top level (`name = value`), in order."""
    import ast
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def unknown_parameters(history: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """(name, closest known name or None) for every name papermill injected (`-p name value`) that the
    notebook's own parameters cell does not define, from the cells run so far (`In`, oldest first)."""
    declared, passed = None, []
    for source in history:
        head = source.lstrip()
        if head.startswith(PARAMETERS_HEADER):
            declared, passed = assigned_names(source), []
        elif declared is not None and head.startswith(INJECTED_HEADER + "\n"):
            passed += assigned_names(source)
    if declared is None:
        return []
    return [(name, next(iter(difflib.get_close_matches(name, declared, n=1)), None))
            for name in dict.fromkeys(passed) if name not in declared]


@dataclass(frozen=True)
class NotebookRuntime:
    """Where a notebook runs and the runtime's default paths (None: keep the notebook's own)."""
    name: str
    data_root: Optional[str] = None
    output_dir: Optional[str] = None

    def resolve_paths(self, **values) -> tuple:
        """The given path parameters, in order, each replaced by this runtime's default when it is
        still the literal default of the parameters cell (LITERAL_DEFAULTS): a value injected by
        papermill or edited by hand is kept. Prints every replacement."""
        out = []
        for name, value in values.items():
            default = getattr(self, name, None)
            if default is not None and value == LITERAL_DEFAULTS.get(name):
                print(f"{name} = {default!r}  ({self.name} default for {value!r})")
                value = default
            out.append(value)
        return tuple(out)

    @staticmethod
    def check_parameters(namespace: Mapping) -> None:
        """ParameterError naming every parameter papermill passed that this notebook does not have, with
        the closest known name (papermill itself only warns, and a typo such as `-p epoch 1` would run
        with the default 350 epochs). `namespace`: the notebook's globals(), whose `In` is its history."""
        unknown = unknown_parameters(list(namespace.get("In") or []))
        if unknown:
            raise ParameterError("unknown parameter(s) for this notebook: " + "; ".join(
                f"{name!r}" + (f" (did you mean {close!r}?)" if close else "") for name, close in unknown)
                + ". Its parameters are the names in its `parameters` cell (cell 3).")


def _inline_figures() -> None:
    try:
        ipython = get_ipython()  # type: ignore[name-defined]  # noqa: F821 (defined inside IPython)
        ipython.run_line_magic("matplotlib", "inline")
    except NameError:
        pass


def setup_notebook(repo_dir=None, *, verbose: bool = True, environ: Optional[Mapping[str, str]] = None,
                   run: Callable = subprocess.run, **mounts) -> NotebookRuntime:
    """The first cell's call: install the clone `repo_dir` when needed (`bootstrap`; None: no
    clone was made, nothing to install), inline figures, one line naming the runtime and device,
    and the runtime's default paths (`default_paths`; `mounts` as there, for tests)."""
    name = detect_runtime(environ)
    if repo_dir is not None:
        bootstrap(repo_dir, runtime=name, run=run)
    _inline_figures()
    rt = NotebookRuntime(name, **default_paths(name, **mounts))
    if verbose:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        gpus = f" x{torch.cuda.device_count()}" if device == "cuda" else ""
        print(f"transgan_lib runtime: {name}, python {sys.version.split()[0]}, torch {torch.__version__}, "
              f"device {device}{gpus}")
        if name == "kaggle" and rt.data_root is None:
            print("no MVTec AD under /kaggle/input: add the dataset (Add Input) or set data_root")
    return rt


# ----------------------------------------------------------------------------- the cell and the badges
def setup_cell_source(url: str = REPO_URL) -> str:
    """The source of every notebook's first cell: find the package (a clone above the working
    folder, or installed), else clone `url` into ~/transgan-anomaly; then `setup_notebook`."""
    clone = clone_command(url, "CLONE")
    clone_list = json.dumps(clone).replace('"CLONE"', "str(root)")
    return "\n".join([
        "# 1. Runtime set-up (transgan_lib/runtime.py; generated by setup_cell_source: edit it there).",
        "# Colab/Kaggle: clones the repository to ~/transgan-anomaly and installs it, keeping the runtime's torch.",
        "import importlib.util, subprocess, sys; from pathlib import Path  # noqa: E401,E702",
        'root = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "transgan_lib").is_dir()), None)',
        'if root is None and importlib.util.find_spec("transgan_lib") is None:',
        f'    root = Path.home() / "{CLONE_DIR}"',
        '    if not (root / "transgan_lib").is_dir():',
        f"        subprocess.run({clone_list}, check=True)",
        "sys.path[:0] = [str(root)] if root else []",
        "from transgan_lib.runtime import setup_notebook  # noqa: E402",
        "runtime = setup_notebook(root)",
    ])


def github_slug(url: str = REPO_URL) -> str:
    """"<owner>/<repo>" of a GitHub URL."""
    return "/".join(url.rstrip("/").removesuffix(".git").split("/")[-2:])


def colab_url(notebook: str, url: str = REPO_URL) -> str:
    """Colab's address of notebooks/<notebook>.ipynb on the main branch of the repository `url`."""
    return f"https://colab.research.google.com/github/{github_slug(url)}/blob/main/notebooks/{notebook}.ipynb"


def colab_badge(notebook: str, url: str = REPO_URL) -> str:
    """The README's "Open in Colab" badge (markdown) of `notebook`."""
    return f"[![Open in Colab]({COLAB_BADGE})]({colab_url(notebook, url)})"


def sync_repository(repo_root, url: str = REPO_URL) -> List[Path]:
    """Rewrite the first cell of every notebook (`setup_cell_source`) and the README's addresses of
    the repository (the ones its first Colab badge names) for `url`. Returns the files changed."""
    repo_root, changed = Path(repo_root), []
    for nb_path in sorted((repo_root / "notebooks").glob("0*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        source = setup_cell_source(url).splitlines(keepends=True)
        if code and code[0]["source"] != source:
            code[0]["source"] = source
            nb_path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
            changed.append(nb_path)
    readme = repo_root / "README.md"
    text = readme.read_text()
    old = re.search(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/", text)
    if old and old.group(1) != github_slug(url):
        new = text.replace(f"github/{old.group(1)}/", f"github/{github_slug(url)}/")
        readme.write_text(new.replace(f"https://github.com/{old.group(1)}", url.rstrip("/")))
        changed.append(readme)
    return changed


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m transgan_lib.runtime [REPO_ROOT]`: `sync_repository` with REPO_URL."""
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    for path in sync_repository(root):
        print(f"rewritten for {REPO_URL}: {path}")


if __name__ == "__main__":
    main()
