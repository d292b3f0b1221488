"""Multi-objective successive halving: which trials go on at a rung (the decision logic of ``--scheduler moasha``).

Successive halving (Jamieson & Talwalkar 2016; asynchronous: ASHA, Li et al. 2020) scores every trial at a few
*rungs* (fractions of its budget) and lets it go on only when it is among the best ``1/eta`` of the trials that
reached that rung so far; the others stop there, freeing their slot. With several objectives there is no single
"best": MOASHA (Schmucker et al., "Multi-objective Asynchronous Successive Halving", 2021) ranks the rung's trials
by non-dominated sorting instead. Here:

1. feasible trials (every constraint holds at the rung) before infeasible ones: the issue's rule, as in Deb's
   constrained domination (Optuna's constrained NSGA-II);
2. each of the two groups by non-dominated front (Deb et al. 2002, NSGA-II: front 1 = the group's Pareto front,
   front 2 = the front once front 1 is removed, ...). Infeasible trials are sorted by their objectives too, not by
   their total violation as Deb's rule would: on a rung's small sample set early models break the default
   constraints almost always (measured, docs/performance.md item 10: every trial at step 67 of 600 missed a class
   on 100 samples, 5 of 6 met every constraint at the end), so the violation ranked noise while the quality score
   ranked closer to the final order (Spearman 0.94 on that seed, 0.54 over three); the violation breaks ties
   within a front;
3. ties within a front by **crowding distance** (NSGA-II), largest first: a front's extremes (the trial that
   suppresses most, the one with the best quality) have infinite distance and always go on first, then the trials
   in its sparsest stretches. Chosen over MOASHA's epsilon-net because it is deterministic, standard, needs no
   epsilon, and on the handful of trials a rung holds in a sweep of tens it keeps both ends of the trade-off alive,
   which is what a Pareto sweep is for. A trial whose rung scores are missing or not finite ranks last.

Dominance at a rung is **noise-aware** for an objective that comes with a 95% interval (the rate's Wilson interval,
``<metric>_ci_low``/``_ci_high``): two values whose intervals overlap count as equal on it. On 100 rung samples
the rates of early models sit at 0.95-1.00 (intervals of about +-0.04), and a one-sample difference (0.99 vs 1.00)
would otherwise decide who stops (it did, item 10). Objectives without an interval compare exactly.

A trial arriving at rung ``r`` goes on iff its position in that order, among the trials recorded at ``r``
(itself included), is below ``ceil(n / eta)``: the first trial at a rung always goes on, and a decision is never
revisited (asynchronous: a later, better trial does not stop one already promoted). Pure Python: the Ray Tune
scheduler (``orchestration.scheduler``) records and asks; the tables here are what it saves for ``--resume``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import Constraint

DEFAULT_RUNGS = "1/9,1/3"
DEFAULT_REDUCTION_FACTOR = 3
RUNG_PREFIX = "rung_"  # a rung report's scores: rung_<metric>, beside "phase": "rung", "rung" and "step"
SCHEDULERS = ("fifo", "moasha")


def parse_rungs(text: str, flag: str = "--rungs") -> tuple[float, ...]:
    """``"1/9,1/3"`` -> (0.111.., 0.333..): fractions of a trial's steps, increasing, each in (0, 1); the end of
    training is always the last rung (the full evaluation)."""
    try:
        values = tuple(float(Fraction(part.strip())) for part in str(text).split(",") if part.strip())
    except (ValueError, ZeroDivisionError):
        values = ()
    if not values or any(not 0 < v < 1 for v in values) or list(values) != sorted(set(values)):
        raise ConfigError(f"{flag}={text!r} is invalid: expected increasing fractions of the training steps in (0, 1), "
                          f"e.g. {DEFAULT_RUNGS}")
    return values


def rung_steps(fractions: Sequence[float], steps: int) -> tuple[int, ...]:
    """The training steps at which a trial of ``steps`` steps is scored: round(f x steps), distinct, in [1, steps)."""
    out = sorted({min(steps - 1, max(1, round(f * steps))) for f in fractions}) if steps > 1 else []
    return tuple(out)


def _minimised(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...] | None:
    """Values as quantities to minimise (max objectives negated); None when one is missing or not finite."""
    out = []
    for value, direction in zip(values, directions):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
        out.append(-float(value) if direction == "max" else float(value))
    return tuple(out)


Interval = Sequence[float] | None  # (low, high) of one objective's value, as measured (not minimised)


def _minimised_intervals(intervals: Sequence[Interval] | None, directions: Sequence[str]) -> tuple[Interval, ...]:
    """Each objective's interval in the minimised space (a max objective's (low, high) -> (-high, -low)); None where
    an objective has none or it is not finite."""
    out: list[Interval] = []
    for i, direction in enumerate(directions):
        interval = intervals[i] if intervals is not None and i < len(intervals) else None
        bounds = _minimised(list(interval), [direction, direction]) if interval is not None else None
        out.append(None if bounds is None else tuple(sorted(bounds)))
    return tuple(out)


def _compare(a: float, b: float, ia: Interval, ib: Interval) -> int:
    """-1 when ``a`` is better (smaller) than ``b`` beyond noise, 1 when worse, 0 when equal: exact comparison, or
    overlapping intervals when both values have one."""
    if ia is not None and ib is not None and ia[0] <= ib[1] and ib[0] <= ia[1]:
        return 0
    return (a > b) - (a < b)


def _dominates(a: Sequence[float], b: Sequence[float], ia: Sequence[Interval] = (),
               ib: Sequence[Interval] = ()) -> bool:
    """Pareto dominance of minimised points, with ties within noise where both have an objective's interval."""
    signs = [_compare(x, y, ia[m] if m < len(ia) else None, ib[m] if m < len(ib) else None)
             for m, (x, y) in enumerate(zip(a, b))]
    return all(s <= 0 for s in signs) and any(s < 0 for s in signs)


