"""The two-objective Pareto front of a sweep, its hypervolume, and a plot of both.

Every sweep trial has two objectives: ``non_sensitive_rate`` (share of generated images the referee calls normal;
higher is better) and a quality distance (``fid`` or ``fd_classifier``, in the frame's ``quality`` column; lower
is better). Numpy, pandas and matplotlib only: no MLflow (``tracking.py`` logs what this module computes).

A trial *dominates* another when it is at least as good on both objectives and strictly better on one; the front
is the set of trials no other trial dominates. Identical points do not dominate each other, so ties are all on the
front. Rows whose objectives are missing or not finite, and rows with ``excluded`` True (failed trials, trials
that break a constraint), are never on the front and never dominate anything.

A sweep may add objectives (``extra``: any metric with its direction, e.g. ``("recall", "max")``): the front is then
taken over all of them, while the hypervolume and the plot stay in the (rate, quality) plane. That plane's
hypervolume of the larger front equals the one of the two-objective front (a point no trial beats on rate and
quality together is on both), so hypervolumes stay comparable across sweeps.

Constraints (``--constraint "coverage_tv<=0.15"``): a trial that breaks one is kept and flagged (``feasible``
False, ``violations`` naming the broken ones) and excluded from the front.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

RATE = "non_sensitive_rate"
QUALITY = "quality"
DIRECTIONS = ("max", "min")
CONSTRAINT_OPERATORS = ("<=", ">=")
# Every metric a trial reports that a sweep may use as an objective or a constraint, and which way is better
# (computed in evaluate.py and diversity.py).
DIVERSITY_METRICS = ("coverage_tv", "coverage_kl", "coverage_missing", "precision", "recall",
                     "precision_inception", "recall_inception")
# Whether samples look like real images at all (evaluate.realism_metrics): scored on every budget.
REALISM_METRICS = ("realistic_share", "realistic_non_sensitive_rate")
# Every per-trial score a sweep or benchmark table carries beside the objectives.
SCORE_METRICS = (*REALISM_METRICS, *DIVERSITY_METRICS)
METRIC_DIRECTIONS = {
    RATE: "max", "fid": "min", "fd_per_class": "min", "fd_classifier": "min",
    "realistic_share": "max", "realistic_non_sensitive_rate": "max",
    "coverage_tv": "min", "coverage_kl": "min", "coverage_missing": "min",
    "precision": "max", "recall": "max", "precision_inception": "max", "recall_inception": "max",
}


# What a sweep keeps off its Pareto front unless --no-default-constraints: a trial that drops a normal class (one
# under half its share in U) or whose samples are mostly off the real-image manifold (evaluate.realism_metrics).
# Measured: each broken generator of sanity.py breaks one of them or scores below real images (docs/metrics.md).
DEFAULT_CONSTRAINTS = ("coverage_missing<=0", "realistic_share>=0.5")


def _objective(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df.columns:
        raise KeyError(f"objective column {column!r} is not in the frame (columns: {', '.join(map(str, df.columns))})")
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)


def _usable(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Rows that take part in the front: every objective finite and not ``excluded``."""
    finite = np.ones(len(df), dtype=bool)
    for column in columns:
        finite &= np.isfinite(_objective(df, column))
    if "excluded" in df.columns:
        finite &= ~df["excluded"].fillna(False).astype(bool).to_numpy()
    return finite


