"""The library's shape (issue 9): subpackages by stage with imports pointing only down the data flow,
no private names imported across modules, and modules and functions small enough to read."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transgan_lib"
# Layers in data-flow order: a module may import from its own layer (same subpackage) or below.
LAYERS = {"utils": 0, "config": 0, "runs": 0, "metrics": 0, "runtime": 0, "filters": 0, "registry": 0,
          "data": 1, "models": 2, "viz": 3, "training": 4, "detection": 5, "methods": 6, "cifar": 6,
          "jobs": 7, "launch": 7, "benchmark": 7, "cli": 7, "export": 7, "api": 7, "gan": 7, "__main__": 7,
          "__init__": 7}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # lines of code, the docstring not counted
LONG_REASON = "Long because"  # a longer function says why in its docstring


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imports(path: Path):
    """(target module dotted name, imported names) for every import of a transgan_lib module."""
    name = dotted(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if path.name == "__init__.py":
        package = name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("transgan_lib"):
                yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("transgan_lib"):
                    yield a.name, []


def layer(dotted_name: str) -> int:
    parts = dotted_name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["__init__"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_imports_point_down_the_data_flow(path):
    source = dotted(path)
    for target, names in imports(path):
        if target == "transgan_lib":  # `from transgan_lib import maps`: the submodules imported
            targets = [f"transgan_lib.{n}" for n in names]
        else:
            targets = [target]
        for t in targets:
            same_stage = t.split(".")[:2] == source.split(".")[:2]
            top_level = layer(t) == layer(source) and layer(t) in (0, LAYERS["cli"])
            assert same_stage or top_level or layer(t) < layer(source), \
                f"{source} imports {t}: upward (layers {LAYERS})"


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_no_private_names_across_modules(path):
    for target, names in imports(path):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{dotted(path)} imports private {private} from {target}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_modules_and_functions_are_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{dotted(path)}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            has_doc = ast.get_docstring(node) is not None and len(node.body) > 1
            first = node.body[1] if has_doc else node.body[0]  # the code, without the docstring
            n = node.end_lineno - first.lineno + 1
            if n > MAX_FUNCTION_LINES:
                assert LONG_REASON in (ast.get_docstring(node) or ""), \
                    f"{dotted(path)}.{node.name}: {n} lines and no '{LONG_REASON} ...' in its docstring"


def test_layout_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing from detection is flagged."""
    fake = tmp_path / "transgan_lib" / "data"
    fake.mkdir(parents=True)
    bad = fake / "bad.py"
    bad.write_text("from ..detection.maps import MAP_KINDS\nfrom ..utils import _private\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PACKAGE", tmp_path / "transgan_lib")
    with pytest.raises(AssertionError, match="upward"):
        test_imports_point_down_the_data_flow(bad)
    with pytest.raises(AssertionError, match="private"):
        test_no_private_names_across_modules(bad)


def test_the_training_stack_names_no_method():
    """training/ is every method's loop: no "restore" anywhere in it (issue 22's `git grep`), and no
    method, objective or checkpoint kind as a string in its code, so it cannot branch on one."""
    from transgan_lib.cifar.train import KIND as CIFAR_KIND
    from transgan_lib.config import METHODS, OBJECTIVES
    from transgan_lib.methods.restorer.train import KIND as RESTORER_KIND
    from transgan_lib.methods.transgan.checkpoint import KIND as GAN_KIND
    from transgan_lib.methods.transgan.checkpoint import WEIGHTS_KIND
    names = {n for m in METHODS.values() for n in (m.name, m.scoring, *m.aliases)}
    names |= set(OBJECTIVES) | {GAN_KIND, WEIGHTS_KIND, RESTORER_KIND, CIFAR_KIND}
    for path in sorted((PACKAGE / "training").glob("*.py")):
        text = path.read_text()
        assert "restore" not in text.lower(), f"{dotted(path)} mentions 'restore'"
        strings = {n.value for n in ast.walk(ast.parse(text))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & names, f"{dotted(path)} names the method(s) {sorted(strings & names)}"
