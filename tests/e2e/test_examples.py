"""The shipped examples run: the GitHub Actions gate's commands, as the workflow gives them."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"


def _steps() -> dict[str, str]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    (job,) = doc["jobs"].values()
    return {s["name"]: s["run"] for s in job["steps"] if "run" in s}, job["env"]


@pytest.mark.slow
def test_the_ci_gate_passes_then_fails_above_the_result(tmp_path):
    steps, env = _steps()
    assert set(steps) == {"Install", "Smoke-run the configs", "Gate"}
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    bin_dir = str(Path(sys.executable).parent)  # normbench is installed here (the Install step)
    base = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}

    def step(name: str, **extra) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", steps[name]], cwd=tmp_path, env={**base, **extra},
                              capture_output=True, text=True, timeout=900)

    trained = step("Smoke-run the configs")
    assert trained.returncode == 0, trained.stderr[-2000:]
    passed = step("Gate")
    assert passed.returncode == 0, passed.stderr[-2000:]
    report = ET.parse(tmp_path / "results" / "ci" / "junit.xml").getroot()
    assert report.get("tests") == "3" and report.get("failures") == "0"
    failed = step("Gate", NORMBENCH_MIN_ACC="0.9999")
    assert failed.returncode == 1 and failed.stderr.count("FAIL ") == 3, failed.stderr
    report = ET.parse(tmp_path / "results" / "ci" / "junit.xml").getroot()
    assert report.get("failures") == "3"
    assert len(report.findall(".//testcase/failure")) == 3


@pytest.mark.slow
def test_the_tutorial_notebook_executes(tmp_path):
    """examples/normalizations.ipynb, run by a real Jupyter kernel (smoke-sized, as CI does)."""
    import pytest

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    notebook = nbformat.read(ROOT / "examples" / "normalizations.ipynb", as_version=4)
    env = {"NORMBENCH_SMOKE": "1", "NORMBENCH_RESULTS": str(tmp_path / "results")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    table = notebook.cells[7].outputs[0]["data"]["text/plain"]
    for norm in ("group", "instance", "batch", "layer", "none"):
        assert norm in table
    assert any("image/png" in o.get("data", {}) for o in outputs)
    shown = " ".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "epoch 1/1" in shown and "ipywidgets" not in shown  # rich's progress, rendered by Jupyter
    assert len(list((tmp_path / "results" / "runs").glob("*/metrics.json"))) == 10


def test_the_workflow_calls_only_commands_normbench_has():
    """Every `normbench SUBCOMMAND` in the workflow's steps is a command of the CLI."""
    import re

    from normbench import cli

    steps, env = _steps()
    names = {c.name or c.callback.__name__.replace("_", "-") for c in cli.app.registered_commands}
    names |= {g.name for g in cli.app.registered_groups}
    used = {m for text in steps.values() for m in re.findall(r"\bnormbench (\w[\w-]*)", text)}
    assert used and used <= names, used - names
    assert "NORMBENCH_MIN_ACC" in env