def non_dominated_fronts(points: dict[str, Sequence[float]],
                         intervals: dict[str, Sequence[Interval]] | None = None) -> list[list[str]]:
    """NSGA-II's fast non-dominated sort over minimised points: the keys by front, front 1 first (each front in
    the order of ``points``). ``intervals``: per key, each objective's minimised interval (or None) for dominance
    within noise; ties within noise are not transitive, so should dominance ever cycle, the keys left in the cycle
    form the last front rather than being dropped."""
    keys = list(points)
    spans = intervals or {}
    dominated_by: dict[str, list[str]] = {k: [] for k in keys}
    count = {k: 0 for k in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if _dominates(points[a], points[b], spans.get(a, ()), spans.get(b, ())):
                dominated_by[a].append(b)
                count[b] += 1
            elif _dominates(points[b], points[a], spans.get(b, ()), spans.get(a, ())):
                dominated_by[b].append(a)
                count[a] += 1
    fronts, current = [], [k for k in keys if count[k] == 0]
    while current:
        fronts.append(current)
        following = []
        for a in current:
            for b in dominated_by[a]:
                count[b] -= 1
                if count[b] == 0:
                    following.append(b)
        current = [k for k in keys if k in set(following)]
    placed = {k for front in fronts for k in front}
    if len(placed) < len(keys):
        fronts.append([k for k in keys if k not in placed])
    return fronts


def crowding_distances(points: dict[str, Sequence[float]]) -> dict[str, float]:
    """NSGA-II's crowding distance within one front: per objective, the extremes get infinity and the others the
    gap between their neighbours divided by the objective's range; summed over objectives."""
    keys = list(points)
    distance = {k: 0.0 for k in keys}
    if len(keys) <= 2:
        return {k: math.inf for k in keys}
    for m in range(len(points[keys[0]])):
        ordered = sorted(keys, key=lambda k: points[k][m])
        low, high = points[ordered[0]][m], points[ordered[-1]][m]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for i in range(1, len(ordered) - 1):
            distance[ordered[i]] += (points[ordered[i + 1]][m] - points[ordered[i - 1]][m]) / (high - low)
    return distance


def rank_trials(entries: dict[str, dict[str, Any]], directions: Sequence[str]) -> list[str]:
    """The trials of one rung, best first (module docstring: feasible group first; in each group by front, then
    total violation, then crowding distance).

    ``entries``: trial id -> {"values": objective values (in ``directions``' order), "violation": total constraint
    violation (<= 0: feasible), optionally "intervals": each objective's (low, high) or None}."""
    points, intervals, unscored = {}, {}, []
    for key, entry in entries.items():
        point = _minimised(entry["values"], directions)
        if point is None:
            unscored.append(key)
        else:
            points[key] = point
            intervals[key] = _minimised_intervals(entry.get("intervals"), directions)

    def violation(key: str) -> float:
        return max(0.0, float(entries[key].get("violation") or 0.0))

    order: list[str] = []
    for group in ([k for k in points if violation(k) == 0], [k for k in points if violation(k) > 0]):
        for front in non_dominated_fronts({k: points[k] for k in group}, intervals):
            crowd = crowding_distances({k: points[k] for k in front})
            order.extend(sorted(front, key=lambda k: (violation(k), -crowd[k])))  # stable: then arrival order
    return order + unscored


def total_violation(constraints: Sequence[Constraint], metrics: dict[str, Any]) -> float:
    """Sum of the broken constraints' violations (``Constraint.violation``: <= 0 when one holds)."""
    return float(sum(max(0.0, c.violation(metrics.get(c.metric))) for c in constraints))


def _interval(metrics: dict[str, Any], metric: str) -> list[float] | None:
    """The 95% interval a rung reports for ``metric`` (``<metric>_ci_low``, ``<metric>_ci_high``), if any."""
    low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if _minimised([low, high], ["min", "min"]) is None:
        return None
    return [float(low), float(high)]


@dataclass
class RungTable:
    """What each rung has recorded and decided: rung index -> trial id -> {"values", "intervals", "violation",
    "step", "arrival" (0 for the first trial at the rung), "decision"}. ``decide`` records a trial's rung scores and returns whether it goes on."""

    objectives: tuple[tuple[str, str], ...]  # (metric, "max"|"min"), the sweep's objectives in its order
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR
    constraints: tuple[Constraint, ...] = ()
    rungs: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.reduction_factor) != self.reduction_factor or self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor={self.reduction_factor} is invalid: expected an integer >= 2")

    def decide(self, trial_id: str, rung: int, metrics: dict[str, Any], step: int | None = None) -> bool:
        """Record ``trial_id``'s scores at ``rung`` (``metrics``: objective and constraint metrics by name) and
        return True when it goes on. A trial already decided at this rung gets the same answer again (a resumed
        trial that passes the rung a second time)."""
        table = self.rungs.setdefault(int(rung), {})
        if trial_id in table:
            return table[trial_id]["decision"] == "continue"
        table[trial_id] = {"values": [metrics.get(m) for m, _ in self.objectives],
                           "intervals": [_interval(metrics, m) for m, _ in self.objectives],
                           "violation": total_violation(self.constraints, metrics), "step": step,
                           "arrival": len(table)}
        order = rank_trials(table, [d for _, d in self.objectives])
        keep = math.ceil(len(table) / self.reduction_factor)
        go_on = order.index(trial_id) < keep
        table[trial_id]["decision"] = "continue" if go_on else "stop"
        return go_on

    def stopped_at(self, trial_id: str) -> int | None:
        for rung in sorted(self.rungs):
            if self.rungs[rung].get(trial_id, {}).get("decision") == "stop":
                return rung
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"objectives": [list(o) for o in self.objectives], "reduction_factor": self.reduction_factor,
                "rungs": {str(k): v for k, v in self.rungs.items()}}

    def load(self, state: dict[str, Any]) -> None:
        """Take the recorded rungs of a saved table (its objectives must be this table's: settings changes are
        refused by the sweep's resume check before this)."""
        self.rungs = {int(k): dict(v) for k, v in state.get("rungs", {}).items()}
