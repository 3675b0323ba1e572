"""The package's layers (sharpgaps/__init__.py): every import points down or sideways, never up; no private
name crosses a module; imports sit at the top unless a comment names the start-up cost that keeps one inside."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src/sharpgaps"
LAYERS = ["core", "data", "engine", "curvature", "studies", "report", "pipeline"]
MODULES = sorted(p for p in SRC.rglob("*.py") if p.parent != SRC)


def _imports(path: Path, root: Path = SRC):
    """(line, absolute module, imported names, at top level) of every import in a module under ``root``."""
    tree = ast.parse(path.read_text())
    package = ["sharpgaps", *path.relative_to(root).parent.parts]
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            if node.module is None:  # `from . import x`: each name is a module
                for name in names:
                    yield node.lineno, f"{module}.{name}", [], id(node) in top
            else:
                yield node.lineno, module, names, id(node) in top


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if parts[0] == "sharpgaps" and len(parts) > 1 and parts[1] in LAYERS else None


def test_the_package_is_its_layers():
    assert sorted(p.name for p in SRC.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)
    for path in MODULES:
        assert _layer("sharpgaps." + ".".join(path.relative_to(SRC).with_suffix("").parts)) in LAYERS


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    own = LAYERS.index(path.relative_to(SRC).parts[0])
    for line, module, _, _ in _imports(path):
        layer = _layer(module)
        assert layer is None or LAYERS.index(layer) <= own, (
            f"{path.relative_to(SRC)}:{line} imports {module}, a layer above its own")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_names_across_modules(path):
    for line, module, names, _ in _imports(path):
        private = [n for n in names if n.startswith("_")]
        assert module == "__future__" or not private, f"{path.relative_to(SRC)}:{line} imports {private}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_at_the_top_unless_start_up_says_why(path):
    lines = path.read_text().splitlines()
    for line, module, _, top in _imports(path):
        assert top or "start-up" in lines[line - 1], (
            f"{path.relative_to(SRC)}:{line} imports {module} inside a function without a start-up comment")


def test_the_checks_see_an_upward_import_and_a_private_name(tmp_path):
    fake = tmp_path / "core" / "x.py"
    fake.parent.mkdir()
    fake.write_text("from ..pipeline import jobs\nfrom ..engine.localsgd import _private\n\n\ndef f():\n    import torch\n")
    found = list(_imports(fake, tmp_path))
    assert [(m, top) for _, m, _, top in found] == [("sharpgaps.pipeline", True),
                                                     ("sharpgaps.engine.localsgd", True), ("torch", False)]
    assert LAYERS.index(_layer(found[0][1])) > LAYERS.index("core") and found[1][2] == ["_private"]


def test_the_readme_draws_the_layers_of_the_tree():
    readme = (SRC.parents[1] / "README.md").read_text()
    block = readme.split("<!-- layers:begin -->", 1)[1].split("<!-- layers:end -->", 1)[0]
    drawn = {}
    for line in block.splitlines():
        head, _, rest = line.strip().partition("/ ")
        if head in LAYERS:
            drawn[head] = set(rest.split())
    assert list(drawn) == LAYERS[::-1]  # top layer first
    for layer, names in drawn.items():
        assert names == {p.stem for p in (SRC / layer).glob("*.py") if p.stem != "__init__"}, layer
