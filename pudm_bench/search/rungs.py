"""Multi-objective successive halving: which trials go on at a rung (the decision logic of ``--scheduler moasha``).

Successive halving (Jamieson & Talwalkar 2016; asynchronous: ASHA, Li et al. 2020) scores every trial at a few
*rungs* (fractions of its budget) and lets it go on only when it is among the best ``1/eta`` of the trials that
reached that rung so far; the others stop there, freeing their slot. With several objectives there is no single
"best": MOASHA (Schmucker et al., "Multi-objective Asynchronous Successive Halving", 2021) ranks the rung's trials
by non-dominated sorting instead. Here:

1. feasible trials (every constraint holds at the rung) before infeasible ones; infeasible ones by their total
   violation (Deb's constrained domination, as Optuna's constrained NSGA-II does);
2. feasible ones by non-dominated front (Deb et al. 2002, NSGA-II: front 1 = the rung's Pareto front, front 2 =
   the front once front 1 is removed, ...);
3. ties within a front by **crowding distance** (NSGA-II), largest first: a front's extremes (the trial that
   suppresses most, the one with the best quality) have infinite distance and always go on first, then the trials
   in its sparsest stretches. Chosen over MOASHA's epsilon-net because it is deterministic, standard, needs no
   epsilon, and on the handful of trials a rung holds in a sweep of tens it keeps both ends of the trade-off alive,
   which is what a Pareto sweep is for. A trial whose rung scores are missing or not finite ranks last.

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


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_fronts(points: dict[str, Sequence[float]]) -> list[list[str]]:
    """NSGA-II's fast non-dominated sort over minimised points: the keys by front, front 1 first (each front in
    the order of ``points``)."""
    keys = list(points)
    dominated_by: dict[str, list[str]] = {k: [] for k in keys}
    count = {k: 0 for k in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if _dominates(points[a], points[b]):
                dominated_by[a].append(b)
                count[b] += 1
            elif _dominates(points[b], points[a]):
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
    """The trials of one rung, best first (module docstring: feasible, then front, then crowding distance).

    ``entries``: trial id -> {"values": objective values (in ``directions``' order), "violation": total constraint
    violation (<= 0: feasible)}."""
    feasible, infeasible, unscored = {}, [], []
    for key, entry in entries.items():
        point = _minimised(entry["values"], directions)
        if point is None:
            unscored.append(key)
        elif entry.get("violation", 0.0) > 0:
            infeasible.append(key)
        else:
            feasible[key] = point
    order: list[str] = []
    for front in non_dominated_fronts(feasible):
        crowd = crowding_distances({k: feasible[k] for k in front})
        order.extend(sorted(front, key=lambda k: -crowd[k]))  # stable: equal distances keep arrival order
    order.extend(sorted(infeasible, key=lambda k: entries[k]["violation"]))
    return order + unscored


def total_violation(constraints: Sequence[Constraint], metrics: dict[str, Any]) -> float:
    """Sum of the broken constraints' violations (``Constraint.violation``: <= 0 when one holds)."""
    return float(sum(max(0.0, c.violation(metrics.get(c.metric))) for c in constraints))


@dataclass
class RungTable:
    """What each rung has recorded and decided: rung index -> trial id -> {"values", "violation", "step",
    "arrival" (0 for the first trial at the rung), "decision"}. ``decide`` records a trial's rung scores and returns whether it goes on."""

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
