"""Bad input never crashes normbench: a corpus of malformed specs and command lines, each run
through the real console entry point, must give one line on stderr naming the field or file,
exit code 2, no traceback, and create no file. Property tests generate the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD = "name: ok\ndataset: mnist-10k\n"

# (id, spec file content or a special kind, extra argv, a fragment the message must contain)
SPECS = [
    ("empty file", b"", [], "empty spec"),
    ("only a comment", b"# nothing here\n", [], "empty spec"),
    ("a list", b"- name: a\n- name: b\n", [], "a spec must be a mapping"),
    ("a scalar", b"just words\n", [], "a spec must be a mapping"),
    ("syntax error", b"name: [unclosed\n", [], "invalid YAML (line"),
    ("tab indentation", b"name: a\nmodel:\n\tnorm: group\n", [], "invalid YAML"),
    ("duplicate key", b"name: a\nname: b\n", [], "duplicate key 'name'"),
    ("unknown top-level key", b"name: a\nepoch: 3\n", [], "epoch: unknown key"),
    ("unknown model key", b"name: a\nmodel: {layers: 3}\n", [], "model.layers: unknown key"),
    ("unknown norm key", b"name: a\nmodel: {norm: {group: 2}}\n", [], "model.norm.group: unknown key"),
    ("unknown train key", b"name: a\ntrain: {epoch: 2}\n", [], "did you mean 'epochs'?"),
    ("string for int", b"name: a\ntrain: {epochs: three}\n", [], "train.epochs"),
    ("float for int", b"name: a\ntrain: {batch_size: 3.5}\n", [], "train.batch_size"),
    ("bool for int", b"name: a\ntrain: {epochs: true}\n", [], "train.epochs"),
    ("scalar for section", b"name: a\nmodel: {norm: 5}\n", [], "model.norm"),
    ("zero epochs", b"name: a\ntrain: {epochs: 0}\n", [], "train.epochs"),
    ("negative learning rate", b"name: a\ntrain: {learning_rate: -0.1}\n", [], "train.learning_rate"),
    ("NaN learning rate", b"name: a\ntrain: {learning_rate: .nan}\n", [], "train.learning_rate"),
    ("infinite epsilon", b"name: a\nmodel: {norm: {epsilon: .inf}}\n", [], "model.norm.epsilon"),
    ("huge integer", b"name: a\ntrain: {seed: 99999999999999999999999}\n", [], "train.seed"),
    ("unknown norm", b"name: a\nmodel: {norm: {type: groupp}}\n", [], "did you mean 'group'?"),
    ("unknown dataset", b"name: a\ndataset: cifar\n", [], "unknown dataset 'cifar'"),
    ("unknown initializer", b"name: a\nmodel: {norm: {gamma_initializer: magic}}\n", [],
     "unknown initializer 'magic'"),
    ("unknown optimizer", b"name: a\ntrain: {optimizer: adamw2}\n", [], "unknown optimizer"),
    ("unknown impl", b"name: a\nmodel: {norm: {impl: cuda}}\n", [], "unknown impl 'cuda'"),
    ("groups not dividing", b"name: a\nmodel: {norm: {groups: 3}}\n", [], "3 does not divide"),
    ("axis 0", b"name: a\nmodel: {norm: {axis: 0}}\n", [], "model.norm.axis"),
    ("name with a slash", b"name: a/b\n", [], "name: use 1-64 letters"),
    ("name with ..", b"name: ..\n", [], "name: use 1-64 letters"),
    ("name too long", b"name: " + b"x" * 65 + b"\n", [], "name: use 1-64 letters"),
    ("python object tag", b"name: !!python/object/apply:os.system ['touch PWNED']\n", [],
     "invalid YAML"),
    ("python name tag", b"name: a\ntrain: !!python/name:os.system\n", [], "invalid YAML"),
    ("YAML alias bomb", b"a: &a [1, 1]\nb: [*a, *a]\nname: x\n", [], "aliases are not allowed"),
    ("nested too deeply", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", [], "levels deep"),
    ("binary garbage", bytes(range(256)) * 4, [], "binary file"),
    ("not UTF-8", "name: caf\u00e9\n".encode("latin-1"), [], "not UTF-8"),
    ("huge file", b"# " + b"x" * (2 << 20) + b"\n", [], "too large for a spec"),
    ("a directory", "DIR", [], "is a directory"),
    ("a named pipe", "FIFO", [], "not a regular file"),
    ("missing file", "MISSING", [], "no such file"),
    ("sweep not a mapping", b"name: a\nsweep: [1, 2]\n", [], "sweep[0]: expected a mapping"),
    ("sweep with an empty list", b"name: a\nsweep: {train.seed: []}\n", [], "non-empty list"),
    ("seeds negative", b"name: a\nseeds: [-1]\n", [], "seeds: a list must hold"),
    ("seeds a string", b"name: a\nseeds: many\n", [], "seeds: expected a count"),
    ("jit_compile maybe", b"name: a\ntrain: {jit_compile: maybe}\n", [], "train.jit_compile"),
    ("steps_per_execution 0", b"name: a\ntrain: {steps_per_execution: 0}\n", [],
     "train.steps_per_execution"),
    ("unknown arch", b"name: a\nmodel: {arch: resnet}\n", [], "unknown arch 'resnet'"),
    ("conv_filters 0", b"name: a\nmodel: {conv_filters: 0}\n", [], "model.conv_filters"),
    ("dense_units a list", b"name: a\nmodel: {dense_units: [1]}\n", [], "model.dense_units"),
    ("dropout 1", b"name: a\nmodel: {dropout: 1.0}\n", [], "model.dropout"),
    ("widths empty", b"name: a\nmodel: {arch: convnet, widths: []}\n", [], "model.widths"),
    ("center a string", b"name: a\nmodel: {norm: {center: maybe}}\n", [], "model.norm.center"),
    ("scale a number", b"name: a\nmodel: {norm: {scale: 2}}\n", [], "model.norm.scale"),
    ("unknown beta_initializer", b"name: a\nmodel: {norm: {beta_initializer: x}}\n", [],
     "model.norm.beta_initializer"),
    ("momentum 1", b"name: a\nmodel: {norm: {type: batch, momentum: 1.0}}\n", [],
     "model.norm.momentum"),
    ("epsilon underflows float32", b"name: a\nmodel: {norm: {epsilon: 1.0e-50}}\n", [],
     "not representable in float32"),
    ("unknown lr_scaling", b"name: a\ntrain: {lr_scaling: cubic}\n", [], "train.lr_scaling"),
    ("base_batch_size 0", b"name: a\ntrain: {base_batch_size: 0}\n", [], "train.base_batch_size"),
    ("virtual_batch_size not dividing", b"name: a\nmodel: {norm: {type: batch, virtual_batch_size: 5}}\n",
     [], "model.norm.virtual_batch_size: 5 does not divide train.batch_size=32"),
    ("virtual_batch_size for GN", b"name: a\nmodel: {norm: {virtual_batch_size: 4}}\n", [],
     "virtual_batch_size applies to norms 'batch' and 'batch_renorm' only"),
    ("unknown eval_stats", b"name: a\nmodel: {norm: {type: batch, eval_stats: precice}}\n", [],
     "did you mean 'precise'?"),
    ("precise_samples 0", b"name: a\nmodel: {norm: {type: batch, precise_samples: 0}}\n", [],
     "model.norm.precise_samples"),
    ("SGD momentum with adam", b"name: a\ntrain: {momentum: 0.9}\n", [], "SGD's options"),
    ("nesterov without momentum", b"name: a\ntrain: {optimizer: sgd, nesterov: true}\n", [],
     "nesterov needs momentum"),
    ("negative weight_decay", b"name: a\ntrain: {weight_decay: -1.0e-4}\n", [], "train.weight_decay"),
    ("decay_norm_params a string", b"name: a\ntrain: {decay_norm_params: sometimes}\n", [],
     "train.decay_norm_params"),
    ("unknown schedule", b"name: a\ntrain: {schedule: cosin}\n", [], "did you mean 'cosine'?"),
    ("milestones not increasing", b"name: a\ntrain: {milestones: [0.6, 0.3]}\n", [],
     "milestones must increase"),
    ("lr_decay 0", b"name: a\ntrain: {lr_decay: 0}\n", [], "train.lr_decay"),
    ("warmup_epochs negative", b"name: a\ntrain: {warmup_epochs: -1}\n", [], "train.warmup_epochs"),
    ("steps 0", b"name: a\ntrain: {steps: 0}\n", [], "train.steps"),
    ("eval_every 0", b"name: a\ntrain: {eval_every: 0}\n", [], "train.eval_every"),
    ("validation_split 0.9", b"name: a\ntrain: {validation_split: 0.9}\n", [], "train.validation_split"),
    ("save_model a string", b"name: a\ntrain: {save_model: maybe}\n", [], "train.save_model"),
    ("tags with a path", b"name: a\ntags: [../x]\n", [], "tags.0"),
    ("tags not a list", b"name: a\ntags: {a: 1}\n", [], "tags"),
    ("slurm partition with a space", b"name: a\nslurm: {partition: 'a b'}\n", [], "slurm.partition"),
    ("slurm time_min 0", b"name: a\nslurm: {time_min: 0}\n", [], "slurm.time_min"),
    ("slurm cpus_per_task 0", b"name: a\nslurm: {cpus_per_task: 0}\n", [], "slurm.cpus_per_task"),
    ("slurm mem_gb negative", b"name: a\nslurm: {mem_gb: -1}\n", [], "slurm.mem_gb"),
    ("validation_fixed without a split", b"name: a\ntrain: {validation_fixed: true}\n", [],
     "validation_fixed needs validation_split"),
    ("train_subset too small", b"name: a\ntrain: {train_subset: 3}\n", [], "train.train_subset"),
    ("group_size and groups", b"name: a\nmodel: {norm: {groups: 2, group_size: 5}}\n", [],
     "not both"),
    ("tune grid decreasing", b"name: a\ntune: {learning_rate: [0.2, 0.1]}\n", [],
     "tune.learning_rate"),
    ("tune by empty", b"name: a\ntune: {by: []}\n", [], "tune.by"),
    ("tune seed negative", b"name: a\ntune: {seed: -1}\n", [], "tune.seed"),
    ("tune extend 99", b"name: a\ntune: {extend: 99}\n", [], "tune.extend"),
    ("tune sensitivity not a list", b"name: a\ntune: {sensitivity: 3}\n", [], "tune.sensitivity"),
    ("tune records hash not hex", b"name: a\ntune: {records_sha256: zz}\n", [],
     "tune.records_sha256"),
    ("equivalence margin zero", b"name: a\nstudy: {equivalence_margin: 0}\n", [],
     "study.equivalence_margin"),
    ("equivalence margin nan", b"name: a\nstudy: {equivalence_margin: .nan}\n", [],
     "study.equivalence_margin"),
    ("slurm array_parallelism 0", b"name: a\nslurm: {array_parallelism: 0}\n", [], "slurm.array_parallelism"),
    ("slurm unavailable_min 0", b"name: a\nslurm: {unavailable_min: 0}\n", [], "slurm.unavailable_min"),
    ("metric window above 1", b"name: a\nstudy: {metric_last: 1.5}\n", [], "study.metric_last"),
    ("model factory not a path", b"name: a\nmodel: {arch: custom, factory: 'rm -rf'}\n", [], "model.factory"),
]
if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file
    SPECS.append(("unreadable file", "UNREADABLE", [], "permission denied"))

# (id, argv with {spec} for a valid spec file, fragment)
COMMANDS = [
    ("unknown command", ["frobnicate"], "No such command 'frobnicate'"),
    ("unknown option", ["run", "{spec}", "--frob"], "No such option: --frob"),
    ("jobs 0", ["run", "{spec}", "-j", "0"], "'--jobs'"),
    ("bad executor", ["run", "{spec}", "--executor", "kubernetes"], "'--executor'"),
    ("missing spec argument", ["run"], "Missing argument"),
    ("override without =", ["run", "{spec}", "-s", "train.epochs"], "expected PATH=VALUE"),
    ("override of an unknown field", ["run", "{spec}", "-s", "train.epoch=3"], "did you mean 'epochs'?"),
    ("override through a scalar", ["run", "{spec}", "-s", "name.x=1"], "name is not a section"),
    ("override with bad YAML", ["run", "{spec}", "-s", "train.epochs=[1"], "invalid YAML"),
    ("override name with ..", ["run", "{spec}", "-s", "name=../../x"], "name: use 1-64 letters"),
    ("sweep option without values", ["run", "{spec}", "--sweep", "train.seed"], "expected PATH=V1,V2"),
    ("sweep of a bad value", ["run", "{spec}", "--sweep", "train.epochs=1,0"], "train.epochs"),
    ("compare bad format", ["compare", "--format", "xml"], "'--format'"),
    ("compare missing results", ["compare", "--results", "nowhere"], "results directory nowhere"),
    ("compare bad filter", ["compare", "--results", ".", "--where", "nofilter"], "--where"),
    ("bench bad epochs", ["bench", "train", "--epochs", "1"], "'--epochs'"),
    ("results is a file", ["run", "{spec}", "--results", "{spec}"], "not writable"),
]


def _cli(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "normbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _assert_one_line_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0][:500]
    assert "Traceback" not in done.stdout + done.stderr
    assert len(lines[0]) < 2000


def _make_spec(tmp_path: Path, content) -> Path:
    path = tmp_path / "spec.yaml"
    if content == "DIR":
        path.mkdir()
    elif content == "FIFO":
        os.mkfifo(path)
    elif content == "UNREADABLE":
        path.write_text(GOOD)
        path.chmod(0)
    elif content != "MISSING":
        path.write_bytes(content)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("content,extra,fragment", [c[1:] for c in SPECS], ids=[c[0] for c in SPECS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, command, content, extra,
                                                             fragment):
    spec = _make_spec(tmp_path, content)
    before = _tree(tmp_path)
    done = _cli([command, str(spec), *extra], cwd=tmp_path)
    _assert_one_line_error(done, fragment)
    assert str(spec) in done.stderr or spec.name in done.stderr
    assert _tree(tmp_path) == before  # no results/, no stray files
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv,fragment", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_malformed_command_line_is_one_line_exit_2_and_writes_nothing(tmp_path, argv, fragment):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    before = _tree(tmp_path)
    done = _cli([a.replace("{spec}", str(spec)) for a in argv], cwd=tmp_path)
    _assert_one_line_error(done, fragment)
    assert _tree(tmp_path) == before


def _leaf_fields(model, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += _leaf_fields(kind, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_spec_field_is_attacked_by_a_malformed_case():
    """A field added to the schema without a malformed-input case here fails this test."""
    from normbench.spec import Spec

    text = " ".join(str(c[1]) + " " + c[3] for c in SPECS) + " " + " ".join(
        " ".join(c[1]) + " " + c[2] for c in COMMANDS)
    untested = [f for f in _leaf_fields(Spec) if f.rsplit(".", 1)[-1] not in text]
    assert untested == [], f"no malformed case for {untested}"


@pytest.mark.slow
def test_accepted_variants_of_good_input(tmp_path):
    # Classes of input normbench accepts on purpose: a UTF-8 byte-order mark, CRLF line ends,
    # upper-case names of choices, and unicode in comments.
    for i, text in enumerate(["\ufeffname: a\n", "name: a\r\ndataset: MNIST-10K\r\n",
                              "# caf\u00e9\nname: a\nmodel: {norm: {type: GROUP}}\n"]):
        spec = tmp_path / f"s{i}.yaml"
        spec.write_bytes(text.encode("utf-8"))
        done = _cli(["validate", str(spec)], cwd=tmp_path)
        assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# Property tests: random documents and overrides are accepted or refused in one clean line

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from normbench import cli, norms, spec as specs  # noqa: E402

FIELDS = {
    "model": ["arch", "conv_filters", "dense_units", "dropout", "widths", "norm"],
    "model.norm": ["type", "groups", "axis", "epsilon", "center", "scale", "beta_initializer",
                   "gamma_initializer", "impl", "momentum"],
    "train": ["epochs", "batch_size", "optimizer", "learning_rate", "lr_scaling",
              "base_batch_size", "seed", "jit_compile", "steps_per_execution"],
}
PATHS = ["name", "dataset", "seeds"] + [f"{section}.{key}" for section, keys in FIELDS.items()
                                        for key in keys]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from([*norms.NORMS, *specs.DATASETS, *specs.INITIALIZERS, "auto",
                                     "adam", "sgd", "tutorial", "convnet", "-1", "1e-3"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def documents(draw):
    doc = {}
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=8, unique=True)):
        node = doc
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.text(max_size=6))] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        doc["sweep"] = draw(st.dictionaries(st.sampled_from(PATHS), st.lists(scalars, max_size=3),
                                            max_size=2))
    return doc


overrides = st.builds(lambda path, value: f"{path}={value}",
                      st.one_of(st.sampled_from(PATHS), st.text(max_size=10)),
                      st.one_of(st.text(max_size=12), scalars.map(str)))


def _main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    old = sys.argv
    sys.argv = ["normbench", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def _clean(code: int, stderr: str) -> None:
    assert code in (0, 2), (code, stderr[-2000:])
    assert "Traceback" not in stderr
    if code == 2:
        lines = stderr.strip().splitlines()
        assert lines and lines[0].startswith("error: "), stderr[-2000:]


PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.mark.slow
@PROPERTY
@given(doc=documents(), sets=st.lists(overrides, max_size=3))
def test_random_spec_documents_and_overrides(tmp_path, capsys, doc, sets):
    import yaml

    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    argv = ["validate", str(path)]
    for s in sets:
        argv += ["-s", s]
    _clean(*_main(argv, capsys))


@pytest.mark.slow
@PROPERTY
@given(text=st.text(max_size=300))
def test_random_text_as_a_spec_file(tmp_path, capsys, text):
    path = tmp_path / "random.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _clean(*_main(["validate", str(path)], capsys))


@pytest.mark.slow
@PROPERTY
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_a_spec_file(tmp_path, capsys, raw):
    path = tmp_path / "random.yaml"
    path.write_bytes(raw)
    _clean(*_main(["validate", str(path)], capsys))


@pytest.mark.slow
@PROPERTY
@given(sweep=st.lists(st.text(max_size=25), max_size=2), where=st.lists(st.text(max_size=20), max_size=2))
def test_random_sweep_and_filter_options(tmp_path, capsys, sweep, where):
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    argv = ["run", str(path), "--dry-run", "--results", str(tmp_path / "r")]
    for s in sweep:
        argv += ["--sweep", s]
    _clean(*_main(argv, capsys))
    argv = ["compare", "--results", str(tmp_path)]
    for w in where:
        argv += ["--where", w]
    _clean(*_main(argv, capsys))


# ---------------------------------------------------------------------------------------------
# kill -9 on a real process: mid-epoch and in the middle of writing a run's files

import signal  # noqa: E402
import time  # noqa: E402


def _start(args: list[str], cwd: Path, code: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "normbench"]
    return subprocess.Popen(head + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _spec_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndataset: mnist-10k\n")
    return path


def _snapshot(results_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results_dir)): p.read_bytes()
            for p in sorted((results_dir / "runs").rglob("*")) if p.is_file()
            and ".claims" not in p.parts}


@pytest.fixture
def one_finished_run(tmp_path):
    results_dir = tmp_path / "results"
    done = _cli(["run", str(_spec_file(tmp_path, "kept")), "--smoke", "--quiet", "--results",
                 str(results_dir)], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return results_dir


@pytest.mark.slow
def test_kill_9_mid_epoch_keeps_finished_runs_and_the_next_invocation_recovers(tmp_path, one_finished_run):
    results_dir = one_finished_run
    before = _snapshot(results_dir)
    summary = (results_dir / "summary.csv").read_bytes()
    spec = _spec_file(tmp_path, "killed")
    args = ["run", str(spec), "-s", "train.epochs=3", "-s", "train.batch_size=8", "--quiet",
            "--results", str(results_dir)]
    proc = _start(args, tmp_path)
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((results_dir / "runs" / ".claims").glob("killed-*.status"))
        if found and found[0].exists() and "epoch 2/3" in found[0].read_text():
            status = found[0]
            break
        time.sleep(0.05)
    assert status is not None, "the run never reached its second epoch"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(results_dir) == before  # the finished run, byte for byte; nothing new
    assert (results_dir / "summary.csv").read_bytes() == summary
    listed = _cli(["compare", "--results", str(results_dir), "--format", "csv"], cwd=tmp_path)
    assert listed.returncode == 0 and "kept" in listed.stdout and "killed" not in listed.stdout
    assert listed.stderr.strip() == ""  # nothing half-written to skip
    again = _cli(args, cwd=tmp_path, timeout=600)  # the dead process's claim was released
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 run(s) done (0 diverged), 0 already finished" in again.stderr
    records = _cli(["compare", "--results", str(results_dir), "--runs", "--format", "csv"],
                   cwd=tmp_path).stdout
    assert records.count("\nkilled-") == 1 and records.count("\nkept-") == 1


KILL_IN_WRITE = """
import os, signal, sys
from normbench import cli, store
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("metrics.json"):  # the tmp file is written; the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
store.os.replace = replace
sys.argv = ["normbench", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.slow
def test_kill_9_while_writing_a_run_leaves_no_half_run_and_is_recovered(tmp_path, one_finished_run):
    results_dir = one_finished_run
    before = _snapshot(results_dir)
    args = ["run", str(_spec_file(tmp_path, "torn")), "--smoke", "--quiet", "--results",
            str(results_dir)]
    proc = _start(args, tmp_path, code=KILL_IN_WRITE)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    runs = results_dir / "runs"
    staging = [p for p in (runs / ".tmp").iterdir() if p.name.startswith("torn-")]
    assert staging and (staging[0] / "spec.yaml").is_file()  # died mid-write, for real
    assert not any(p.name.startswith("torn-") for p in runs.iterdir())
    after = {k: v for k, v in _snapshot(results_dir).items() if "/.tmp/" not in k}
    assert after == before
    again = _cli(args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not any(p.name.startswith("torn-") for p in (runs / ".tmp").iterdir())  # cleaned
    assert any(p.name.startswith("torn-") and (p / "metrics.json").is_file() for p in runs.iterdir())


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no one may write to: mode 555, and for root (who ignores modes) immutable."""
    path = tmp_path / "results"
    path.mkdir()
    path.chmod(0o555)
    immutable = hasattr(os, "geteuid") and os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a read-only directory")
    yield path
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o755)


def test_read_only_results_directory_is_an_error_before_training(tmp_path, read_only_dir):
    spec = _spec_file(tmp_path, "ro")
    start = time.monotonic()
    done = _cli(["run", str(spec), "--results", str(read_only_dir)], cwd=tmp_path)
    _assert_one_line_error(done, f"results directory {read_only_dir}: not writable")
    assert time.monotonic() - start < 30  # refused before loading data or TensorFlow
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name, text, message", [
    # three axes of 1,000 values: 10^9 points, counted before anything is expanded (this took
    # 21 s and 3.9 GB to end in a MemoryError)
    ("huge", "name: huge\nsweep:\n" + "".join(
        f"  {k}: [{', '.join(f'{i / 1000 + 1e-4:g}' for i in range(1000))}]\n"
        for k in ("train.learning_rate", "model.norm.epsilon", "train.momentum")),
     "the sweep has 1000000000 runs (limit 10000)"),
    # nested 10,000 levels: refused from the event stream (this took 37 s)
    ("deep", "name: deep\ntags: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested more than 32"),
])
def test_a_spec_too_large_to_expand_is_refused_before_it_is_built(tmp_path, name, text, message):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    done = _cli(["validate", str(spec)], cwd=tmp_path)  # under the helper's timeout
    assert done.returncode == 2 and message in done.stderr, done.stderr[-500:]
    assert "Traceback" not in done.stderr
    (tmp_path / "ok.yaml").write_text("name: ok\n")
    deep = "[" * 10_000 + "]" * 10_000
    done = _cli(["validate", str(tmp_path / "ok.yaml"), "-s", f"tags={deep}"], cwd=tmp_path)
    assert done.returncode == 2 and "nested more than 32" in done.stderr, done.stderr[-300:]


def _fake_results(tmp_path: Path) -> tuple[Path, Path]:
    from normbench.bench.cli import fake_records

    results = tmp_path / "r"
    results.mkdir()
    return results, fake_records(results, 4)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["report --out", "export tensorboard --logdir", "mlflow.db",
                                  "yaml key", "-s key", "--sweep key"])
def test_environment_and_input_errors_are_one_line(tmp_path, case):
    """Each of these ended in a traceback before (issue 27, item 3)."""
    results, spec = _fake_results(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "ok.yaml").write_text("name: ok\n")
    (tmp_path / "key.yaml").write_text("name: a\n{[a]: 1}: 2\n")
    args, message = {
        "report --out": (["report", str(spec), "--results", str(results), "--out",
                          str(a_file / "x")], "Not a directory"),
        "export tensorboard --logdir": (["export", "tensorboard", "--results", str(results),
                                         "--logdir", str(a_file)], "is a file, not a directory"),
        "mlflow.db": (["export", "mlflow", "--results", str(results)], "not an SQLite database"),
        "yaml key": (["validate", str(tmp_path / "key.yaml")], "a mapping key must be a plain value"),
        "-s key": (["validate", str(tmp_path / "ok.yaml"), "-s", "x={[a]: 1}"],
                   "a mapping key must be a plain value"),
        "--sweep key": (["validate", str(tmp_path / "ok.yaml"), "--sweep",
                         "train.batch_size={[a]: 1}"], "a mapping key must be a plain value"),
    }[case]
    if case == "mlflow.db":
        pytest.importorskip("mlflow")
        (results / "mlflow.db").write_text("not a database\n")
    if case == "export tensorboard --logdir":
        pytest.importorskip("tensorboard")
    done = _cli(args, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-800:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_batch_larger_than_the_smoke_data_is_a_clear_error(tmp_path):
    """Batch 2048 with ghost batches of 2 over --smoke's 1,000 images: ZeroDivisionError before."""
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ndataset: mnist-10k\nmodel: {norm: {type: batch, "
                    "virtual_batch_size: 2}}\ntrain: {batch_size: 2048}\n")
    done = _cli(["run", str(spec), "--smoke", "-q", "--results", str(tmp_path / "r")],
                cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "leaves no training step" in done.stderr, done.stderr[-800:]
    assert "Traceback" not in done.stderr and "ZeroDivisionError" not in done.stderr
