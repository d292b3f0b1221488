"""The searchers of a Tune run: ``BaselinesFirst`` (a sweep: the baselines, then Optuna's multi-objective
search) and ``CellSearcher`` (a benchmark: fixed cells, each warm start once its source finished)."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ray import tune
from ray.tune.search import Searcher

from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.settings import SweepSettings
from pudm_bench.search import distributions as ss
from pudm_bench.search.budgets import Budget
from pudm_bench.search.pareto import Constraint
from pudm_bench.search.space import BASELINE_METHODS, SearchSpace


class BaselinesFirst(Searcher):
    """Suggests the baselines (same budget, nothing searched) first, then delegates to Optuna. Baseline results are
    never told to Optuna, so the study holds only searched trials."""

    def __init__(self, inner: Searcher, baseline_configs: list[dict[str, Any]],
                 constraints: Sequence[Constraint] = ()) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.pending = list(baseline_configs)
        self.baseline_trials: set[str] = set()
        self.constraints = list(constraints)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.pending:
            self.baseline_trials.add(trial_id)
            return self.pending.pop(0)
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.baseline_trials:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id in self.baseline_trials:
            return
        values = [(result or {}).get(m) for m in self.inner.metric]
        if result and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            # A failed trial (NaN or missing objectives): told to Optuna as failed. Passed on, Optuna's tell() would
            # refuse the values and leave the trial RUNNING in the study.
            result, error = None, True
        if result and self.constraints:
            # Optuna's samplers read each trial's constraint values (<= 0: satisfied; Trial.set_constraint);
            # Ray's OptunaSearch passes objectives only, so they go on the study's trial here, before tell().
            ot_trial = getattr(self.inner, "_ot_trials", {}).get(trial_id)
            if ot_trial is not None:
                for constraint in self.constraints:
                    ot_trial.set_constraint(str(constraint), constraint.violation(result.get(constraint.metric)))
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    # One file holds both states: Tune syncs and restores the searcher's checkpoint file by its own name only, so a
    # companion file (Optuna's state beside ours) was missing after a driver crash and the resume started over.
    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.inner.save(str(Path(tmp) / "optuna.pkl"))
            inner = base64.b64encode((Path(tmp) / "optuna.pkl").read_bytes()).decode()
        Path(checkpoint_path).write_text(json.dumps({"pending": self.pending, "optuna": inner,
                                                     "baseline_trials": sorted(self.baseline_trials)}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "optuna.pkl").write_bytes(base64.b64decode(state["optuna"]))
            self.inner.restore(str(Path(tmp) / "optuna.pkl"))
        self.pending, self.baseline_trials = state["pending"], set(state["baseline_trials"])


class CellSearcher(Searcher):
    """The fixed trials of ``run_cells``, in order, each once its source has finished: a cell with ``"init"`` (a
    warm start: fine-tune from another cell's final model) is suggested only when that cell's trial completed, with
    ``init_from`` = that trial's final checkpoint; until then Tune is told to wait (``None``), so no trial slot sits
    idle waiting, and the other cells run meanwhile.

    A warm start whose source has finished goes before the cells still waiting to start from scratch: it costs a
    fraction of one, and a benchmark stopped part-way (``--resume`` later) has then measured every method of the
    seeds it reached, not the from-scratch half of them."""

    def __init__(self, cells: dict[str, dict[str, Any]], storage_dir: Path) -> None:
        super().__init__()
        self.cells = cells
        self.storage_dir = str(storage_dir)
        self.pending = list(cells)
        self.cell_of: dict[str, str] = {}  # trial id -> cell id
        self.finished: dict[str, str | None] = {}  # cell id -> its final checkpoint (None: the trial failed)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        ready = [c for c in self.pending if self.cells[c].get("init") in (None, *self.finished)]
        if not ready:
            return Searcher.FINISHED if not self.pending else None
        cell_id = next((c for c in ready if self.cells[c].get("init")), ready[0])
        source = self.cells[cell_id].get("init")
        self.pending.remove(cell_id)
        self.cell_of[trial_id] = cell_id
        return {"cell": cell_id, "init_from": self.finished.get(source) if source else None}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        cell_id = self.cell_of.get(trial_id)
        if cell_id is None:
            return
        final = Path(self.storage_dir) / f"trial-{trial_id}" / "final"
        ok = not error and result is not None and not result.get("failed") and (final / "pipeline").is_dir()
        self.finished[cell_id] = str(final) if ok else None

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"pending": self.pending, "cell_of": self.cell_of,
                                                     "finished": self.finished}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.pending, self.cell_of, self.finished = state["pending"], state["cell_of"], state["finished"]


def study_storage(settings: SweepSettings) -> str:
    """The Optuna storage URL of a sweep's study (named after the sweep): ``sqlite:///<run dir>/optuna.db``."""
    return f"sqlite:///{settings.run_dir / 'optuna.db'}"


def make_searcher(settings: SweepSettings, space: SearchSpace, budget: Budget) -> BaselinesFirst:
    """Seeded Optuna multi-objective search (non-sensitive rate up, quality down, plus ``--objective``s) behind the
    baselines; with ``--constraint``s, each trial's constraint values go to Optuna (``Trial.set_constraint``), whose
    samplers then prefer the feasible region (constrained TPE, NSGA-II's constrained domination, constrained GP)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if settings.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=settings.seed)
    elif settings.sampler == "nsga2":
        # A small population so a sweep of a few dozen trials still sees several generations.
        sampler = optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=max(4, min(20, settings.trials // 3)))
    else:
        sampler = optuna.samplers.GPSampler(seed=settings.seed)
    objectives = settings.objective_directions
    # The study lives in the sweep's folder (optuna.db), so optuna.load_study and optuna-dashboard read it directly.
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(study_storage(settings))
    optuna_search = OptunaSearch(metric=[m for m, _ in objectives], mode=[d for _, d in objectives], sampler=sampler,
                                 storage=storage, study_name=settings.name)
    baselines = [dict({k: None for k in space.params}, method=m, lr=budget.lr)
                 for m in (BASELINE_METHODS if settings.baselines else ())]
    return BaselinesFirst(optuna_search, baselines, settings.parsed_constraints)


def tune_param_space(space: SearchSpace) -> dict[str, Any]:
    """Search-space distributions (pudm_bench.search_space) -> Ray Tune domains (which OptunaSearch converts)."""
    out: dict[str, Any] = {}
    for name, dist in space.params.items():
        if isinstance(dist, ss.Uniform):
            out[name] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, ss.LogUniform):
            out[name] = tune.loguniform(dist.low, dist.high)
        elif isinstance(dist, ss.IntRange):
            out[name] = tune.qrandint(dist.low, dist.high, dist.step) if dist.step > 1 else tune.randint(dist.low, dist.high + 1)
        elif isinstance(dist, ss.Choice):
            out[name] = tune.choice(list(dist.values))
        else:  # the search-space loader admits only the kinds above
            raise ConfigError(f"search space {space.source}: unsupported distribution {dist!r}")
    return out
