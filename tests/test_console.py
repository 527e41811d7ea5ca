"""console: terminal tables that keep every number visible at any width."""

from __future__ import annotations

import pytest

from normbench import console, tables


@pytest.mark.parametrize("width", [20, 60, 80, 100, 120])
def test_the_terminal_table_keeps_every_number_visible(make_record, width):
    import io

    from rich.console import Console

    recs = [make_record(run_id=f"longexperimentname-00000000000{i}", name="longexperimentname",
                        seed=i, test_accuracy=0.9 + i / 100,
                        spec={"model": {"norm": {"type": "group"}}, "train": {"seed": i}})
            for i in range(3)]
    recs.append(make_record(run_id="longexperimentname-0000000000aa", name="longexperimentname",
                            config_hash="d" * 64, test_accuracy=0.8512,
                            spec={"model": {"norm": {"type": "batch"}}, "train": {"seed": 0}}))
    rows = tables.group_rows(recs)
    from normbench.tables import TERMINAL_GROUP_COLUMNS as TABLE_GROUP

    buffer = io.StringIO()
    # as normbench's own console: soft wrap (a line too long for the terminal wraps whole)
    term = Console(file=buffer, width=width, markup=False, emoji=False, soft_wrap=True)
    term.print(console.table(rows, TABLE_GROUP, "title", console=term))
    text = buffer.getvalue()
    assert "…" not in text
    for row in rows:
        assert f"{100 * row['test_acc_mean']:.2f}" in text
        assert f"{100 * row['test_err_mean']:.2f}" in text
    assert "acc %" in text and "error %" in text
    if width <= 60:  # too narrow for columns: each row's values under their labels, names whole
        assert text.count("name: longexperimentname") == len(rows), text
        assert text.count("norm: ") == len(rows)

