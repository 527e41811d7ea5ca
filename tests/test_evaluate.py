"""evaluate: when a run counts as diverged, and why."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("nonfinite,first,final,loss,acc,fragment", [
    ("the training loss became nan in epoch 2", 2.3, 0.1, 0.1, 0.9, "became nan"),
    (None, 2.3, 0.1, float("nan"), 0.9, "test loss is nan"),
    (None, 2.3, 2.8e22, 3.0, 0.5, "more than 100x"),
    (None, 2.3, 2.2, 2.3, 0.108, "at chance"),
    (None, 2.3, 0.1, 0.1, 0.95, None),
])
def test_diverged_reason(nonfinite, first, final, loss, acc, fragment):
    import tensorflow  # noqa: F401 - train imports it
    from normbench import evaluate as evaluation

    reason = evaluation.diverged_reason(nonfinite, first, final, loss, acc)
    assert (reason is None) if fragment is None else (fragment in reason)


def test_a_loss_that_blew_up_in_the_first_call_is_diverged():
    import tensorflow  # noqa: F401 - train imports it
    from normbench import evaluate as evaluation

    assert "uniform guess" in evaluation.diverged_reason(None, 2.1e22, 2.2e22, 1.3e6, 0.134)

