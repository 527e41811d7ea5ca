"""The report's guards on synthetic records whose right verdict is known: a cell that never
converged, a confounded axis with a moving control, a powered and an unpowered comparison, a
trend with its minimum in the middle, a declared equivalence margin, and a clean study that must
pass without warnings. Also: any study shape reports without a traceback."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from normbench import findings, grid, guards, store, study
from normbench import spec as specs
from normbench.bench.cli import fake_record

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8


def _record(spec: specs.Spec, error: float, loss: float, *, steps: int = 1000,
            spike: bool = False, still_falling: float = 0.0, smoke: bool = False):
    """A finished run: 8 evaluations ending at `error`, a training loss ending at `loss`."""
    base = fake_record(spec, 0).model_dump()
    history = []
    for e in range(1, EPOCHS + 1):
        err = error + 0.004 * (EPOCHS - e) / EPOCHS  # falls to `error`
        if e > 6:  # the last quarter: epochs 7 and 8
            err = error + still_falling * (EPOCHS - e)
        history.append({"epoch": e, "loss": loss * (1 + (EPOCHS - e) / 4), "accuracy": 0.9,
                        "time_s": 1.0, "test_accuracy": 1 - err, "test_loss": 0.3})
    if spike:
        history[4]["loss"] = 20 * loss + 0.5
    last5 = sorted(1 - h["test_accuracy"] for h in history[-5:])
    rid = store.run_id(spec.name, base["spec_hash"], smoke)
    return store.RunRecord.model_validate({
        **base, "run_id": rid, "smoke": smoke, "epochs": EPOCHS, "history": history,
        "epoch_times_s": [1.0] * EPOCHS, "train_loss": loss, "test_accuracy": 1 - error,
        "test_error_median5": last5[2], "optimizer_steps": steps,
        "learning_rate": spec.train.learning_rate * (
            spec.train.batch_size / spec.train.base_batch_size
            if spec.train.lr_scaling == "linear" else 1.0)})


def _study(tmp_path: Path, yaml: str, cell, *, smoke: bool = False) -> study.Study:
    """Write the spec, one record per run with `cell(spec, rng) -> dict of _record's
    arguments`, and load it as a study."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml)
    results = tmp_path / "results"
    runs = grid.load_runs(spec_file)
    if smoke:
        runs = grid.smoke(runs)
    rng = random.Random(0)
    for spec in runs:
        store.save(_record(spec, smoke=smoke, **cell(spec, rng)), specs.to_yaml(spec), results)
    return study.load_study([spec_file], results, smoke=smoke)


def _v(spec):
    return spec.model.norm.virtual_batch_size


GHOST = """name: ghost
dataset: mnist-10k
train: {batch_size: 64, optimizer: sgd, learning_rate: 0.1}
seeds: 5
sweep:
  - model.norm.type: [batch]
    model.norm.virtual_batch_size: [64, 16, 4, 2]
  - model.norm.type: [group]
"""


def test_a_clean_study_passes_without_warnings(tmp_path):
    s = _study(tmp_path, GHOST, lambda spec, rng: {
        "error": 0.08 + rng.gauss(0, 0.002), "loss": 0.2 + rng.gauss(0, 0.01)})
    f = findings.analyse(s)
    assert not f.excluded and not f.confounds and not f.control_moves
    assert f.ceiling is not None and not f.ceiling.warn  # 8% error: room for effects
    assert f.window is None
    said = findings.warnings(f, s)
    # only what every report states: the reference as test images, the power of its tests, that
    # no margin was declared and where the learning rates came from; no warning among them
    assert [w.split(":")[0] for w in said] == ["Ceiling", "Power", "Equivalence",
                                               "Learning rates"], said
    assert "Below 3%" not in said[0]
    assert all(c.tested for c in f.comparisons)


