"""Each "where to add" recipe of docs/architecture.md, checked: a norm or dataset added in one
place and missed in another fails here, not as a grey line in a figure or a schema error."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from normbench import bench, data, norms, plot, spec
from normbench.bench.common import Option
from normbench.errors import NormbenchError


@pytest.mark.parametrize("name", sorted(norms.NORMS))
def test_every_norm_has_a_colour_and_a_short_name_in_the_figures(name):
    assert name in plot.NORM_COLORS, f"plot.NORM_COLORS has no colour for {name!r}"
    assert name in plot.NORM_NAMES, f"plot.NORM_NAMES has no short name for {name!r}"


def test_figure_tables_name_no_norm_the_registry_lacks():
    assert set(plot.NORM_COLORS) <= set(norms.NORMS) and set(plot.NORM_NAMES) <= set(norms.NORMS)
    assert len(set(plot.NORM_COLORS.values())) == len(plot.NORM_COLORS), "two norms share a colour"


def test_batch_statistics_norms_are_registered_norms():
    assert set(spec.BATCH_NORMS) <= set(norms.NORMS)


@pytest.mark.parametrize("name", sorted(norms.NORMS))
def test_a_grouped_norm_says_how_many_groups_it_uses(name):
    grouped = norms.effective_groups(name, 2, 8) is not None
    assert grouped == (name in ("group", "ws_group", "layer", "instance")), name


def test_every_dataset_loader_has_its_name_in_the_schema_and_back():
    assert set(data.LOADERS) == set(spec.DATASETS)


ROOT = Path(__file__).resolve().parents[1]
SUPPORT = {"__init__", "common", "step_kernels", "peers"}  # bench/ files that are not benchmarks


def test_every_benchmark_module_is_registered_and_every_registered_one_exists():
    files = {p.stem for p in (ROOT / "normbench" / "bench").glob("*.py")} - SUPPORT
    assert files == set(bench.BENCHMARKS)


@pytest.mark.parametrize("name", bench.BENCHMARKS)
def test_a_benchmark_has_its_help_options_run_and_table_and_a_make_bench_line(name):
    module = bench.load(name)
    assert module.HELP.strip() and callable(module.show)
    run = inspect.signature(module.run).parameters
    assert [o.name for o in module.OPTIONS] + ["log"] == list(run), "run's keywords are OPTIONS'"
    assert all(isinstance(o, Option) for o in module.OPTIONS)
    assert f"normbench bench {name}" in (ROOT / "Makefile").read_text()


def test_an_unknown_benchmark_lists_the_registered_ones():
    with pytest.raises(NormbenchError, match="choose train, floor"):
        bench.load("gpu")


def _engines(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _engines(sub)


def test_every_engine_of_normbench_is_registered_with_its_name():
    from normbench import executors

    ours = [e for e in _engines(executors.Engine) if e.__module__.startswith("normbench.")]
    registered = set(executors.ENGINES.values()) | {executors.InProcess}  # local with -j 1
    assert set(ours) == registered
    assert all(executors.ENGINES[name].name == name for name in executors.ENGINES)
