"""The layering of docs/architecture.md, checked: which normbench modules each module imports
(at any depth of the file), and that only the TensorFlow modules import it at module level."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "normbench"
DOC = (ROOT / "docs" / "architecture.md").read_text()

# module -> the normbench modules it may import (docs/architecture.md, "Modules")
ALLOWED = {
    "errors": set(), "stats": set(), "norms": {"errors", "layers"},
    "spec": {"norms", "errors"}, "grid": {"spec", "errors"}, "store": {"errors"},
    "tables": {"store", "stats", "norms", "errors"}, "console": {"tables"},
    "data": {"errors"}, "layers": {"console"}, "models": {"spec", "console", "errors"},
    "train": {"data", "layers", "models", "norms", "spec", "store", "console", "errors"},
    "sweep": {"spec", "store", "tables", "train", "provenance", "errors"},
    "provenance": set(),
    "api": {"console", "grid", "spec", "store", "sweep", "tables", "track", "errors"},
    "track": {"store", "tables", "errors"},
    "gates": {"store", "errors"},
    "plot": {"stats", "store", "tables", "errors"},
    "report": {"grid", "spec", "stats", "store", "tables", "plot", "errors"}, "verify": {"layers", "console", "tables", "norms"},
    "peers": {"spec", "errors"},
    "floor": {"data", "layers", "spec", "train", "peers", "errors"},
    "bench": {"grid", "spec", "store", "sweep", "train", "console", "tables", "errors", "data", "peers",
              "stats", "layers", "norms", "floor"},
}
TF_MODULES = {"layers", "models", "train"}  # import TensorFlow at module level


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(normbench modules imported anywhere, third-party top-level modules imported at module level)."""
    tree = ast.parse(path.read_text())
    ours, top = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "normbench":
                ours |= {a.name for a in node.names if a.name != "__version__"}
            elif node.module.startswith("normbench."):
                ours.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            ours |= {a.name.split(".")[1] for a in node.names if a.name.startswith("normbench.")}
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top.add(node.module.split(".")[0])
    return ours, top


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_imports_go_one_way(module):
    ours, _ = _imports(PACKAGE / f"{module}.py")
    assert ours - {module} <= ALLOWED[module], f"{module} imports {sorted(ours - ALLOWED[module] - {module})}"


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_tensorflow_only_where_models_are_built_or_trained(module):
    _, top = _imports(PACKAGE / f"{module}.py")
    if module not in TF_MODULES:
        assert not top & {"tensorflow", "keras", "tensorflow_addons"}, module


def test_every_module_is_in_the_architecture_page():
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert f"`{path.stem}.py`" in DOC, f"docs/architecture.md does not describe {path.name}"


def test_no_module_reads_another_modules_private_names():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        used = re.findall(r"\b(?:store|tables|spec|specs|grid|sweep|console|norms|data|train)\.(_[a-z]\w*)", text)
        assert not used, f"{path.name} reads private names {used}"
