"""Figures, read back: legends, axis labels, tick values, colours and bands (not just files)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from normbench import plot  # noqa: E402
from normbench.errors import NormbenchError

# error % by (norm, batch) over 3 seeds; GN at batch 2 has a wide spread, so its band would dip
# below 0% unless clipped
ACC = {("batch", 2): [0.90, 0.92, 0.91], ("batch", 8): [0.95, 0.96, 0.955],
       ("batch", 32): [0.97, 0.96, 0.98], ("group", 2): [0.999, 0.95, 0.999],
       ("group", 8): [0.96, 0.97, 0.965], ("group", 32): [0.96, 0.97, 0.96]}


def _records(make_record):
    records = []
    for (norm, batch), accs in ACC.items():
        for seed, acc in enumerate(accs):
            spec = {"name": "bs", "dataset": "mnist-10k",
                    "model": {"arch": "tutorial", "norm": {"type": norm, "groups": 5 if norm == "group" else None}},
                    "train": {"batch_size": batch, "seed": seed, "epochs": 3, "optimizer": "adam",
                              "learning_rate": 0.001}}
            history = [{"epoch": e, "loss": 1.0 / e, "accuracy": acc, "time_s": 1.0,
                        "test_accuracy": acc - 0.1 / e, "test_loss": 0.5} for e in (1, 2, 3)]
            records.append(make_record(run_id=f"bs-{'a' if norm == 'batch' else 'b'}{batch:02d}{seed:09x}", name="bs",
                                       norm_type=norm, batch_size=batch, seed=seed, epochs=3,
                                       test_accuracy=acc, config_hash=f"{norm}{batch}", spec=spec,
                                       history=history))
    return records


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_error_vs_batch_has_a_colour_per_norm_a_legend_and_the_paper(make_record):
    figs = plot.figures(_records(make_record), paper=plot.load_paper())
    fig = figs[("bs", "batch_size")]
    ours, paper = fig.axes[:2]
    assert _legend(ours) == ["BN", "GN"] and _legend(paper) == ["BN", "GN"]
    assert [line.get_color() for line in ours.lines] == [plot.NORM_COLORS["batch"], plot.NORM_COLORS["group"]]
    assert [line.get_color() for line in paper.lines] == [plot.NORM_COLORS["batch"], plot.NORM_COLORS["group"]]
    assert ours.get_xlabel() == "batch size (images per step)"
    assert ours.get_ylabel() == "test error (%), mean ± 95% CI"
    assert [t.get_text() for t in ours.get_xticklabels()] == ["2", "8", "32"]
    assert paper.get_title().startswith("Wu & He 2018") and paper.xaxis_inverted()
    assert [t.get_text() for t in paper.get_xticklabels()] == ["32", "16", "8", "4", "2"][::-1]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "mnist-10k" in title and "tutorial CNN" in title and "adam" in title and "3 epochs" in title
    # the bands: every point's band holds the mean, and none goes below 0% error
    for band in ours.collections:
        for path in band.get_paths():
            assert path.vertices[:, 1].min() >= 0.0
    gn = ours.lines[1]
    assert list(gn.get_xdata()) == [2, 8, 32]
    assert gn.get_ydata()[0] == pytest.approx(100 * (1 - sum(ACC[("group", 2)]) / 3))


def test_band_is_clipped_to_what_is_possible():
    lower, upper = plot.band([1.0, 50.0, 99.0], [3.0, None, 5.0])
    assert lower == [0.0, 50.0, 94.0] and upper == [4.0, 50.0, 100.0]


def test_learning_curves_facet_by_batch_with_integer_epochs(make_record):
    fig = plot.figures(_records(make_record))[("bs", "learning")]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6  # 2 metrics (training loss, test error) x 3 batch sizes
    assert [ax.get_title() for ax in axes[:3]] == ["batch 2", "batch 8", "batch 32"]
    assert {ax.get_ylabel() for ax in axes[:3]} == {"training loss (log scale)"}
    assert {ax.get_ylabel() for ax in axes[3:]} == {"test error (%) (log scale)"}
    assert all(ax.get_yscale() == "log" for ax in axes)
    for ax in axes:
        assert ax.get_xlabel() == "epoch"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
        assert _legend(ax) == ["BN", "GN"]
        assert [line.get_color() for line in ax.lines] == [plot.NORM_COLORS["batch"], plot.NORM_COLORS["group"]]
    # the test-error line is the mean over seeds at each epoch
    bn = axes[3].lines[0]
    want = [100 * (1 - (sum(ACC[("batch", 2)]) / 3 - 0.1 / e)) for e in (1, 2, 3)]
    assert list(bn.get_ydata()) == pytest.approx(want)


def test_many_lines_become_one_panel_per_norm(make_record):
    rows = []
    for norm in ("batch", "group"):
        for groups in range(4):
            for batch in (2, 8):
                rows.append({"name": "x", "norm": norm, "config": "", "test_err_mean": 0.1,
                             "test_err_ci95": 0.01,
                             "spec": {"train.batch_size": batch, "model.norm.type": norm,
                                      "model.dropout": groups / 10}})
    fig = plot.error_figure(rows, "train.batch_size", "batch size", "t")
    assert [ax.get_title() for ax in fig.axes] == ["BN", "GN"]
    assert len(_legend(fig.axes[0])) == 4 and _legend(fig.axes[0])[0] == "BN (dropout=0.0)"
    assert len({line.get_linestyle() for line in fig.axes[0].lines}) == 4


def test_a_field_tied_to_the_batch_does_not_split_the_line():
    rows = [{"name": "x", "norm": "batch", "config": "", "test_err_mean": e, "test_err_ci95": None,
             "spec": {"train.batch_size": 8 * v, "model.norm.virtual_batch_size": v,
                      "model.norm.type": "batch"}} for v, e in ((2, 0.2), (8, 0.1), (32, 0.05))]
    fig = plot.error_figure(rows, "train.batch_size", "batch", "t")
    assert len(fig.axes[0].lines) == 1 and _legend(fig.axes[0]) == ["BN"]


@pytest.mark.slow
def test_svg_and_png(make_record, tmp_path):
    written = plot.plot_all(_records(make_record), tmp_path, "svg")
    assert sorted(p.name for p in written) == ["bs-batch_size.svg", "bs-learning.svg"]
    assert all(p.read_text().lstrip().startswith("<?xml") for p in written)
    png = plot.plot_all(_records(make_record), tmp_path, "png")
    from matplotlib.image import imread

    height, width = imread(png[0]).shape[:2]
    assert (width, height) == (920, 840)  # 2x: a 4.6 x 4.2-inch panel at 200 dpi, not 100


def test_plot_never_builds_a_path_from_an_unchecked_name(tmp_path, make_record):
    from normbench import plot

    with pytest.raises(NormbenchError, match="refusing to plot run name"):
        plot.figure_path(tmp_path, "../../x", "learning")
    sneaky = make_record().model_copy(update={"name": "../x"})  # as if validation were skipped
    with pytest.raises(NormbenchError, match="refusing"):
        plot.plot_all([sneaky], tmp_path / "plots")
    assert not (tmp_path / "x-learning.png").exists()



def test_the_context_line_names_the_steps_when_runs_differ_in_them(make_record):
    """Runs of fixed steps (train.steps) that differ in them: the line names the steps, not the
    unused default of train.epochs ('1 epoch' before)."""
    from normbench import plot

    def run(steps):
        return make_record(spec={"name": "c", "dataset": "mnist-10k",
                                 "model": {"arch": "tutorial", "norm": {"type": "group"}},
                                 "train": {"optimizer": "sgd", "learning_rate": 0.1, "epochs": 1,
                                           "steps": steps}})
    assert "2400/4800 steps" in plot.context([run(2400), run(4800)])
    assert "2400 steps" in plot.context([run(2400), run(2400)])
    assert "1 epoch" in plot.context([run(None)])
