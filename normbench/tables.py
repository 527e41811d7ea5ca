"""Tables from run records: rows per run and per experiment (seeds grouped, Student-t CIs),
filters, baselines, pivots, compare's views, and the summary files. What each column is (name,
header, unit, format, md/csv/json) lives in `columns`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


from normbench import norms, stats, store
from normbench.columns import (GROUP_COLUMNS, RUN_COLUMNS, TERMINAL_GROUP_COLUMNS,
                               TERMINAL_RUN_COLUMNS, printable, shown_columns, to_csv,
                               to_markdown)
from normbench.errors import NormbenchError
from normbench.store import RunRecord

NULLS = ("null", "none", "~", "")


def run_row(r: RunRecord) -> dict[str, Any]:
    return {"run_id": r.run_id, "name": r.name, "status": r.status,
            "diverged_reason": r.diverged_reason, "dataset": r.dataset.name,
            "dataset_requested": r.dataset.requested, "smoke": r.smoke,
            "n_train": r.dataset.n_train, "n_test": r.dataset.n_test, "norm": r.norm_type,
            "groups": r.norm_groups, "impl_requested": r.impl_requested,
            "impl_used": r.impl_used, "params": r.params, "epochs": r.epochs,
            "batch_size": r.batch_size, "seed": r.seed, "test_accuracy": r.test_accuracy,
            "test_loss": r.test_loss, "train_accuracy": r.train_accuracy,
            "train_loss": r.train_loss, "test_error_median5": r.test_error_median5,
            **{f"test_acc_{mode}": r.bn_eval[mode].accuracy if r.bn_eval else None
               for mode in ("moving", "precise", "batch")},
            "first_epoch_s": r.first_epoch_s,
            "steady_epoch_s": r.steady_epoch_s, "steady_samples_per_s": r.steady_samples_per_s,
            "total_s": r.total_s, "tensorflow": r.env.get("tensorflow"),
            "keras": r.env.get("keras"), "started": r.started, "model": r.saved_model}


def flat_spec(spec: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.norm.type": "group", ...} from a nested spec dict."""
    out = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_spec(value, f"{path}."))
        else:
            out[path] = value
    return out


