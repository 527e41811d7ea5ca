"""The layering of docs/architecture.md, checked: which normbench modules each module imports
(at any depth of the file), and that only the TensorFlow modules import it at module level."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "normbench"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _table() -> tuple[dict[str, set[str]], set[str]]:
    """docs/architecture.md's module table: unit (a module `x.py` or a package `x/`) -> the
    normbench units its row allows, and the units marked **TF**. "every module above" allows
    every row above it."""
    allowed, tf_modules, above = {}, set(), []
    for row in re.finditer(r"^\| `(\w+)(?:\.py|/)`( \*\*TF\*\*)? \| .* \| (.*) \|$", DOC, re.M):
        name, tf, cell = row.groups()
        allowed[name] = set(above) if "every module above" in cell else set(
            re.findall(r"`(\w+)/?`", cell))
        if tf:
            tf_modules.add(name)
        above.append(name)
    return allowed, tf_modules


ALLOWED, TF_MODULES = _table()
PACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "configs")
MODULES = sorted([p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
                 + PACKAGES)


def _files(unit: str) -> list[Path]:
    """The source files of a unit: a module's one file, or every file of a package."""
    return sorted((PACKAGE / unit).rglob("*.py")) if unit in PACKAGES else [PACKAGE / f"{unit}.py"]


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_the_page_has_a_row_for_every_module_and_no_other():
    assert sorted(ALLOWED) == MODULES


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(normbench units imported anywhere, third-party top-level modules imported at module level)."""
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
    ours = set().union(*(_imports(path)[0] for path in _files(module)))
    assert ours - {module} <= ALLOWED[module], f"{module} imports {sorted(ours - ALLOWED[module] - {module})}"


ALL_FILES = sorted(p for unit in MODULES for p in _files(unit))


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_tensorflow_only_where_models_are_built_or_trained(path):
    _, top = _imports(path)
    if _unit(path) not in TF_MODULES:
        assert not top & {"tensorflow", "keras", "tensorflow_addons"}, path.name


def test_no_module_reads_another_modules_private_names():
    """`x._name` where x is another unit (or a file of another package), under any alias."""
    files = {p.stem for p in ALL_FILES}
    names = "|".join(sorted({*MODULES, *files, "specs", "sweeps", "nb", "package"}))
    for path in ALL_FILES:
        used = re.findall(rf"\b({names})\.(_[A-Za-z]\w*)", path.read_text())
        crossing = [f"{owner}.{name}" for owner, name in used if not name.startswith("__")
                    and owner not in (path.stem, _unit(path))]
        assert not crossing, f"{path.relative_to(PACKAGE)} reads private names {crossing}"


def _module_level_imports(path: Path) -> set[str]:
    """Dotted normbench modules `path` imports at module level (`normbench.layers.base`)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module == "normbench":
            found |= {f"normbench.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normbench."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("normbench.")}
    return found


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("normbench", *parts))


def _module_level_graph() -> dict[str, set[str]]:
    """Every file of normbench, as its dotted name, -> what it imports at module level. Importing
    `normbench.a.b` runs `normbench.a` first: a package's __init__ is an edge of its children."""
    graph = {}
    for path in ALL_FILES:
        name, edges = _dotted(path), set()
        for target in _module_level_imports(path):
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")}
    return graph


def test_no_import_cycle_at_module_level():
    graph, state = _module_level_graph(), {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


_LOADED = ("import sys, json, {what}; print(json.dumps(sorted(m.split('.')[0] if not "
           "m.startswith('normbench') else m for m in sys.modules)))")


def _loaded(what: str) -> set[str]:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LOADED.format(what=what)], capture_output=True,
                         text=True, timeout=120, check=True, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                                  "PATH": "/usr/bin:/bin"})
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_importing_the_layers_loads_only_them_and_what_keras_loads():
    layers, keras = _loaded("normbench.layers"), _loaded("keras")
    ours = {m for m in layers if m.startswith("normbench")}
    assert ours <= {"normbench", "normbench.errors", "normbench.tf_runtime", "normbench.layers"} | {
        m for m in ours if m.startswith("normbench.layers.")}
    third_party = {m for m in layers - keras if not m.startswith("normbench")}
    assert third_party <= set(sys.stdlib_module_names) | {"h5py"}, sorted(third_party - set(
        sys.stdlib_module_names))


# Modules (and layer files) whose tests live in another file, and where: any other module gets a
# tests/test_<module>.py.
TESTED_ELSEWHERE = {
    "errors": "every test_* that checks an error line", "tf_runtime": "test_train, test_cli",
    "identity": "test_spec (pinned run ids)", "study": "test_guards", "findings": "test_guards",
    "layers/base": "test_group_normalization", "layers/group_norm_kernel": "test_group_normalization",
    "layers/legacy": "test_saved_layers, test_legacy_models",
}


def test_every_module_has_its_test_file():
    tests = ROOT / "tests"
    missing = []
    for path in sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "layers").glob("*.py")):
        if path.stem.startswith("__"):
            continue
        key = path.stem if path.parent == PACKAGE else f"layers/{path.stem}"
        if not (tests / f"test_{path.stem}.py").exists() and key not in TESTED_ELSEWHERE:
            missing.append(key)
    assert not missing, f"modules without tests/test_<module>.py: {missing}"


def _test_functions(path: Path):
    tree = ast.parse(path.read_text())
    slow_module = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                        for t in n.targets)
                      and "slow" in ast.unparse(n.value) for n in tree.body)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            yield node.name, slow_module or any("mark.slow" in ast.unparse(d)
                                                for d in node.decorator_list)


def test_every_test_file_keeps_quick_tests():
    """`pytest -m "not slow"` (the inner loop) runs a part of every file, end-to-end ones too."""
    files = sorted((ROOT / "tests").rglob("test_*.py"))
    assert any(p.parent.name == "e2e" for p in files)
    only_slow = [p.name for p in files if all(slow for _, slow in _test_functions(p))]
    assert not only_slow, f"files whose every test is marked slow: {only_slow}"


def test_markers_are_strict_and_every_test_has_a_time_limit():
    import tomllib

    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"]
    assert any(m.startswith("slow:") for m in options["markers"])
    assert 0 < int(options["timeout"]) <= 1800
