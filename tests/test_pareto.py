"""Pareto front, hypervolume and plot on hand-made points."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pudm_bench.search.pareto import default_reference, hypervolume_2d, pareto_front, pareto_plot


def frame(rows):
    return pd.DataFrame(rows, columns=["trial_id", "role", "method", "non_sensitive_rate", "quality", "excluded"])


@pytest.fixture
def trials() -> pd.DataFrame:
    return frame([
        ("a", "search", "pu", 0.9, 10.0, False),   # front
        ("b", "search", "pu", 0.8, 5.0, False),    # front
        ("c", "search", "pu", 0.7, 8.0, False),    # dominated by b
        ("d", "search", "pu", 0.9, 10.0, False),   # identical to a: both on the front
        ("e", "search", "pu", math.nan, 1.0, False),  # no rate: never on the front
        ("f", "search", "pu", 1.0, 0.5, True),     # would dominate everything, but excluded
        ("g", "search", "pu", 0.9, 12.0, False),   # same rate as a, worse quality: dominated
        ("u", "baseline", "unsupervised", 0.5, 3.0, False),  # front (best quality)
        ("s", "baseline", "supervised", 0.95, 30.0, False),  # front (best rate)
    ])


def test_front_dominated_ties_nan_excluded(trials):
    front = pareto_front(trials)
    assert front.index.equals(trials.index) and front.dtype == bool
    assert sorted(trials.trial_id[front]) == ["a", "b", "d", "s", "u"]


def test_front_of_empty_and_all_nan_frames():
    assert pareto_front(frame([])).tolist() == []
    assert pareto_front(frame([("x", "search", "pu", math.nan, math.nan, False)])).tolist() == [False]


def test_front_uses_named_columns_and_missing_column_is_clear():
    df = pd.DataFrame({"up": [1.0, 2.0], "down": [1.0, 0.5]})
    assert pareto_front(df, maximize="up", minimize="down").tolist() == [False, True]
    with pytest.raises(KeyError, match="non_sensitive_rate"):
        pareto_front(df)


def test_hypervolume_of_a_hand_computed_staircase():
    # Strips below the reference quality 20, best rate first: 0.9*(20-10) + 0.6*(10-4) + 0.3*(4-2) = 13.2
    points = [(0.9, 10.0), (0.6, 4.0), (0.3, 2.0)]
    assert hypervolume_2d(points, (0.0, 20.0)) == pytest.approx(13.2)
    # dominated, out-of-reference and NaN points add nothing; order does not matter
    extra = points[::-1] + [(0.5, 12.0), (0.1, 25.0), (math.nan, 1.0), (0.9, 10.0)]
    assert hypervolume_2d(np.array(extra), (0.0, 20.0)) == pytest.approx(13.2)
    # a non-zero rate reference shrinks every strip's width
    assert hypervolume_2d(points, (0.2, 20.0)) == pytest.approx(0.7 * 10 + 0.4 * 6 + 0.1 * 2)


def test_hypervolume_edge_cases():
    assert hypervolume_2d(np.empty((0, 2)), (0.0, math.nan)) == 0.0
    assert hypervolume_2d([(0.5, 1.0)], (0.0, 1.0)) == 0.0  # not better than the reference in quality
    with pytest.raises(ValueError, match="finite"):
        hypervolume_2d([(0.5, 1.0)], (0.0, math.nan))


def test_default_reference(trials):
    # worst usable quality is the supervised baseline's 30; excluded and NaN rows do not count
    assert default_reference(trials) == pytest.approx((0.0, 33.0))
    assert math.isnan(default_reference(frame([("x", "search", "pu", 0.5, math.nan, False)]))[1])


def test_plot_highlights_the_searched_front_and_labels_baselines(trials):
    fig = pareto_plot(trials, "fd_classifier", "toy sweep")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    by_label = {c.get_label(): c for c in ax.collections}
    # the front of the searched trials: a, b, d (baselines are drawn apart, not highlighted)
    assert len(by_label["Pareto front"].get_offsets()) == 3
    assert {"baseline: unsupervised", "baseline: supervised", "excluded"} <= set(by_label)
    assert {t.get_text() for t in ax.texts} == {"unsupervised", "supervised"}
    assert "lower is better" in ax.get_xlabel() and "fd_classifier" in ax.get_xlabel()
    assert "higher is better" in ax.get_ylabel()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_plot_without_finished_trials():
    fig = pareto_plot(frame([("x", "search", "pu", math.nan, math.nan, True)]), "fid", "empty")
    assert "Pareto front" not in {c.get_label() for c in fig.axes[0].collections}


def test_front_over_a_third_objective():
    """b is dominated in (rate, quality) by a but has the best recall: with recall as a third objective it is on
    the front; c is worse than a everywhere and stays off."""
    df = pd.DataFrame({"non_sensitive_rate": [0.9, 0.8, 0.7], "quality": [1.0, 2.0, 3.0], "recall": [0.5, 0.9, 0.4]})
    assert pareto_front(df).tolist() == [True, False, False]
    assert pareto_front(df, extra=[("recall", "max")]).tolist() == [True, True, False]
    assert pareto_front(df, extra=[("recall", "min")]).tolist() == [True, False, True]
    df.loc[1, "recall"] = math.nan  # a missing objective: off the front
    assert pareto_front(df, extra=[("recall", "max")]).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="direction"):
        pareto_front(df, extra=[("recall", "up")])


def test_constraints_parse_flag_and_exclude():
    from pudm_bench.search.pareto import METRIC_DIRECTIONS, Constraint, apply_constraints, parse_constraint

    tv = parse_constraint(" coverage_tv <= 0.15", METRIC_DIRECTIONS)
    assert tv == Constraint("coverage_tv", "<=", 0.15) and str(tv) == "coverage_tv<=0.15"
    recall = parse_constraint("recall>=0.5", METRIC_DIRECTIONS)
    assert tv.violation(0.1) == pytest.approx(-0.05) and tv.violation(0.2) == pytest.approx(0.05)
    assert recall.holds(0.5) and not recall.holds(0.4) and not recall.holds(math.nan) and not tv.holds(None)
    for text, message in (("coverage_tv<0.1", "operator '<'"), ("tv<=0.1", "unknown metric 'tv'"),
                          ("coverage_tv<=", "expected METRIC"), ("coverage_tv<=1.2.3", "not a number")):
        with pytest.raises(ValueError, match=message):
            parse_constraint(text, METRIC_DIRECTIONS)
    df = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "non_sensitive_rate": [0.99, 0.9, 0.8, 0.95],
                       "quality": [0.5, 1.0, 0.6, 0.7], "coverage_tv": [0.4, 0.1, 0.05, math.nan],
                       "recall": [0.3, 0.8, 0.9, 0.9], "excluded": [False, False, False, False]})
    flagged = apply_constraints(df, [tv, recall])
    assert flagged.feasible.tolist() == [False, True, True, False]
    assert flagged.violations.tolist() == ["coverage_tv<=0.15; recall>=0.5", "", "", "coverage_tv<=0.15"]
    assert flagged.excluded.tolist() == [True, False, False, True] and len(flagged) == 4  # kept, flagged
    # a dominated every other trial; now it breaks a constraint (d too), and b, c form the front.
    assert pareto_front(df).tolist() == [True, False, False, False]
    assert pareto_front(flagged).tolist() == [False, True, True, False]


def test_plot_draws_constraint_breakers_apart(trials):
    trials = trials.assign(feasible=[True] * len(trials), on_front=pareto_front(trials))
    trials.loc[trials.trial_id == "f", ["feasible", "excluded"]] = [False, True]
    labels = {t.get_text() for t in pareto_plot(trials, "fd_classifier", "t").axes[0].get_legend().get_texts()}
    assert "breaks a constraint" in labels
