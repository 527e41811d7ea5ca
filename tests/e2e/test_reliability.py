"""Regression tests for what a careful and a hostile reader found: damaged and hostile records,
runs that failed, output a person and a program can trust. Each goes through the real CLI (a
fresh `python -m normbench` process) where a user would meet it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normbench import store, tables
from normbench.errors import NormbenchError

ROOT = Path(__file__).resolve().parents[2]
SPEC = "name: rel\ndataset: mnist-10k\n"


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def one_error_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real smoke run: (spec file, results directory), copied per test."""
    base = tmp_path_factory.mktemp("finished")
    spec = base / "rel.yaml"
    spec.write_text(SPEC)
    done = cli("run", spec, "--smoke", "--quiet", "--results", base / "results")
    assert done.returncode == 0, done.stderr
    return spec, base / "results"


def copy_results(finished, tmp_path: Path) -> tuple[Path, Path, Path]:
    spec, results = finished
    out = tmp_path / "results"
    shutil.copytree(results, out, symlinks=True)
    (run,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    return spec, out, run


# ---------------------------------------------------------------------------------------------
# 1. A damaged run directory is trained again and replaces the damaged entry

DAMAGES = ["truncated", "empty", "deleted", "random bytes", "directory replaced by a file",
           "no spec.yaml", "symlink"]


def damage(run: Path, how: str, elsewhere: Path) -> None:
    metrics = run / "metrics.json"
    if how == "truncated":
        metrics.write_bytes(metrics.read_bytes()[:200])
    elif how == "empty":
        metrics.write_bytes(b"")
    elif how == "deleted":
        metrics.unlink()
    elif how == "random bytes":
        metrics.write_bytes(os.urandom(3000))
    elif how == "directory replaced by a file":
        shutil.rmtree(run)
        run.write_text("oops")
    elif how == "no spec.yaml":
        (run / "spec.yaml").unlink()
    else:  # a symlinked run directory: run and compare both refuse to trust it
        shutil.move(run, elsewhere)
        run.symlink_to(elsewhere, target_is_directory=True)


@pytest.fixture(scope="module")
def seven_finished(tmp_path_factory):
    """A real smoke sweep of one run per kind of damage."""
    base = tmp_path_factory.mktemp("seven")
    spec = base / "dmg.yaml"
    spec.write_text(f"name: dmg\ndataset: mnist-10k\nseeds: {len(DAMAGES)}\n")
    done = cli("run", spec, "--smoke", "--quiet", "--results", base / "results", timeout=600)
    assert done.returncode == 0, done.stderr
    return spec, base / "results"


@pytest.mark.slow
def test_damaged_runs_are_trained_again_and_replace_the_damage(seven_finished, tmp_path):
    spec, original = seven_finished
    results = tmp_path / "results"
    shutil.copytree(original, results, symlinks=True)
    runs = sorted(p for p in (results / "runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == len(DAMAGES)
    for run, how in zip(runs, DAMAGES):
        damage(run, how, tmp_path / f"moved-{run.name}")
    shown = cli("compare", "--results", results, "--runs", "-f", "csv")
    assert shown.returncode == 0 and not any(r.name in shown.stdout for r in runs)  # not finished
    planned = cli("run", spec, "--smoke", "--dry-run", "--results", results)
    assert f"{len(DAMAGES)} to run" in planned.stdout  # run agrees: none is finished
    done = cli("run", spec, "--smoke", "--quiet", "--results", results, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(DAMAGES)} run(s) done (0 diverged), 0 already finished" in done.stderr
    for run in runs:
        assert run.is_dir() and not run.is_symlink() and store.finished(results, run.name)
    assert not list((results / "runs" / ".tmp").iterdir())  # the damaged ones moved aside, removed
    shown = cli("compare", "--results", results, "--runs", "-f", "csv")
    assert all(r.name in shown.stdout for r in runs) and "skipped" not in shown.stderr
    moved = tmp_path / f"moved-{runs[DAMAGES.index('symlink')].name}"
    assert (moved / "metrics.json").is_file()  # the link's target untouched


@pytest.mark.slow
def test_damaged_run_with_two_workers_is_trained_once(finished, tmp_path):
    spec, results, run = copy_results(finished, tmp_path)
    (run / "metrics.json").write_text("{")
    done = cli("run", spec, "--smoke", "--quiet", "-j", "2", "--results", results, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "1 run(s) done" in done.stderr and store.finished(results, run.name) is not None


# ---------------------------------------------------------------------------------------------
# 2. Records are untrusted input


HOSTILE = {
    "dataset without a name": lambda m: m["dataset"].pop("name"),
    "history entry without loss": lambda m: m["history"][0].pop("loss"),
    "string for a number": lambda m: m.update(test_accuracy="0.9"),
    "boolean accuracy": lambda m: m.update(test_accuracy=True),
    "accuracy -500%": lambda m: m.update(test_accuracy=-5.0),
    "name with ..": lambda m: m.update(name="../../x"),
    "absolute name": lambda m: m.update(name="/tmp/normbench-pwned"),
    "history not a list": lambda m: m.update(history={"a": 1}),
    "unknown status": lambda m: m.update(status="great"),
    "dataset a string": lambda m: m.update(dataset="mnist"),
}


@pytest.mark.slow
@pytest.mark.parametrize("what", list(HOSTILE))
def test_each_hostile_record_fails_validation(finished, what):
    _, results = finished
    (run,) = [p for p in (results / "runs").iterdir() if not p.name.startswith(".")]
    doc = json.loads((run / "metrics.json").read_text())
    HOSTILE[what](doc)
    with pytest.raises(Exception):
        store.RunRecord.model_validate_json(json.dumps(doc))


@pytest.mark.slow
def test_hostile_records_are_skipped_by_compare_plot_and_run(finished, tmp_path):
    spec, results, run = copy_results(finished, tmp_path)
    good = json.loads((run / "metrics.json").read_text())
    hostile = []
    for i, change in enumerate(HOSTILE.values()):
        entry = results / "runs" / f"rel-{i:012x}"
        shutil.copytree(run, entry)
        doc = json.loads((entry / "metrics.json").read_text())
        doc["run_id"] = entry.name
        change(doc)
        (entry / "metrics.json").write_text(json.dumps(doc))
        hostile.append(entry.name)
    for fmt in ("table", "json", "csv", "md"):
        shown = cli("compare", "--results", results, "-f", fmt)
        assert shown.returncode == 0
        for name in hostile:
            assert f"skipped {name}: invalid metrics.json" in shown.stderr
    plots = tmp_path / "plots"
    drawn = cli("plot", "--results", results, "--out", plots)
    import importlib.util

    assert drawn.returncode == (0 if importlib.util.find_spec("matplotlib") else 2), drawn.stderr
    assert all(p.parent == plots for p in plots.rglob("*"))
    assert not Path("/tmp/normbench-pwned-learning.png").exists()
    assert not (tmp_path / "x-learning.png").exists() and not (results / "x-learning.png").exists()
    # every later run rebuilds the summaries from all records: the hostile ones are skipped there
    again = cli("run", spec, "--smoke", "--quiet", "--force", "--results", results)
    assert again.returncode == 0, again.stderr
    summary = (results / "summary.md").read_text()
    assert all(f"`{name}`: invalid metrics.json" in summary for name in hostile)
    assert good["run_id"] in (results / "summary.csv").read_text()




# ---------------------------------------------------------------------------------------------
# 3. Runs on fallback data say so, and can be redone


@pytest.mark.slow
def test_a_fallback_run_is_reported_and_redone_with_retry_fallback(finished, tmp_path):
    _, results, run = copy_results(finished, tmp_path)
    spec = tmp_path / "rel.yaml"
    spec.write_text(SPEC)
    doc = json.loads((run / "metrics.json").read_text())
    doc["dataset"]["requested"] = "mnist"  # as if `dataset: mnist` had run offline
    (run / "metrics.json").write_text(json.dumps(doc))
    shown = cli("compare", "--results", results)
    assert "trained on mnist-10k instead of mnist" in shown.stderr and "--retry-fallback" in shown.stderr
    plain = cli("run", spec, "--smoke", "--dry-run", "--results", results)
    assert "0 to run" in plain.stdout and "fallback data" in plain.stdout
    retry = cli("run", spec, "--smoke", "--dry-run", "--retry-fallback", "--results", results)
    assert "1 to run" in retry.stdout
    tables.write_summaries(results)
    assert "--retry-fallback" in (results / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------
# 4./5. Diverged runs: recorded with a reason, counted, never averaged




def test_compare_json_has_no_bare_nan(tmp_path, make_record):
    store.save(make_record(status="diverged", test_loss=float("nan"), train_loss=float("inf"),
                           diverged_reason="x"), "a\n", tmp_path)
    for args in (["-f", "json"], ["-f", "json", "--runs"]):
        shown = cli("compare", "--results", tmp_path, *args)
        assert shown.returncode == 0 and "NaN" not in shown.stdout and "Infinity" not in shown.stdout
        json.loads(shown.stdout)




@pytest.mark.slow
def test_a_run_that_blows_up_is_recorded_as_diverged_with_its_reason(tmp_path):
    spec = tmp_path / "boom.yaml"
    spec.write_text("name: boom\ndataset: mnist-10k\ntrain: {learning_rate: 1.0e6}\n")
    done = cli("run", spec, "--smoke", "--quiet", "--results", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    (record,), _ = store.load_records(tmp_path / "r")
    assert record.status == "diverged" and record.diverged_reason
    assert record.epochs == len(record.history)
    shown = cli("compare", "--results", tmp_path / "r", "-f", "csv")
    assert ",1," in shown.stdout.splitlines()[1] or "diverged" in shown.stdout.splitlines()[0]


@pytest.mark.parametrize("field,value", [("model.norm.epsilon", "1e-50"),
                                         ("train.learning_rate", "1e-46"),
                                         ("model.norm.epsilon", "1e39")])
def test_values_that_underflow_float32_are_rejected(tmp_path, field, value):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    line = one_error_line(cli("validate", spec, "-s", f"{field}={value}"))
    assert field in line and "float32" in line


# ---------------------------------------------------------------------------------------------
# 7. Output a person and a program can trust


def test_user_text_is_printed_literally(tmp_path):
    odd = tmp_path / "a[" / "x]" / "b :x: [bold]"
    odd.mkdir(parents=True)
    spec = odd / "lit.yaml"
    spec.write_text("name: lit\ndataset: mnist-10k\n")
    done = cli("validate", spec)
    assert done.returncode == 0 and str(spec) in done.stdout and "❌" not in done.stdout
    bad = cli("validate", odd / "missing [/x].yaml")
    assert str(odd / "missing [/x].yaml") in one_error_line(bad)






@pytest.mark.slow
def test_unwritable_summary_and_plot_paths_are_one_line_errors(tmp_path, make_record):
    store.save(make_record(), "a\n", tmp_path)
    (tmp_path / "summary.csv").mkdir()
    with pytest.raises(NormbenchError, match="cannot write the summaries"):
        tables.write_summaries(tmp_path)
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("x")
    assert "--out" in one_error_line(cli("plot", "--results", tmp_path, "--out", tmp_path / "file"))


@pytest.mark.slow
def test_bench_json_prints_the_table_first_and_makes_directories(tmp_path):
    target = tmp_path / "deep" / "er" / "cli.json"
    done = cli("bench", "cli", "--records", "5", "--repeats", "1", "--scale", "none", "--json", target, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "bench cli" in done.stdout and json.loads(target.read_text())["rows"]
    (tmp_path / "blocker").write_text("x")
    bad = cli("bench", "cli", "--records", "5", "--repeats", "1", "--scale", "none", "--json",
              tmp_path / "blocker" / "cli.json", timeout=600)
    assert bad.returncode == 2 and "bench cli" in bad.stdout  # the table came first
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --json")


def test_unusable_ray_tmpdir_is_an_error_line(tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    line = one_error_line(cli("run", spec, "--smoke", "--executor", "ray", "--results",
                              tmp_path / "r", env={"RAY_TMPDIR": str(tmp_path / "no" / "such")}))
    assert "RAY_TMPDIR" in line


def test_an_ascii_terminal_gets_output_not_a_traceback(tmp_path, make_record):
    store.save(make_record(), "a\n", tmp_path)
    done = cli("compare", "--results", tmp_path, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "90.00" in done.stdout
    done = cli("compare", "--results", tmp_path, "--by", "norm", env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0


# ---------------------------------------------------------------------------------------------
# 8. TensorFlow's own log lines stay out of a user's terminal


@pytest.mark.slow
def test_a_run_shows_normbench_lines_not_tensorflows(tmp_path):
    spec = tmp_path / "q.yaml"
    spec.write_text("name: q\ndataset: mnist-10k\n")
    done = cli("run", spec, "--smoke", "--results", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines()
             if re.match(r"^[IWE]0000 |^WARNING: All log messages", line) or "oneDNN" in line
             or "cuInit" in line or "cuda" in line.lower()]
    assert noise == [], noise
    loud = cli("-v", "run", spec, "--smoke", "--force", "--results", tmp_path / "r")
    assert loud.returncode == 0 and "oneDNN" in loud.stderr


# ---------------------------------------------------------------------------------------------
# 9. Sweeps, filters and views say what they mean


def test_sweep_values_that_are_one_run_are_an_error(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    line = one_error_line(cli("validate", spec, "--sweep", "model.norm.type=gn,group,GN"))
    assert "are the same run" in line


def test_where_understands_null_aliases_and_shown_columns(tmp_path, make_record):
    store.save(make_record(run_id="gn-000000000001",
                           spec={"model": {"norm": {"type": "group", "groups": 5}}}), "a\n", tmp_path)
    store.save(make_record(run_id="bn-000000000002", name="bn", norm_type="batch", norm_groups=None,
                           config_hash="b" * 64,
                           spec={"model": {"norm": {"type": "batch", "groups": None}}}), "a\n", tmp_path)
    records, _ = store.load_records(tmp_path)
    assert [r.name for r in tables.where(records, ["model.norm.groups=null"])] == ["bn"]
    assert [r.name for r in tables.where(records, ["model.norm.type=gn"])] == ["gn"]
    assert [r.name for r in tables.where(records, ["norm=group"])] == ["gn"]
    assert [r.name for r in tables.where(records, ["norm=BN"])] == ["bn"]
    assert [r.name for r in tables.where(records, ["groups=5"])] == ["gn"]
    by = cli("compare", "--results", tmp_path, "--by", "model.norm.groups")
    assert by.returncode == 0 and "null" in by.stdout and "5" in by.stdout








def test_validate_show_on_a_sweep_prints_the_base_and_the_axes():
    done = cli("validate", "--show", ROOT / "configs" / "batch_size_sweep_convnet.yaml")
    assert done.returncode == 0
    assert done.stdout.count("name: batch_size_sweep_convnet") == 1
    assert "sweep:" in done.stdout and "train.batch_size" in done.stdout


def test_help_reads_as_sentences():
    done = cli("--help")
    assert done.returncode == 0 and "<bool>" not in done.stdout
    run_help = cli("run", "--help").stdout
    assert "normbench[ray]" in run_help and "<bool>" not in run_help
    # the command's description is one paragraph, wrapped to the terminal, not by the docstring
    lines = [line.strip() for line in run_help.split("\n\n")[1].splitlines()]
    assert "finished runs are kept and skipped" in " ".join(lines)
    assert all(len(line) > 40 for line in lines[:-1]), lines  # no hard breaks mid-sentence




HOSTILE_TEXT = "mnist\x1b[2J\x1b]0;pwned\x07\u202eevil\u2066"  # clear screen, set title, bidi override


@pytest.mark.slow
def test_control_and_bidi_characters_in_records_are_escaped_wherever_they_are_shown(tmp_path, make_record):
    """ESC sequences and bidi overrides in record text reach neither the terminal (compare in
    every format, its notes) nor a document (summary.md), raw: they are shown as escapes."""
    record = make_record(norm_type="group\x1b[31m", impl_used="native\u202e",
                         dataset={"requested": "mnist", "name": HOSTILE_TEXT, "n_train": 8000,
                                  "n_test": 2000, "sha256": "x", "source": "embedded",
                                  "warning": None})  # name != requested: the fallback note too
    store.save(record, "a\n", tmp_path)
    tables.write_summaries(tmp_path)
    outputs = [(tmp_path / "summary.md").read_text()]
    for fmt in ("table", "md", "csv", "json"):
        done = cli("compare", "--results", tmp_path, "-f", fmt, "--runs", timeout=120)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    done = cli("compare", "--results", tmp_path, timeout=120)  # grouped, with the fallback note
    outputs += [done.stdout, done.stderr]
    for text in outputs:
        assert not any(c in text for c in "\x1b\x07\u202e\u2066"), repr(text[:300])
    assert any("\\x1b" in text for text in outputs) and any("\\u202e" in text for text in outputs)




def _one_run(tmp_path, make_record) -> Path:
    store.save(make_record(), "a\n", tmp_path)
    return tmp_path / "runs" / make_record().run_id


def test_a_fifo_or_device_as_a_record_is_skipped_not_waited_on(tmp_path, make_record):
    """A FIFO as metrics.json hung compare for ever (and run's summary rebuild, under the lock);
    a link to /dev/zero ate memory. Both are skipped with their reason, in seconds."""
    run = _one_run(tmp_path, make_record)
    (run / "metrics.json").unlink()
    os.mkfifo(run / "metrics.json")
    other = tmp_path / "runs" / "gn-0123456789ac"
    shutil.copytree(run, other, symlinks=True, ignore=lambda d, names: ["metrics.json"])
    (other / "metrics.json").symlink_to("/dev/zero")
    done = cli("compare", "--results", tmp_path, timeout=60)
    assert done.returncode == 0
    assert "not a regular file" in done.stderr and "symbolic link (not followed)" in done.stderr
    rebuild = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                              "from normbench import tables; tables.write_summaries(Path(sys.argv[1]))",
                              str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert rebuild.returncode == 0, rebuild.stderr




@pytest.mark.slow
def test_export_uploads_only_the_runs_own_files(tmp_path, make_record):
    """history.csv linked to a system file was copied into MLflow's artifacts (off the machine,
    for a remote server): a link is not uploaded, the run's plain files are."""
    mlflow = pytest.importorskip("mlflow")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for a remote server\n")
    run = _one_run(tmp_path / "r", make_record)
    (run / "history.csv").unlink()
    (run / "history.csv").symlink_to(secret)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    done = cli("export", "mlflow", "--results", tmp_path / "r", cwd=tmp_path,
               env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert done.returncode == 0, done.stderr
    client = mlflow.tracking.MlflowClient(uri)
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {a.path for a in client.list_artifacts(found.info.run_id)} == {"metrics.json", "spec.yaml"}


def test_an_npz_that_is_a_fifo_or_a_device_is_one_error_line(tmp_path):
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        spec = tmp_path / "s.yaml"
        spec.write_text(f"name: f\ndataset: 'npz:{target}'\n")
        done = cli("validate", spec, timeout=60)
        assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr


@pytest.mark.slow
def test_closed_and_broken_stdout(tmp_path):
    """`compare >&-` died at import (isatty on None); a reader that leaves (`| head -c 10`)
    ended in exit 1 without a word. Now: the command runs, and a closed pipe exits 141 (as a
    shell reports SIGPIPE), with no traceback."""
    import shlex

    from normbench.bench.cli import fake_records

    fake_records(tmp_path, 600)  # a listing larger than a pipe's buffer
    base = f"{shlex.quote(sys.executable)} -m normbench compare --runs --results {tmp_path}"
    closed = subprocess.run(["bash", "-c", f"exec 1>&-; {base}"], capture_output=True, text=True,
                            timeout=120)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr[-500:]
    for fmt in ("table", "csv"):
        proc = subprocess.Popen(shlex.split(base) + ["-f", fmt], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader leaves before anything is read
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141 and "Traceback" not in err, (fmt, err[-500:])
        proc.stderr.close()


@pytest.mark.slow
def test_quiet_hides_keras_downloads_and_tf_retracing_warnings(tmp_path):
    """-q printed TF's 'triggered tf.function retracing' warnings (several runs in one
    process) and Keras's 'Downloading data' before."""
    spec = tmp_path / "q.yaml"
    spec.write_text("name: q\ndataset: mnist\nseeds: 6\n")  # offline here: mnist falls back
    done = subprocess.run([sys.executable, "-m", "normbench", "run", str(spec), "--smoke", "-q",
                           "--results", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NORMBENCH_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr[-1000:]
    assert "retracing" not in done.stderr and "Downloading data" not in done.stderr, done.stderr
