"""The built wheel works installed outside the checkout: shipped specs and data are inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a fresh directory; commands then run
    with `python -S` (no site: the editable install's finder stays out) and PYTHONPATH holding
    that directory first, then the dependencies' site-packages."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("normbench-*.whl")
    target = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, target, env, work


def _run(installed, *args, timeout=600):
    _, _, env, work = installed
    return subprocess.run([sys.executable, "-S", "-m", "normbench", *map(str, args)], cwd=work,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_ships_configs_data_and_the_entry_point(installed):
    wheel, target, env, work = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "normbench/configs/groupnorm.yaml" in names and "normbench/_assets/mnist10k.npz" in names
    assert "normbench/_assets/wu_he_2018.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "normbench = normbench.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    where = subprocess.run([sys.executable, "-S", "-c", "import normbench; print(normbench.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr


@pytest.mark.slow
def test_installed_wheel_runs_a_smoke_run(installed):
    _, target, _, work = installed
    done = _run(installed, "run", target / "normbench" / "configs" / "groupnorm.yaml", "--smoke",
                "--quiet", "-s", "dataset=mnist-10k", "--results", work / "results")
    assert done.returncode == 0, done.stderr[-2000:]
    (metrics,) = (work / "results" / "runs").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "finished"


@pytest.mark.slow
def test_installed_wheel_runs_bench_cli(installed):
    _, _, _, work = installed
    done = _run(installed, "bench", "cli", "--records", "5", "--repeats", "1", "--scale", "none", "--json",
                work / "cli.json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((work / "cli.json").read_text())["rows"]
    assert not any(r["imports_tensorflow"] for r in rows)
