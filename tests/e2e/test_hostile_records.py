"""Every reader survives every kind of hostile record (issue 23, item 5): each kind is written
beside a plain run, and each reader runs on it in a fresh process. A record a reader cannot
rely on is skipped with its reason; one it can is aggregated robustly. Never a traceback, never
minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import record
from normbench import store

SPEC = {"name": "gn", "dataset": "mnist-10k", "tags": ["x"],
        "model": {"norm": {"type": "group", "groups": 5}}, "train": {"batch_size": 32, "seed": 0}}


def _spec(**train) -> dict:
    return {**SPEC, "train": {**SPEC["train"], **train}}


def _kinds() -> dict[str, list[dict]]:
    """name -> the records of that kind (fields over conftest's plain record)."""
    return {
        "sums that overflow": [dict(run_id=f"gn-00000000000{s}", seed=s, spec=_spec(seed=s),
                                    steady_samples_per_s=1.7e308, first_epoch_s=1.7e308)
                               for s in (1, 2)],
        "+inf and -inf in one column": [
            dict(run_id="gn-000000000003", seed=3, spec=_spec(seed=3), status="diverged",
                 test_loss=float("inf"), train_loss=float("inf")),
            dict(run_id="gn-000000000004", seed=4, spec=_spec(seed=4), status="diverged",
                 test_loss=float("-inf"), train_loss=float("-inf"))],
        "tags: 5 deep in spec": [dict(run_id="gn-000000000005", seed=5,
                                      spec={**_spec(seed=5), "tags": 5})],
        "a non-date started": [dict(run_id="gn-000000000006", seed=6, spec=_spec(seed=6),
                                    started="yesterday", finished="today")],
        "a 400-digit integer": [dict(run_id="gn-000000000007", seed=7, spec=_spec(seed=7),
                                     params=10 ** 400)],
        "batch_size null beside numbers": [dict(run_id="gn-000000000008", seed=8,
                                                spec={**_spec(seed=8), "train": {"batch_size": None,
                                                                                 "seed": 8}})],
        "a 10 MB string": [dict(run_id="gn-000000000009", seed=9, spec=_spec(seed=9),
                                diverged_reason="x" * (10 << 20), status="diverged")],
    }


READERS = {
    "compare": ["compare"], "compare md": ["compare", "-f", "md"], "compare csv": ["compare", "-f", "csv"],
    "compare json runs": ["compare", "-f", "json", "--runs"],
    "compare --by": ["compare", "--by", "train.batch_size"],
    "compare --baseline": ["compare", "--baseline", "model.norm.type=group"],
    "compare --where tags": ["compare", "--where", "tags=x"],
    "compare --fail-under": ["compare", "--fail-under", "test_acc_mean=0.1", "--allow-diverged"],
    "rm --dry-run": ["rm", "--where", "tags=x", "--dry-run"],
    "plot": ["plot"],
    "export tensorboard": ["export", "tensorboard"],
}
PYTHON = {
    "load_results": "import normbench, sys; normbench.load_results(sys.argv[1]); "
                    "normbench.load_results(sys.argv[1], runs=True)",
    "summary rebuild": "import sys; from pathlib import Path; from normbench import tables; "
                       "tables.write_summaries(Path(sys.argv[1]))",
}


def _write(results: Path, fields: dict) -> None:
    """A record written as it would be on disk (JSON, with its infinities), not validated here."""
    base = json.loads(record().model_dump_json())
    base.update(fields)
    run = results / "runs" / fields["run_id"]
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("name: gn\n")
    (run / "history.csv").write_text("epoch\n1\n")
    (run / "metrics.json").write_text(json.dumps(base))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_every_reader_survives_a_hostile_record(tmp_path, kind):
    results = tmp_path / "r"
    store.save(record(spec=_spec()), "name: gn\n", results)  # a plain run beside it
    for fields in _kinds()[kind]:
        _write(results, fields)
    failures = []
    commands = {name: [sys.executable, "-m", "normbench", *args, "--results", str(results)]
                for name, args in READERS.items()}
    commands.update({name: [sys.executable, "-c", code, str(results)] for name, code in PYTHON.items()})
    for name, command in commands.items():
        if name == "plot" and not _has("matplotlib") or name == "load_results" and not _has("pandas"):
            continue
        if name == "export tensorboard" and not _has("tensorboard"):
            continue
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                  cwd=tmp_path, env={**os.environ, "MPLBACKEND": "Agg"})
        except subprocess.TimeoutExpired:
            failures.append(f"{name}: still running after 120 s")
            continue
        seconds = time.perf_counter() - start
        if "Traceback" in done.stderr or done.returncode not in (0, 1):
            failures.append(f"{name}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        elif seconds > 60:
            failures.append(f"{name}: took {seconds:.0f} s")
    assert not failures, "\n".join(failures)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_the_scan_accounts_for_every_hostile_record(tmp_path, kind):
    """In process: each entry is a valid record or skipped with its reason; nothing raises."""
    results = tmp_path / "r"
    store.save(record(spec=_spec()), "name: gn\n", results)
    for fields in _kinds()[kind]:
        _write(results, fields)
    records, skipped = store.scan(results)
    names = {p.name for p in (results / "runs").iterdir() if not p.name.startswith(".")}
    assert set(records) | {name for name, _ in skipped} == names
    assert all(why for _, why in skipped)
