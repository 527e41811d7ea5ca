"""Each "where to add" recipe of docs/architecture.md, checked: a norm or dataset added in one
place and missed in another fails here, not as a grey line in a figure or a schema error."""

from __future__ import annotations

import pytest

from normbench import data, norms, plot, spec


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
