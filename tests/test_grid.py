"""grid: spec files into runs: overrides, sweeps and seeds expanded, --smoke shrinking."""

from __future__ import annotations

from normbench import grid

SPEC = "name: rel\ndataset: mnist-10k\n"


def test_an_explicit_epochs_override_wins_over_smoke(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC + "train: {epochs: 4}\n")
    runs = grid.load_runs(spec)
    assert [s.train.epochs for s in grid.smoke(runs)] == [1]
    assert [s.train.epochs for s in grid.smoke(grid.load_runs(spec, ["train.epochs=6"]),
                                               ["train.epochs=6"])] == [6]