def test_a_cell_that_never_converged_is_flagged_shown_and_left_out(tmp_path):
    def cell(spec, rng):
        if spec.model.norm.type == "group":  # the loss of a net that never trained
            return {"error": 0.3 + rng.gauss(0, 0.05), "loss": 1.2 + rng.gauss(0, 0.1)}
        return {"error": 0.02 + rng.gauss(0, 0.001), "loss": 0.02 + rng.gauss(0, 0.001)}

    s = _study(tmp_path, GHOST, cell)
    f = findings.analyse(s)
    flagged = [v.cell.norm for v in f.excluded]
    assert flagged == ["group"]
    assert f.excluded[0].verdict().startswith("5 of 5 not converged (final training loss")
    assert not any("group" in c.what for c in f.comparisons)  # never compared
    assert any(w.startswith("Not converged: group") for w in findings.warnings(f, s))
    head, rows = __import__("normbench.report", fromlist=["x"]).results_table(s, f.convergence)
    assert any("5 not converged" in cell for row in rows for cell in row)


def test_small_ghost_batches_with_a_noisy_training_loss_are_not_flagged(tmp_path):
    """BN at v=2 records its loss under noisy per-group statistics: 7x the best cell (as on
    mnist-10k) is not 'not converged'."""
    s = _study(tmp_path, GHOST, lambda spec, rng: {
        "error": 0.012 + rng.gauss(0, 0.001),
        "loss": (0.095 if _v(spec) == 2 else 0.014) + rng.gauss(0, 0.001)})
    assert not findings.analyse(s).excluded


def test_still_falling_and_unstable(tmp_path):
    def cell(spec, rng):
        falling = 0.01 if _v(spec) == 4 else 0.0  # 1 point per epoch in the last quarter
        return {"error": 0.08 + rng.gauss(0, 0.002), "loss": 0.2, "still_falling": falling,
                "spike": _v(spec) == 16 and spec.train.seed == 3}

    s = _study(tmp_path, GHOST, cell)
    f = findings.analyse(s)
    assert [v.cell.x for v in f.excluded] == [4]
    assert "test error still falling over the last quarter" in f.excluded[0].verdict()
    spikes = [(v.cell.x, seed) for v in f.convergence.values() for seed in v.unstable]
    assert spikes == [(16, 3)]
    assert all(v.converged for v in f.convergence.values() if v.cell.x == 16)  # a warning only


REPLICAS = """name: replicas
dataset: mnist-10k
train: {optimizer: sgd, learning_rate: 0.4, lr_scaling: linear, base_batch_size: 256}
seeds: 5
sweep:
  - model.norm.type: [batch]
    train.batch_size+model.norm.virtual_batch_size: [[256, 32], [64, 8], [16, 2]]
  - model.norm.type: [group]
    train.batch_size: [256, 64, 16]
"""