def value_label(value: Any) -> str:
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def sort_key(value: Any) -> tuple:
    """Orders mixed values (None, numbers, strings) without comparing across types."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, value_label(value))


def group_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per experiment: runs sharing name, data actually used, smoke flag and config
    (the resolved spec but the seed). Statistics are over finished runs; diverged runs are
    counted in `diverged`, never averaged in. `config` names the spec fields that tell apart the
    experiments of one name. Each row also carries, for other views (not shown as columns):
    `spec` (the flattened spec without the seed) and `accuracies` (of its finished runs)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.name, r.dataset.name, r.smoke, r.config_hash), []).append(r)
    flats = {key: {k: v for k, v in flat_spec(rs[0].spec).items() if k != "train.seed"}
             for key, rs in groups.items()}
    by_name: dict[str, list[tuple]] = {}
    for key in groups:
        by_name.setdefault(key[0], []).append(key)
    varying = {}
    for name, keys in by_name.items():
        siblings = [flats[k] for k in keys]
        paths = {p for f in siblings for p in f}
        varying[name] = sorted(p for p in paths if len({value_label(f.get(p)) for f in siblings}) > 1)
    rows = []
    for key, rs in groups.items():
        name, dataset, smoke, _ = key
        done = [r for r in rs if r.status == "finished"]
        acc = [r.test_accuracy for r in done]
        mean, std, half = stats.mean_ci(acc) if acc else (None, None, None)
        n_div = len(rs) - len(done)
        note = (f"all {n_div} run(s) diverged" if not done else "") if n_div else ""

        avg = stats.mean  # timings and losses: infinite or huge values must not break a table

        rows.append({
            "name": name, "config": ", ".join(f"{p}={value_label(flats[key][p])}"
                                              for p in varying[name] if flats[key].get(p) is not None),
            "dataset": dataset, "smoke": smoke, "norm": rs[0].norm_type,
            "impl": ",".join(sorted({r.impl_used for r in rs})), "runs": len(done),
            "diverged": n_div, "test_acc_mean": mean, "test_acc_std": std, "test_acc_ci95": half,
            "test_acc_best": max(acc) if acc else None,
            "test_err_mean": None if mean is None else 1.0 - mean, "test_err_ci95": half,
            "test_loss_mean": avg([r.test_loss for r in done]),
            "first_epoch_s": avg([r.first_epoch_s for r in done]),
            "steady_epoch_s": avg([r.steady_epoch_s for r in done]),
            "samples_per_s": avg([r.steady_samples_per_s for r in done]),
            "best": False, "note": note, "accuracies": acc, "spec": flats[key]})
    for dataset, smoke in {(row["dataset"], row["smoke"]) for row in rows}:
        peers = [row for row in rows if (row["dataset"], row["smoke"]) == (dataset, smoke)
                 and row["test_acc_mean"] is not None]
        if peers:
            max(peers, key=lambda row: row["test_acc_mean"])["best"] = True
    rows.sort(key=lambda row: (row["dataset"], row["smoke"], row["test_acc_mean"] is None,
                               -(row["test_acc_mean"] or 0.0)))
    return rows


# ---------------------------------------------------------------------------------------------
# Filters (--where), baselines and pivots

FIELD_ALIASES = {"norm": "model.norm.type", "norm_type": "model.norm.type",
                 "groups": "norm_groups", "batch_size": "train.batch_size", "seed": "train.seed",
                 "epochs": "train.epochs"}
RECORD_FIELDS = ("name", "status", "smoke", "impl_used", "impl_requested", "dataset",
                 "dataset_requested", "norm_groups")


def value_of(record: RunRecord, path: str) -> Any:
    """A record's value for `path`: a spec path (model.norm.type), a record field or a column
    that compare shows (norm, groups, batch_size, ...)."""
    path = FIELD_ALIASES.get(path, path)
    if path == "dataset":
        return record.dataset.name
    if path == "dataset_requested":
        return record.dataset.requested
    if path in RECORD_FIELDS:
        return getattr(record, path)
    if path == "tags":  # records from before tags existed have none
        return list(record.spec.get("tags") or [])
    flat = flat_spec(record.spec)
    if path in flat:
        return flat[path]
    raise NormbenchError(f"unknown field {path!r}: use a spec path such as model.norm.type or "
                         f"train.batch_size, or one of {', '.join(RECORD_FIELDS + tuple(FIELD_ALIASES))}")


def _canonical_value(path: str, raw: str) -> str:
    if FIELD_ALIASES.get(path, path) == "model.norm.type":
        try:
            return norms.canonical(raw)
        except ValueError:
            return raw
    return raw


def matches(value: Any, raw: str, path: str = "") -> bool:
    """Whether a value equals the text a user typed: `null` matches None, norm aliases their
    canonical name, and comparisons ignore case."""
    if value is None:
        return raw.strip().lower() in NULLS
    if path == "tags":  # a run matches each of its tags
        return raw.strip() in value if raw.strip().lower() not in NULLS else not value
    raw = _canonical_value(path, raw.strip())
    if value_label(value) == raw or str(value).lower() == raw.lower():
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # 1000 matches a stored 1000.0, 1e-3 a stored 0.001
            number = float(raw)
        except ValueError:
            return False
        return math.isfinite(number) and float(value) == number
    return False


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
    return [r for r in records if all(matches(value_of(r, p), v, p) for p, v in parsed)]


def _row_value(row: dict, path: str) -> Any:
    if path == "name":
        return row["name"]
    if path in ("norm", "norm_type", "model.norm.type"):
        return row["norm"]
    path = FIELD_ALIASES.get(path, path)
    if path not in row["spec"]:
        raise NormbenchError(f"unknown field {path!r}: use a spec path such as model.norm.type "
                             "or train.batch_size")
    return row["spec"][path]


# Spec fields outside a run's identity (spec.OUTSIDE_IDENTITY): labels, not what was trained.
OUTSIDE_IDENTITY = ("tags", "slurm.", "study.", "tune.", "train.save_model")


def with_baseline(rows: list[dict], baseline: str) -> list[dict]:
    """Add delta_acc (mean accuracy minus the baseline's, in points when shown) and Welch's
    p_value to each row.

    `baseline` is a spec name or FIELD=VALUE[,FIELD=VALUE]. Each row is compared with the matching
    experiment that agrees with it on every other field (same dataset and smoke flag), e.g.
    --baseline model.norm.type=batch compares GN at batch 2 with BN at batch 2; a row without
    exactly one such experiment gets no difference (baseline empty), never a near one."""
    if "=" in baseline:
        filters = parse_filters(baseline.split(","), "--baseline")
        matching = [r for r in rows if all(matches(_row_value(r, p), v, p) for p, v in filters)]
        free = {FIELD_ALIASES.get(p, p) for p, _ in filters} | {p for p, _ in filters}
    else:
        matching, free = [r for r in rows if r["name"] == baseline], {"name"}
    if not matching:
        raise NormbenchError(f"--baseline {baseline!r} matches no experiment")
    for row in rows:
        # The matching experiment that agrees on every other field: the same spec name, learning
        # rate, epochs ... (fields one of the two norms does not use, such as groups for BN, are
        # None there and not compared; nor are the labels outside a run's identity).
        def differs(m: dict) -> bool:
            return any(row["spec"].get(p) != m["spec"].get(p)
                       for p in set(row["spec"]) | set(m["spec"])
                       if p not in free and not p.startswith(OUTSIDE_IDENTITY)
                       and row["spec"].get(p) is not None and m["spec"].get(p) is not None)

        peers = [m for m in matching if (m["dataset"], m["smoke"]) == (row["dataset"], row["smoke"])
                 and not differs(m)]
        base = peers[0] if len(peers) == 1 else None
        if base is None or not row["accuracies"] or not base["accuracies"]:
            row.update(baseline=None if base is None else (base["config"] or base["name"]),
                       delta_acc=None, p_value=None)
            continue
        delta, p = stats.welch(row["accuracies"], base["accuracies"])
        row.update(baseline=base["config"] or base["name"], delta_acc=delta,
                   p_value=None if base is row else p)
    return rows


def pivot(rows: list[dict], by: str) -> tuple[list[dict], list[str]]:
    """Rows: experiments without `by`; columns: the values of `by`; cells: test error in percent,
    ± the 95% CI half-width in points, and n (finished runs; diverged ones said apart)."""
    values, table = [], {}
    for row in rows:
        value = _row_value(row, by)
        if all(value_label(value) != value_label(v) for v in values):
            values.append(value)
        rest = ", ".join(part for part in row["config"].split(", ")
                         if part and not part.startswith(f"{FIELD_ALIASES.get(by, by)}="))
        key = (row["name"], rest, row["dataset"], row["smoke"])
        if row["test_err_mean"] is None:
            cell = "-"
        else:
            cell = f"{100 * row['test_err_mean']:.2f}%"
            if row["test_err_ci95"] is not None:
                cell += f" ± {100 * row['test_err_ci95']:.2f}"
        cell += f" (n={row['runs']}" + (f", {row['diverged']} diverged)" if row["diverged"] else ")")
        table.setdefault(key, {})[value_label(value)] = cell
    values.sort(key=sort_key)
    columns = [value_label(v) for v in values]
    out = [{"name": name, "config": rest, "dataset": dataset, "smoke": smoke,
            **{c: cells.get(c) for c in columns}}
           for (name, rest, dataset, smoke), cells in table.items()]
    return out, ["name", "config", "dataset", "smoke"] + columns


# ---------------------------------------------------------------------------------------------
# Formats


@dataclass
class View:
    """What `normbench compare` shows: rows, every column (md/csv/json), the terminal's columns."""

    rows: list[dict]
    columns: tuple[str, ...]
    shown: tuple[str, ...]
    title: str


def compare_view(records: list[RunRecord], source: str, *, runs: bool = False,
                 baseline: str | None = None, by: str | None = None) -> View:
    """Per run, or per experiment (seeds grouped) with a `baseline`'s differences or pivoted
    `by` a field; `source` names where the records came from, in the title."""
    if runs:
        return View([run_row(r) for r in records], RUN_COLUMNS, TERMINAL_RUN_COLUMNS,
                    f"{len(records)} run(s) in {source}; accuracy in %")
    rows, columns, shown = group_rows(records), GROUP_COLUMNS, TERMINAL_GROUP_COLUMNS
    title = f"{len(records)} run(s) in {source}; accuracy and error in %, CIs in percentage points"
    if baseline:
        rows = with_baseline(rows, baseline)
        columns = shown = columns[:-2] + ("baseline", "delta_acc", "p_value", "note")
    if by:
        rows, pivoted = pivot(rows, by)
        columns = shown = tuple(pivoted)
        title = (f"test error % ± 95% CI half-width (points), n = finished runs, by {by}; "
                 f"{len(records)} run(s) in {source}")
    return View(rows, tuple(columns), tuple(shown), title)


# ---------------------------------------------------------------------------------------------
# Summary files: summary.csv gains a row per saved run (constant cost); both files are rebuilt
# from every record once per invocation.


def fallback_note(records: Iterable[RunRecord]) -> str | None:
    """A line saying which finished runs used other data than their spec asked for, and how to
    redo them once that data can be had."""
    fell = [r for r in records if r.dataset.fallback]
    if not fell:
        return None
    pairs = sorted({f"{r.dataset.name} instead of {r.dataset.requested}" for r in fell})
    return (f"{len(fell)} run(s) trained on {', '.join(pairs)} (unavailable then); once it is "
            "available, `normbench run SPEC --retry-fallback` trains them again on it")


def append_summary(results_dir: Path, record: RunRecord) -> None:
    """Add one run's row to summary.csv (header first if the file is new)."""
    header, row = to_csv([run_row(record)], list(RUN_COLUMNS)).split("\n", 1)
    store.append_lines(results_dir / "summary.csv", row, header=header + "\n")


def write_summaries(results_dir: Path) -> list[tuple[str, str]]:
    """Rebuild summary.csv and summary.md from every run record; returns the entries skipped."""
    try:
        with store.summaries_lock(results_dir):
            records, skipped = store.load_records(results_dir)
            store.write_atomic(results_dir / "summary.csv",
                               to_csv([run_row(r) for r in records], list(RUN_COLUMNS)))  # stable
            groups = group_rows(records)
            md = ["# normbench results", "",
                  f"{len(records)} run(s); rebuilt from runs/*/metrics.json. Columns: README.md. "
                  "Accuracies in percent; CIs and differences in percentage points.", ""]
            note = fallback_note(records)
            if note:
                md += [f"**Note:** {note}.", ""]
            md += ["## By experiment (best mean test accuracy per dataset in bold)", "",
                   to_markdown(groups, shown_columns(groups, GROUP_COLUMNS)), "## Runs", "",
                   to_markdown([run_row(r) for r in records],
                               shown_columns([run_row(r) for r in records], RUN_COLUMNS))]
            if skipped:
                md += ["## Skipped", ""] + [f"- `{name}`: {why}" for name, why in skipped]
            store.write_atomic(results_dir / "summary.md", printable("\n".join(md) + "\n"))
    except OSError as exc:
        raise NormbenchError(f"results directory {results_dir}: cannot write the summaries "
                             f"({exc.strerror or exc}: {exc.filename or ''})") from None
    return skipped
