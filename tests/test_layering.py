"""Imports flow one way: data_gen and models import nothing of train or infer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER = {"data_gen": set(), "models": set()}
UPPER = {"train", "infer"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports would slip past the package check: the code base has none.
            assert node.level == 0, f"{path}: relative import at line {node.lineno}"
            if node.module:
                out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(LOWER))
def test_lower_layers_do_not_import_train_or_infer(package):
    for path in (ROOT / package).rglob("*.py"):
        for mod in _imports(path):
            parts = mod.split(".")
            assert not (parts[0] == "dislotrack" and len(parts) > 1 and parts[1] in UPPER), (
                f"{path.relative_to(ROOT)} imports {mod}")


@pytest.mark.parametrize("package", ["data_gen", "models", "train", "infer"])
def test_no_bare_folder_imports(package):
    for path in (ROOT / package).rglob("*.py"):
        for mod in _imports(path):
            assert mod.split(".")[0] not in {"data_gen", "models", "train", "infer"}, (
                f"{path.relative_to(ROOT)} imports bare {mod}; use dislotrack.{mod}")


def test_data_gen_does_not_import_models():
    for path in (ROOT / "data_gen").rglob("*.py"):
        assert not any(m.startswith("dislotrack.models") for m in _imports(path)), path
