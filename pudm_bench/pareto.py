"""The two-objective Pareto front of a sweep, its hypervolume, and a plot of both.

Every sweep trial has two objectives: ``non_sensitive_rate`` (share of generated images the referee calls normal;
higher is better) and a quality distance (``fid`` or ``fd_classifier``, in the frame's ``quality`` column; lower
is better). Numpy, pandas and matplotlib only: no MLflow (``tracking.py`` logs what this module computes).

A trial *dominates* another when it is at least as good on both objectives and strictly better on one; the front
is the set of trials no other trial dominates. Identical points do not dominate each other, so ties are all on the
front. Rows whose objectives are missing or not finite, and rows with ``excluded`` True (failed trials), are
never on the front and never dominate anything.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

RATE = "non_sensitive_rate"
QUALITY = "quality"


def _objective(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df.columns:
        raise KeyError(f"objective column {column!r} is not in the frame (columns: {', '.join(map(str, df.columns))})")
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)


def _usable(df: pd.DataFrame, maximize: str, minimize: str) -> np.ndarray:
    """Rows that take part in the front: both objectives finite and not ``excluded``."""
    finite = np.isfinite(_objective(df, maximize)) & np.isfinite(_objective(df, minimize))
    if "excluded" in df.columns:
        finite &= ~df["excluded"].fillna(False).astype(bool).to_numpy()
    return finite


def pareto_front(df: pd.DataFrame, maximize: str = RATE, minimize: str = QUALITY) -> pd.Series:
    """Boolean Series (aligned with ``df``): True for the rows no other usable row dominates.

    ``maximize`` is the column to maximise, ``minimize`` the one to minimise. Rows with a NaN/inf objective or
    ``excluded`` True are False and are ignored when judging the others. Exact ties are all on the front.
    """
    up, down = _objective(df, maximize), _objective(df, minimize)
    usable = _usable(df, maximize, minimize)
    on_front = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(usable)
    if idx.size:
        u, d = up[idx], down[idx]
        # dominated[i, j]: row j dominates row i (O(n^2) memory; sweeps have hundreds of trials, not millions).
        at_least = (u[None, :] >= u[:, None]) & (d[None, :] <= d[:, None])
        strictly = (u[None, :] > u[:, None]) | (d[None, :] < d[:, None])
        on_front[idx] = ~(at_least & strictly).any(axis=1)
    return pd.Series(on_front, index=df.index, name="on_front")


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


def pareto_plot(df: pd.DataFrame, quality_name: str, title: str):
    """A matplotlib Figure (Agg canvas, no pyplot state): x = quality (lower is better), y = non-sensitive rate.

    Searched trials are dots; the front of the searched trials is highlighted (the scatter labelled ``"Pareto
    front"``) and joined by the staircase that bounds its dominated region; baselines (``role == "baseline"``) get
    their own markers and are labelled with ``method``; excluded trials with finite objectives are drawn as grey
    crosses, and trials without objectives are not drawn (their count goes in the legend).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rate, quality = _objective(df, RATE), _objective(df, QUALITY)
    usable = _usable(df, RATE, QUALITY)
    role = df["role"].astype(str).to_numpy() if "role" in df.columns else np.full(len(df), "search")
    is_search, is_baseline = role != "baseline", role == "baseline"

    search_rows = df[is_search]
    front = np.zeros(len(df), dtype=bool)
    front[np.flatnonzero(is_search)] = pareto_front(search_rows, RATE, QUALITY).to_numpy() if len(search_rows) else []

    rest = usable & is_search & ~front
    ax.scatter(quality[rest], rate[rest], s=25, color="tab:blue", alpha=0.6, label="searched trial")
    if front.any():
        order = np.argsort(quality[front])
        ax.step(quality[front][order], rate[front][order], where="post", color="tab:red", linewidth=1.2, alpha=0.8)
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
    greyed = finite & ~usable
    if greyed.any():
        ax.scatter(quality[greyed], rate[greyed], s=30, marker="x", color="0.6", label="excluded")
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
