"""Views of run records for `normbench compare`: filters, a baseline with Welch's test, pivots."""

from __future__ import annotations

from typing import Any

from normbench import results, stats
from normbench.errors import NormbenchError
from normbench.results import RunRecord

RECORD_FIELDS = ("name", "status", "smoke", "impl_used", "impl_requested", "dataset", "norm_type")


def value_of(record: RunRecord, path: str) -> Any:
    """A record's value for `path`: a spec path (model.norm.type) or a record field."""
    if path == "dataset":
        return record.dataset["name"]
    if path in RECORD_FIELDS:
        return getattr(record, path)
    flat = results.flat_spec(record.spec)
    if path in flat:
        return flat[path]
    raise NormbenchError(f"unknown field {path!r}: use a spec path such as model.norm.type or "
                         f"train.batch_size, or one of {', '.join(RECORD_FIELDS)}")


def _matches(value: Any, raw: str) -> bool:
    return results.value_label(value) == raw or str(value).lower() == raw.lower()


def parse_filters(filters: list[str], option: str = "--where") -> list[tuple[str, str]]:
    parsed = []
    for text in filters:
        path, sep, raw = text.partition("=")
        if not sep or not path.strip():
            raise NormbenchError(f"{option} {text!r}: expected FIELD=VALUE, e.g. model.norm.type=group")
        parsed.append((path.strip(), raw.strip()))
    return parsed


def where(records: list[RunRecord], filters: list[str]) -> list[RunRecord]:
    parsed = parse_filters(filters)
    for path, _ in parsed:
        if records:
            value_of(records[0], path)  # unknown fields fail even when nothing would match
    return [r for r in records if all(_matches(value_of(r, p), v) for p, v in parsed)]


def _row_value(row: dict, path: str) -> Any:
    if path == "name":
        return row["name"]
    if path in ("norm", "norm_type"):
        return row["norm"]
    if path not in row["_spec"]:
        raise NormbenchError(f"unknown field {path!r}: use a spec path such as model.norm.type "
                             "or train.batch_size")
    return row["_spec"][path]


def with_baseline(rows: list[dict], baseline: str) -> list[dict]:
    """Add delta_acc (mean accuracy minus the baseline's) and Welch's p_value to each row.

    `baseline` is a spec name or FIELD=VALUE[,FIELD=VALUE]. Each row is compared with the matching
    experiment that agrees with it on every other field (same dataset and smoke flag), e.g.
    --baseline model.norm.type=batch compares GN at batch 2 with BN at batch 2."""
    if "=" in baseline:
        filters = parse_filters(baseline.split(","), "--baseline")
        matching = [r for r in rows if all(_matches(_row_value(r, p), v) for p, v in filters)]
        free = {p for p, _ in filters}
    else:
        matching, free = [r for r in rows if r["name"] == baseline], {"name"}
    if not matching:
        raise NormbenchError(f"--baseline {baseline!r} matches no experiment")
    for row in rows:
        # The closest matching experiment: most spec fields equal, the baseline's own aside
        # (fields a norm does not use, such as groups for BN, differ with it and are not counted).
        def agreement(m: dict) -> int:
            return sum(m["_spec"].get(p) == v for p, v in row["_spec"].items()
                       if p not in free and v is not None and m["_spec"].get(p) is not None)

        peers = [m for m in matching if (m["dataset"], m["smoke"]) == (row["dataset"], row["smoke"])]
        best = max(map(agreement, peers), default=None)
        closest = [m for m in peers if agreement(m) == best]
        base = closest[0] if len(closest) == 1 else None
        if base is None:
            row.update(baseline=None, delta_acc=None, p_value=None)
            continue
        delta, p = stats.welch(row["_acc"], base["_acc"])
        row.update(baseline=base["config"] or base["name"], delta_acc=delta,
                   p_value=None if base is row else p)
    return rows


def pivot(rows: list[dict], by: str) -> tuple[list[dict], list[str]]:
    """Rows: experiments without `by`; columns: the values of `by`; cells: test error % ± 95% CI."""
    values, table = [], {}
    for row in rows:
        value = _row_value(row, by)
        if value not in values:
            values.append(value)
        rest = ", ".join(part for part in row["config"].split(", ") if part and not part.startswith(f"{by}="))
        key = (row["name"], rest, row["dataset"], row["smoke"])
        cell = f"{100 * row['test_err_mean']:.2f}"
        if row["test_err_ci95"] is not None:
            cell += f" ± {100 * row['test_err_ci95']:.2f}"
        table.setdefault(key, {})[results.value_label(value)] = f"{cell} (n={row['runs']})"
    values.sort(key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else str(v)))
    columns = [results.value_label(v) for v in values]
    out = [{"name": name, "config": rest, "dataset": dataset, "smoke": smoke,
            **{c: cells.get(c) for c in columns}}
           for (name, rest, dataset, smoke), cells in table.items()]
    return out, ["name", "config", "dataset", "smoke"] + columns
