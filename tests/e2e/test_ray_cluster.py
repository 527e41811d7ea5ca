"""`normbench run --executor ray --address` against a real two-node Ray cluster on 127.0.0.1 with
token authentication (tests/engines.py: `ray start --head` and `ray start --address`, HOME and
Ray's temp directory private to the module): a sweep across both nodes, a node lost in the
middle of it, and a client without the cluster's token. Without Ray (the legacy stack) they skip;
under CI they fail if Ray is installed and the cluster does not start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import engines

ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: rayed\ndataset: mnist-10k\nseeds: {seeds}\n"


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    c = engines.started(engines.RayCluster(), "the Ray cluster")
    yield c
    c.stop()


def spec(tmp_path: Path, seeds: int, extra: str = "") -> Path:
    path = tmp_path / "rayed.yaml"
    path.write_text(SPEC.format(seeds=seeds) + extra)
    return path


def normbench(env: dict, *args, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def saved(results: Path) -> list[str]:
    return sorted(p.parent.name for p in (results / "runs").glob("*/metrics.json"))


def busy_cpus(cluster) -> float:
    done = subprocess.run([cluster.ray, "status", "--address", cluster.address], env=cluster.env,
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"([\d.]+)/([\d.]+) CPU", done.stdout)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_client_without_the_token_is_told_how_to_set_it(cluster, tmp_path):
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    for extra, said in (({"HOME": str(home)}, "no token is set here"),
                        ({"HOME": str(home), "RAY_AUTH_MODE": "token",
                          "RAY_AUTH_TOKEN": "not-the-token-" + "x" * 32},
                         "the token in RAY_AUTH_TOKEN was refused")):
        done = normbench({**env, **extra}, "run", spec(tmp_path, 1), "--smoke", "-q",
                         "--executor", "ray", "--address", cluster.address,
                         "--results", tmp_path / "r", timeout=200)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
        assert "refused this client" in lines[0] and "RAY_AUTH_MODE=token" in lines[0], lines
        assert said in lines[0] and saved(tmp_path / "r") == []


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sweep_runs_on_both_nodes_and_a_node_lost_mid_sweep_costs_no_run(cluster, tmp_path):
    # four runs, long enough to lose the second node while both nodes train one
    path = spec(tmp_path, 4, "train: {epochs: 150}\n")  # ~15 s each
    args = ["run", path, "--smoke", "-q", "--executor", "ray", "--address", cluster.address,
            "--results", tmp_path / "r"]
    proc = subprocess.Popen([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        engines.wait_for("both nodes busy", lambda: busy_cpus(cluster) >= 2, 180, every=0.5)
        cluster.stop_worker()  # while it trains one of the runs
        engines.wait_for("the cluster to count one node", lambda: cluster.nodes() == 1, 120, every=1)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "4 run(s) done" in err, err[-3000:]
    runs = saved(tmp_path / "r")
    assert len(runs) == 4 == len(set(runs))
    summary = (tmp_path / "r" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4  # each run saved (and summarised) once
    again = normbench(cluster.env, *args)
    assert again.returncode == 0 and "0 run(s) done" in again.stderr


def test_the_cluster_helper_keeps_ray_private():
    c = engines.RayCluster()  # directories only: no daemon starts before up()
    try:
        assert c.env["HOME"].startswith(str(c.root)) and c.env["RAY_AUTH_MODE"] == "token"
        assert c.env["RAY_TMPDIR"].startswith(str(c.root)) and "RAY_ADDRESS" not in c.env
        assert c.address.startswith("127.0.0.1:") and c.root.name.startswith(engines.PREFIX)
    finally:
        c.stop()
    assert not c.root.exists()