def pareto_front(df: pd.DataFrame, maximize: str = RATE, minimize: str = QUALITY,
                 extra: Sequence[tuple[str, str]] = ()) -> pd.Series:
    """Boolean Series (aligned with ``df``): True for the rows no other usable row dominates.

    ``maximize`` is the column to maximise, ``minimize`` the one to minimise, ``extra`` further (column,
    "max" | "min") objectives. Rows with a NaN/inf objective or ``excluded`` True are False and are ignored when
    judging the others. Exact ties are all on the front.
    """
    objectives = [(maximize, "max"), (minimize, "min"), *extra]
    for column, direction in objectives:
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {column!r}: direction {direction!r} is not one of {DIRECTIONS}")
    # Every objective as "higher is better".
    values = np.stack([_objective(df, c) * (1.0 if d == "max" else -1.0) for c, d in objectives], axis=1) \
        if len(df) else np.zeros((0, len(objectives)))
    usable = _usable(df, [c for c, _ in objectives])
    on_front = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(usable)
    if idx.size:
        v = values[idx]
        # dominated[i, j]: row j dominates row i (O(n^2) memory; sweeps have hundreds of trials, not millions).
        at_least = (v[None, :, :] >= v[:, None, :]).all(axis=2)
        strictly = (v[None, :, :] > v[:, None, :]).any(axis=2)
        on_front[idx] = ~(at_least & strictly).any(axis=1)
    return pd.Series(on_front, index=df.index, name="on_front")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound`` with op ``<=`` or ``>=``; a missing or non-finite value breaks it."""

    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def holds(self, value: float) -> bool:
        return self.violation(value) <= 0.0

    def violation(self, value: float) -> float:
        """Optuna's convention (``constraints_func``): <= 0 when the constraint holds, else by how much it is
        broken; 1.0 for a missing value (``inf`` would break Optuna's constrained samplers)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            return 1.0
        if not math.isfinite(value):
            return 1.0
        return value - self.bound if self.op == "<=" else self.bound - value


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>|==|=)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(text: str, metrics: Mapping[str, str]) -> Constraint:
    """``"coverage_tv<=0.15"`` -> Constraint; ``metrics``: the metrics a constraint may name (name -> direction).
    Raises ValueError with one line naming what is wrong and what is allowed."""
    match = _CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"--constraint {text!r} is invalid: expected METRIC<=NUMBER or METRIC>=NUMBER, e.g. "
                         "coverage_tv<=0.15")
    metric, op, number = match.groups()
    if metric not in metrics:
        raise ValueError(f"--constraint {text!r}: unknown metric {metric!r}; allowed: {', '.join(sorted(metrics))}")
    if op not in CONSTRAINT_OPERATORS:
        raise ValueError(f"--constraint {text!r}: operator {op!r} is not allowed; use <= or >=")
    try:
        bound = float(number)
    except ValueError:
        raise ValueError(f"--constraint {text!r}: {number!r} is not a number") from None
    if not math.isfinite(bound):
        raise ValueError(f"--constraint {text!r}: the bound must be finite")
    return Constraint(metric, op, bound)


def apply_constraints(df: pd.DataFrame, constraints: Sequence[Constraint]) -> pd.DataFrame:
    """A copy of ``df`` with ``feasible`` (every constraint holds), ``violations`` (the broken ones, "; "-joined)
    and ``excluded`` also True for infeasible rows, so that they stay in the table but leave the front."""
    out = df.copy()
    broken: list[list[str]] = [[] for _ in range(len(out))]
    for constraint in constraints:
        values = out[constraint.metric] if constraint.metric in out.columns else pd.Series(math.nan, index=out.index)
        for i, value in enumerate(values):
            if not constraint.holds(value):
                broken[i].append(str(constraint))
    out["feasible"] = [not b for b in broken]
    out["violations"] = ["; ".join(b) for b in broken]
    excluded = out["excluded"].fillna(False).astype(bool) if "excluded" in out.columns else False
    out["excluded"] = excluded | ~out["feasible"]
    return out


