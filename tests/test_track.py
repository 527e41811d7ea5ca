"""track, in process: what a tracker logs of a record (finite metrics only), TensorBoard event
files written once per run, and the refusals; the real MLflow and TensorBoard round trips through
the CLI are in e2e/test_trackers.py."""

from __future__ import annotations

import math

import pytest

from normbench import track
from normbench.errors import NormbenchError


def test_metrics_leave_out_what_is_not_a_finite_number(make_record):
    record = make_record(test_loss=float("nan"), status="diverged",
                         history=[{"epoch": 1, "loss": float("inf"), "accuracy": 0.5, "time_s": 1.0},
                                  {"epoch": 2, "loss": 0.4, "accuracy": 0.9, "time_s": 1.0}])
    epoch = track.epoch_metrics(record)
    assert ("loss", 0.4, 2) in epoch and not any(n == "loss" and s == 1 for n, _, s in epoch)
    assert all(math.isfinite(v) for _, v, _ in epoch)
    final = track.final_metrics(record)
    assert "test_loss" not in final and final["test_accuracy"] == pytest.approx(0.9)


def test_tensorboard_writes_a_run_once(tmp_path, make_record):
    pytest.importorskip("tensorboard")
    board = track.TensorBoard(tmp_path / "tb")
    record = make_record()
    assert board.log(record, tmp_path) is True
    files = list((tmp_path / "tb" / record.run_id).iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents")
    assert board.log(record, tmp_path) is False  # never appended to twice
    assert "1 run(s) written" in board.how_to_open() and "1 already there" in board.how_to_open()


def test_tensorboard_refuses_a_file_as_its_directory(tmp_path):
    pytest.importorskip("tensorboard")
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NormbenchError, match="is a file, not a directory"):
        track.TensorBoard(path)
