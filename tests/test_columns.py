"""columns: md/csv/json rendering of the rows, and every column documented in results/README.md."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from normbench import columns, tables

README = Path(__file__).parents[1] / "results" / "README.md"


def test_render_formats(make_record):
    rows = tables.group_rows([make_record()])
    md = columns.render(rows, columns.GROUP_COLUMNS, "md")
    assert md.splitlines()[0].startswith("| name | dataset |") and "**90.00%**" in md
    assert "config" in columns.render(rows, columns.GROUP_COLUMNS, "csv").splitlines()[0]
    assert "diverged" not in md and "diverged" not in columns.render(rows, columns.GROUP_COLUMNS, "csv")
    parsed = list(csv.DictReader(io.StringIO(columns.render(rows, columns.GROUP_COLUMNS, "csv"))))
    assert float(parsed[0]["test_acc_mean"]) == 0.9
    assert json.loads(columns.render(rows, columns.GROUP_COLUMNS, "json"))[0]["runs"] == 1


def test_every_column_is_documented():
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", README.read_text(), re.M))
    missing = (set(columns.RUN_COLUMNS) | set(columns.GROUP_COLUMNS)) - documented
    assert not missing, f"results/README.md lacks {sorted(missing)}"