def hypervolume_2d(points_max_min: np.ndarray | Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by the points and bounded by ``reference``, for (maximised, minimised) pairs.

    ``points_max_min``: shape (n, 2), column 0 maximised (non-sensitive rate), column 1 minimised (quality).
    ``reference`` = (rate_ref, quality_ref): the worst corner; a point counts only where it is strictly better than
    the reference on both objectives. The area is the union of the rectangles [rate_ref, rate] x [quality,
    quality_ref], computed exactly by one sweep: sort by rate, best first, and add the horizontal strip each point
    adds below the best quality seen so far. Dominated points add nothing, so passing all trials or only the front
    gives the same value. Non-finite points are dropped; no points -> 0.0.

    The value depends on the reference, so two sweeps are comparable only against the same one; see
    ``default_reference``.
    """
    pts = np.asarray(points_max_min, dtype=float).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    ref_rate, ref_quality = (float(v) for v in reference)
    if pts.size == 0:
        return 0.0
    if not (math.isfinite(ref_rate) and math.isfinite(ref_quality)):
        raise ValueError(f"hypervolume reference must be finite, got {tuple(reference)!r}")
    pts = pts[(pts[:, 0] > ref_rate) & (pts[:, 1] < ref_quality)]
    order = np.lexsort((pts[:, 1], -pts[:, 0]))  # rate descending, then quality ascending
    area, best_quality = 0.0, ref_quality
    for rate, quality in pts[order]:
        if quality < best_quality:
            area += (rate - ref_rate) * (best_quality - quality)
            best_quality = quality
    return float(area)


def default_reference(df: pd.DataFrame, minimize: str = QUALITY) -> tuple[float, float]:
    """The hypervolume reference point of a sweep: ``(0.0, 1.1 * worst quality)``.

    rate_ref = 0.0: the worst possible non-sensitive rate, so every trial's rate counts in full.
    quality_ref = 1.1 x the largest finite quality among all usable trials, baselines included (rows with
    ``excluded`` True are left out), so the worst trial still adds a thin strip rather than nothing, and a single
    sweep's reference does not move when only its search trials change. Two sweeps must be compared against one
    reference: pass their frames concatenated. (nan for quality_ref when no trial has a finite quality; the
    hypervolume of no points is 0.0 whatever the reference.) Log the returned pair beside the hypervolume.
    """
    quality = _objective(df, minimize)
    usable = np.isfinite(quality)
    if "excluded" in df.columns:
        usable &= ~df["excluded"].fillna(False).astype(bool).to_numpy()
    if not usable.any():
        return (0.0, math.nan)
    worst = float(quality[usable].max())
    return (0.0, worst + 0.1 * abs(worst))  # = 1.1 * worst for the non-negative distances used here


@dataclass(frozen=True)
class FrontSummary:
    """A sweep's results, computed once (``summarize``) and used by the sweep's print-out, MLflow and the report.

    ``trials``: every trial with ``feasible``, ``violations``, ``excluded`` and ``on_front`` (True for the searched
    trials on the front of the searched trials; baselines are shown beside the front, never on it); ``front``: those
    trials, best non-sensitive rate first; ``hypervolume`` of the front against ``reference``.
    """

    trials: pd.DataFrame
    front: pd.DataFrame
    hypervolume: float
    reference: tuple[float, float]


def summarize(trials: pd.DataFrame, constraints: Sequence[Constraint] = (), extra: Sequence[tuple[str, str]] = (),
              reference: Sequence[float] | None = None) -> FrontSummary:
    """The front, hypervolume and reference point of one sweep's ``trials`` (one row per trial with ``role``,
    ``non_sensitive_rate`` and ``quality``; ``excluded`` marks rows without a usable result).

    The reference is ``default_reference`` of the trials *before* the constraints (a sweep's hypervolume does not
    move with the constraints it used) unless one is given (the one logged with the sweep, or a common one for a
    comparison). Trials that break a constraint stay in ``trials`` with ``feasible`` False and leave the front.
    """
    trials = trials.reset_index(drop=True)
    if reference is None:
        reference = default_reference(trials)
    reference = (float(reference[0]), float(reference[1]))
    trials = apply_constraints(trials, constraints)
    is_search = (trials["role"] != "baseline") if "role" in trials.columns else pd.Series(True, index=trials.index)
    trials["on_front"] = False
    if is_search.any():
        trials.loc[is_search, "on_front"] = pareto_front(trials[is_search], RATE, QUALITY, extra=extra)
    front = trials[trials["on_front"]].sort_values(RATE, ascending=False)
    hypervolume = (hypervolume_2d(front[[RATE, QUALITY]].to_numpy(dtype=float), reference)
                   if len(front) and math.isfinite(reference[1]) else 0.0)
    return FrontSummary(trials, front, hypervolume, reference)


def pareto_plot(df: pd.DataFrame, quality_name: str, title: str):
    """A matplotlib Figure (Agg canvas, no pyplot state): x = quality (lower is better), y = non-sensitive rate.

    Searched trials are dots; the front of the searched trials is highlighted (the scatter labelled ``"Pareto
    front"``) and joined by the staircase that bounds its dominated region; baselines (``role == "baseline"``) get
    their own markers and are labelled with ``method``; trials that break a constraint (``feasible`` False) are
    orange crosses, other excluded trials with finite objectives grey ones, and trials without objectives are not
    drawn (their count goes in the legend). With an ``on_front`` column (a front over more objectives), its rows
    are the ones highlighted; the staircase is the (rate, quality) front.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rate, quality = _objective(df, RATE), _objective(df, QUALITY)
    usable = _usable(df, [RATE, QUALITY])
    role = df["role"].astype(str).to_numpy() if "role" in df.columns else np.full(len(df), "search")
    is_search, is_baseline = role != "baseline", role == "baseline"

    search_rows = df[is_search]
    plane = np.zeros(len(df), dtype=bool)  # the front in the (rate, quality) plane: the staircase
    plane[np.flatnonzero(is_search)] = pareto_front(search_rows, RATE, QUALITY).to_numpy() if len(search_rows) else []
    # The front the table reports (over every objective of the sweep, when it has more than two) is highlighted.
    front = (df["on_front"].fillna(False).astype(bool).to_numpy() & is_search & usable) if "on_front" in df.columns \
        else plane

    rest = usable & is_search & ~front
    ax.scatter(quality[rest], rate[rest], s=25, color="tab:blue", alpha=0.6, label="searched trial")
    if plane.any():
        order = np.argsort(quality[plane])
        ax.step(quality[plane][order], rate[plane][order], where="post", color="tab:red", linewidth=1.2, alpha=0.8)
    if front.any():
        ax.scatter(quality[front], rate[front], s=60, color="tab:red", edgecolor="black", zorder=3,
                   label="Pareto front")
    markers = iter(["s", "D", "^", "v", "P", "*", "h"])
    methods = df["method"].astype(str).to_numpy() if "method" in df.columns else np.full(len(df), "baseline")
    for method in dict.fromkeys(methods[is_baseline & usable]):
        rows = is_baseline & usable & (methods == method)
        ax.scatter(quality[rows], rate[rows], s=70, marker=next(markers, "o"), color="tab:green", edgecolor="black",
                   zorder=3, label=f"baseline: {method}")
        for x, y in zip(quality[rows], rate[rows]):
            ax.annotate(method, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    finite = np.isfinite(rate) & np.isfinite(quality)
    infeasible = ~df["feasible"].fillna(True).astype(bool).to_numpy() if "feasible" in df.columns \
        else np.zeros(len(df), dtype=bool)
    greyed = finite & ~usable & ~infeasible
    if greyed.any():
        ax.scatter(quality[greyed], rate[greyed], s=30, marker="x", color="0.6", label="excluded")
    if (finite & infeasible).any():
        ax.scatter(quality[finite & infeasible], rate[finite & infeasible], s=40, marker="x", color="tab:orange",
                   label="breaks a constraint")
    missing = int((~finite).sum())
    if missing:
        ax.plot([], [], linestyle="none", label=f"{missing} trial(s) without objectives (not drawn)")
    ax.set_xlabel(f"{quality_name} (lower is better \u2190)")
    ax.set_ylabel("non-sensitive rate (higher is better \u2191)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return fig