def test_a_confounded_axis_reads_bn_net_of_a_control_that_moved(tmp_path):
    """Steps and lr move with v; GN (batch-independent) improves by 1 point from v=32 to v=2 and
    BN by the same: BN's change net of GN's is about 0, and the control's move is reported."""
    def cell(spec, rng):
        b = spec.train.batch_size
        gain = {256: 0.0, 64: 0.005, 16: 0.01}[b]  # the protocol: more steps at small batch
        return {"error": 0.05 - gain + rng.gauss(0, 0.0005), "loss": 0.1,
                "steps": 8000 * 12 // b}

    s = _study(tmp_path, REPLICAS, cell)
    f = findings.analyse(s)
    assert [c.fields for c in f.confounds] == [["optimizer's batch", "number of steps",
                                                "learning rate"]]
    along = [c for c in f.comparisons if c.kind in ("axis", "best", "trend")]
    assert along and not any(c.tested for c in along)  # shown, never tested
    net = [c for c in f.comparisons if c.kind == "net"]
    assert [c.what for c in net] == ["batch at 2 vs at 32 net of group",
                                     "batch at 8 vs at 32 net of group"]
    assert all(abs(c.diff) < 0.2 and not c.significant for c in net)
    assert f.control_moves and "group at 2 vs at 32" in f.control_moves[0]
    lead = findings.headline(f, s)
    assert lead[0].kind == "net"
    head, rows = findings.protocol_table(f)
    assert {r[1]: r[3] for r in rows}["2"] == "6000"


def test_a_powered_comparison_and_an_unpowered_one(tmp_path):
    """v=2 is 2 points worse with a small spread (significant); v=16 is 0.1 point worse with
    a spread of 1 point (inconclusive, and says how large an effect is not excluded)."""
    def cell(spec, rng):
        v = _v(spec)
        if v == 2:
            return {"error": 0.10 + rng.gauss(0, 0.002), "loss": 0.2}
        if v == 16:
            return {"error": 0.081 + rng.gauss(0, 0.01), "loss": 0.2}
        return {"error": 0.08 + rng.gauss(0, 0.002), "loss": 0.2}

    s = _study(tmp_path, GHOST, cell)
    f = findings.analyse(s)
    by = {c.what: c for c in f.comparisons}
    strong, weak = by["batch at 2 vs at 64"], by["batch at 16 vs at 64"]
    assert strong.significant and "higher error than at 64" in findings.sentence(strong)
    assert not weak.significant and weak.mde > 1.0 and weak.far > 1.0
    text = findings.sentence(weak)
    assert "inconclusive: effects up to" in text and "MDE" in text
    assert weak.alpha == pytest.approx(0.05 / len(f.tested))


def test_a_trend_with_its_minimum_in_the_middle(tmp_path):
    """Error lowest at v=16: both ends are worse than the best cell, which a comparison
    against the largest v alone would not show."""
    shape = {64: 0.09, 16: 0.08, 4: 0.085, 2: 0.10}
    s = _study(tmp_path, GHOST, lambda spec, rng: {
        "error": (shape[_v(spec)] if _v(spec) else 0.09) + rng.gauss(0, 0.001), "loss": 0.2})
    f = findings.analyse(s)
    by = {c.what: c for c in f.comparisons}
    assert by["batch at 2 vs at 16, its best"].significant
    assert by["batch at 16 vs at 64"].significant  # the reference is not the best
    assert "batch: trend over v" in by


def test_equivalence_only_against_a_margin_declared_before_the_runs(tmp_path):
    flat = lambda spec, rng: {"error": 0.08 + rng.gauss(0, 0.001), "loss": 0.2}  # noqa: E731
    declared = GHOST + "study: {equivalence_margin: 1.0}\n"
    s = _study(tmp_path / "before", declared, flat)
    f = findings.analyse(s)
    assert f.margin == 1.0
    assert any(c.equivalent for c in f.tested)
    assert "equivalent within ±1 points" in findings.sentence(by_what(f, "batch at 2 vs at 64"), 1.0)
    # the same margin written into the spec after the runs were made: no verdict
    after = _study(tmp_path / "after", GHOST, flat)
    (tmp_path / "after" / "study.yaml").write_text(declared)
    later = study.load_study([tmp_path / "after" / "study.yaml"], tmp_path / "after" / "results")
    f2 = findings.analyse(later)
    assert f2.margin is None and "declared after the runs" in f2.margin_note
    assert all(c.equivalent is None for c in f2.tested)
    assert after.cells  # loaded


def by_what(f, what):
    return next(c for c in f.comparisons if c.what == what)


def test_the_ceiling_and_the_metric_window(tmp_path):
    yaml = GHOST.replace("learning_rate: 0.1}", "learning_rate: 0.1, schedule: step, "
                                                "milestones: [0.5, 0.75], eval_every: 1}")
    s = _study(tmp_path, yaml, lambda spec, rng: {"error": 0.012 + rng.gauss(0, 0.0005),
                                                  "loss": 0.02})
    f = findings.analyse(s)
    assert f.ceiling.warn and re.search(r"about 2\d images", f.ceiling.sentence())
    assert f.window is not None and "the step at 75% of training" in f.window.sentence()


def test_mde_matches_the_noncentral_t_power():
    """The MDE is where a two-sided paired t-test at alpha has about 80% power (the usual
    t + t approximation: 75% at n = 5 and alpha 0.01, closer to 80% as n grows)."""
    scipy = pytest.importorskip("scipy.stats")
    sd, n, alpha = 0.2, 5, 0.01
    d = guards.mde(sd, n, alpha)
    nc = d / (sd / n ** 0.5)
    crit = scipy.t.ppf(1 - alpha / 2, n - 1)
    power = 1 - scipy.nct.cdf(crit, n - 1, nc) + scipy.nct.cdf(-crit, n - 1, nc)
    assert 0.74 < power < 0.85


def cli(*args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "normbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("yaml", [
    "name: norms\ndataset: mnist-10k\nseeds: 2\nsweep:\n  model.norm.type: [batch, group, layer]\n",
    "name: one\ndataset: mnist-10k\n",  # a single cell, one seed
    "name: opts\ndataset: mnist-10k\nseeds: 2\nsweep:\n  train.optimizer: [adam, sgd]\n",
], ids=["norms only", "one cell", "string axis"])
def test_any_study_shape_reports(tmp_path, yaml):
    pytest.importorskip("matplotlib")
    _study(tmp_path, yaml, lambda spec, rng: {"error": 0.1 + rng.gauss(0, 0.01), "loss": 0.3})
    done = cli("report", tmp_path / "study.yaml", "--results", tmp_path / "results",
               "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000


@pytest.mark.slow
def test_a_report_of_smoke_runs_says_so(tmp_path):
    pytest.importorskip("matplotlib")
    _study(tmp_path, GHOST, lambda spec, rng: {"error": 0.1, "loss": 0.3}, smoke=True)
    done = cli("report", tmp_path / "study.yaml", "--results", tmp_path / "results",
               "--out", tmp_path / "out")
    assert done.returncode == 2 and "made with --smoke: add --smoke" in done.stderr
    done = cli("report", tmp_path / "study.yaml", "--smoke", "--results", tmp_path / "results",
               "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "Smoke runs (--smoke)" in (tmp_path / "out" / "report.md").read_text()


def test_identical_differences_no_common_seeds_and_nan_losses(tmp_path):
    """From the review: the same difference in every seed was 'p = 0'; cells with no seed in
    common crashed; a diverged run's NaN loss could switch the loss check off for a facet."""
    def cell(spec, rng):
        v, seed = _v(spec), spec.train.seed
        if v == 16:  # exactly 1 point above v=64 in every seed
            return {"error": 0.09 + 0.001 * seed, "loss": 0.2}
        if v == 4:  # never converged (fits 50x worse than the best cell)
            return {"error": 0.3, "loss": 10.0}
        return {"error": 0.08 + 0.001 * seed, "loss": 0.2 if v != 2 or seed else math.nan}

    s = _study(tmp_path, GHOST, cell)
    f = findings.analyse(s)
    same = by_what(f, "batch at 16 vs at 64")
    assert not same.tested and same.p_holm is None and "untestable" in findings.sentence(same)
    assert 4 in [v.cell.x for v in f.excluded]  # still caught with a NaN loss in the facet
    # drop seed 0 from v=64 and seeds 1-4 from v=2: no seed in common, no crash
    for cell in s.cells:
        if cell.x == 64:
            cell.runs.pop(0)
        if cell.x == 2:
            for seed in (1, 2, 3, 4):
                cell.runs.pop(seed)
    f = findings.analyse(s)
    lone = by_what(f, "batch at 2 vs at 64")
    assert lone.n == 0 and "no seed in common" in findings.sentence(lone)


def test_a_groups_axis_with_a_bn_baseline_still_tests_the_groups(tmp_path):
    yaml = ("name: groups\ndataset: mnist-10k\nmodel: {arch: vgg, widths: [16, 16]}\nseeds: 5\n"
            "sweep:\n  - model.norm.type: [group]\n    model.norm.groups: [1, 4, 16]\n"
            "  - model.norm.type: [batch]\n")
    s = _study(tmp_path, yaml, lambda spec, rng: {
        "error": 0.08 + 0.01 * (spec.model.norm.groups == 1) + rng.gauss(0, 0.001), "loss": 0.2})
    f = findings.analyse(s)
    assert {c.x for c in s.cells if c.norm == "batch"} == {"any"}
    assert by_what(f, "group at 1 vs at 16").significant


def test_a_grid_of_one_rate_is_refused():
    with pytest.raises(ValueError, match="chooses nothing"):
        specs.Spec.model_validate({"name": "a", "tune": {"learning_rate": [0.1]}})


def test_a_cosine_still_annealing_is_not_progress_but_a_fall_in_its_tail_is(tmp_path):
    """16 epochs of a cosine: at epoch 13 (inside the last quarter) the rate is 8.5% of its peak,
    from epoch 14 under 5%. Error that falls only while the rate anneals (epochs 13 to 14) is
    the schedule's doing, not a cell that needs more steps; error still falling after it is."""
    yaml = GHOST.replace("learning_rate: 0.1}", "learning_rate: 0.1, schedule: cosine}")
    s = _study(tmp_path, yaml, lambda spec, rng: {"error": 0.08, "loss": 0.2})
    for cell in s.cells:
        for seed, r in cell.runs.items():
            history = []
            for e in range(1, 17):
                if cell.x == 4:  # still falling in the tail: 0.5 points an epoch to the end
                    err = 0.08 + 0.005 * (16 - e)
                else:  # falls 1.5 points from epoch 13 to 14, as the rate anneals, then flat
                    err = 0.08 + (0.015 if e <= 13 else 0.0)
                history.append(r.history[0].model_copy(update={
                    "epoch": e, "test_accuracy": 1 - err,
                    "learning_rate": 0.05 * (1 + math.cos(math.pi * e / 16))}))
            cell.runs[seed] = r.model_copy(update={"history": history, "epochs": 16})
    f = findings.analyse(s)
    assert [v.cell.x for v in f.excluded] == [4]
    assert "still falling over the last quarter of training by 1.00 points" in f.excluded[0].verdict()
    r = s.cells[0].runs[0]
    assert guards._last_quarter_drop(r, held_out=False) == pytest.approx(0.0)  # epochs 14-16
    constant = r.model_copy(update={"history": [e.model_copy(update={"learning_rate": 0.1})
                                                for e in r.history]})
    assert guards._last_quarter_drop(constant, held_out=False) == pytest.approx(0.015)  # 13-16
    # a step inside the quarter (lr / 100 after epoch 14): read from epoch 15, after the step
    step = r.model_copy(update={"history": [e.model_copy(update={
        "learning_rate": 0.1 if e.epoch <= 14 else 0.001,
        "test_accuracy": 1 - (0.09 if e.epoch <= 14 else 0.085 if e.epoch == 15 else 0.08)})
        for e in r.history]})
    assert guards._last_quarter_drop(step, held_out=False) == pytest.approx(0.005)
    # fewer than two evaluations in the tail (every other epoch missing) or a rate missing: the
    # whole quarter is read, as for any schedule: the check errs towards flagging, never off
    sparse = r.model_copy(update={"history": [e for e in r.history if e.epoch in (13, 16)]})
    assert guards._last_quarter_drop(sparse, held_out=False) == pytest.approx(0.015)
    unrecorded = r.model_copy(update={"history": [
        e.model_copy(update={"learning_rate": None}) if e.epoch == 15 else e for e in r.history]})
    assert guards._last_quarter_drop(unrecorded, held_out=False) == pytest.approx(0.015)


def test_a_pre_stated_metric_window_is_the_mean_of_its_evaluations(tmp_path):
    """study.metric_last: the metric is the mean test error of the evaluations ending in the last
    fraction of the steps (8 epochs of 125 steps, last 25%: epochs 7 and 8); a cosine's tail in
    that window is not a learning-rate phase, a window reaching back into the peak is."""
    def records(fraction):
        yaml = GHOST.replace("learning_rate: 0.1}", "learning_rate: 0.1, schedule: cosine, "
                             "eval_every: 1}") + f"study: {{metric_last: {fraction}}}\n"
        s = _study(tmp_path / str(fraction), yaml, lambda spec, rng: {
            "error": 0.08, "loss": 0.2, "still_falling": 0.01})
        for cell in s.cells:  # record the cosine's rates, as training does
            for seed, r in cell.runs.items():
                history = [e.model_copy(update={"learning_rate": 0.05 * (1 + math.cos(
                    math.pi * e.epoch / EPOCHS))}) for e in r.history]
                cell.runs[seed] = r.model_copy(update={"history": history})
        return s

    s = records(0.25)
    r = s.cells[0].runs[0]
    assert study.metric_epochs(r) == [7, 8]
    assert study.error_of(r) == pytest.approx((0.09 + 0.08) / 2)  # epochs 7 and 8
    assert "mean of the evaluations in the last 25% of training steps" in s.metric
    assert guards.window(s) is None  # rates below 5% of the peak, falling to 0: the tail
    wide = records(0.75)
    assert study.metric_epochs(wide.cells[0].runs[0]) == [3, 4, 5, 6, 7, 8]
    w = guards.window(wide)
    assert w is not None and "the 6 evaluations in the last 75% of the steps" in w.sentence()
    assert "the mean mixes" in w.sentence()
    assert guards.window_table(s)[0][1] == "mean of last 25% (%)"


STEPS = """name: steps
dataset: mnist-10k
train: {batch_size: 64, optimizer: sgd}
seeds: 5
sweep:
  - model.norm.type+train.learning_rate: [[batch, 0.2]]
    model.norm.virtual_batch_size: [64, 2]
    train.steps: [2000, 10000]
  - model.norm.type+train.learning_rate: [[group, 0.05]]
    train.steps: [2000, 10000]
"""


def test_a_cell_is_compared_with_itself_at_another_setting(tmp_path):
    """Steps vary inside each cell and each norm has its own rate: the rates stay out of the
    facets (so GN and BN are compared at each length), and each cell at 10,000 steps is tested
    against itself at 2,000 (in numeric order, not the labels'); where the shorter GN cell is
    still falling it is shown, not tested."""
    def cell(spec, rng):
        gn, long_ = spec.model.norm.type == "group", spec.train.steps == 10000
        error = 0.09 if gn and not long_ else 0.08  # GN gains a point from twice the steps
        return {"error": error + rng.gauss(0, 0.001), "loss": 0.2, "steps": spec.train.steps}

    s = _study(tmp_path / "a", STEPS, cell)
    assert s.facets == ["steps=2000", "steps=10000"]  # in numeric order
    f = findings.analyse(s)
    gain = by_what(f, "group with steps=10000 vs with steps=2000")
    assert gain.kind == "setting" and gain.tested and gain.significant and gain.n == 5
    assert gain.diff == pytest.approx(-1.0, abs=0.2)
    assert "group with steps=10000 has" in findings.sentence(gain) and "lower error than with " \
        "steps=2000" in findings.sentence(gain)
    same = by_what(f, "batch at 2 with steps=10000 vs with steps=2000")
    assert same.tested and not same.significant
    assert "batch vs group at 2 (steps=10000)" in {c.what for c in f.comparisons}
    assert gain in findings.headline(f, s)

    def falling(spec, rng):  # GN at 2,000 steps still falling in its last quarter
        out = cell(spec, rng)
        out["still_falling"] = 0.01 if spec.model.norm.type == "group" and \
            spec.train.steps == 2000 else 0.0
        return out

    f2 = findings.analyse(_study(tmp_path / "b", STEPS, falling))
    shown = by_what(f2, "group with steps=10000 vs with steps=2000")
    assert not shown.tested and shown.p_holm is None and shown.n == 5
    assert "not tested: group (steps=2000) not converged" in findings.sentence(shown)
    assert "batch vs group at 2 (steps=2000)" not in {c.what for c in f2.comparisons}
