"""The searchers of a Tune run: ``BaselinesFirst`` (a sweep: the baselines, then Optuna's multi-objective
search) and ``CellSearcher`` (a benchmark: fixed cells, each warm start once its source finished)."""

from __future__ import annotations

import base64
import json
import math
import pickle
from pathlib import Path
from typing import Any, Sequence

from ray.tune.search import Searcher

from pudm_bench.orchestration.settings import SweepSettings
from pudm_bench.search.budgets import Budget
from pudm_bench.search.pareto import Constraint
from pudm_bench.search.rungs import RUNG_PREFIX
from pudm_bench.search.space import BASELINE_METHODS, SearchSpace


class StudySearcher(Searcher):
    """Optuna's ask-and-tell interface behind Tune's ``Searcher``: a suggestion is ``study.ask(distributions)`` (the
    search space's own distributions, ``Distribution.to_optuna``), a result is ``study.tell(values)`` with each
    constraint's value set on the trial first (``Trial.set_constraint``; <= 0: satisfied), which Optuna's
    constrained samplers read (constrained TPE, NSGA-II's constrained domination, constrained GP).

    The study lives in RDB storage (the sweep's ``optuna.db``), so ``optuna.load_study`` and optuna-dashboard read
    it while the sweep runs. What Tune checkpoints is only what the storage lacks: which Tune trial is which study
    trial, and the sampler (its random state: a resumed sweep continues the sequence instead of repeating it)."""

    def __init__(self, study: Any, storage: Any, distributions: dict[str, Any], objectives: Sequence[tuple[str, str]],
                 constraints: Sequence[Constraint] = ()) -> None:
        super().__init__(metric=[m for m, _ in objectives], mode=[d for _, d in objectives])
        self.study, self.storage = study, storage  # the storage: to find a resumed trial by its number
        self.distributions = dict(distributions)
        self.constraints = list(constraints)
        self.trials: dict[str, Any] = {}  # Tune trial id -> optuna.trial.Trial, for the trials not yet told

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the study's distributions; Tune's param_space stays empty

    def suggest(self, trial_id: str) -> dict[str, Any]:
        trial = self.study.ask(self.distributions)
        self.trials[trial_id] = trial
        return dict(trial.params)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        import optuna

        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return
        if not error and result and result.get("phase") == "rung":
            # Stopped at a rung by successive halving: told PRUNED, not its rung scores as final values (scores of a
            # part-trained model on a small sample would pose as a finished trial's). TPE puts pruned trials after
            # every completed one when it splits good from bad, so it learns to avoid them; NSGA-II and GP skip them.
            trial.set_user_attr("stopped_at_rung", int(result["rung"]))
            trial.set_user_attr("rung_values", [result.get(f"{RUNG_PREFIX}{m}") for m in self.metric])
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
            return
        values = [(result or {}).get(m) for m in self.metric]
        if error or not result or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            # A failed trial (an error, NaN or missing objectives) is told as failed: tell() would refuse the values
            # and leave the trial RUNNING in the study.
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return
        for constraint in self.constraints:
            trial.set_constraint(str(constraint), constraint.violation(result.get(constraint.metric)))
        self.study.tell(trial, [float(v) for v in values], skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def get_state(self) -> dict[str, Any]:
        return {"numbers": {tid: trial.number for tid, trial in self.trials.items()},
                "sampler": base64.b64encode(pickle.dumps(self.study.sampler)).decode()}

    def set_state(self, state: dict[str, Any]) -> None:
        import optuna

        self.study.sampler = pickle.loads(base64.b64decode(state["sampler"]))
        # The trials Tune will still complete, rebuilt through the storage's public lookups (name -> study id,
        # number -> trial id).
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self.trials = {tid: optuna.trial.Trial(self.study,
                                               self.storage.get_trial_id_from_study_id_trial_number(study_id, number))
                       for tid, number in state["numbers"].items()}
        # A trial asked after this state was saved is in the study (ask writes to the storage at once) but Tune
        # runs it again under a new id: it will never be told, so it is closed as failed, not left RUNNING.
        kept = set(state["numbers"].values())
        for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number not in kept:
                self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


class BaselinesFirst(Searcher):
    """Suggests the baselines (same budget, nothing searched) first, then delegates to the study. Baseline results
    are never told to Optuna, so the study holds only searched trials.

    With ``warm_from`` (``--warm-start baseline``: "unsupervised"), the searched trials fine-tune that baseline's
    final model: none is suggested (Tune waits, ``None``) until the baseline's trial completed, and each gets
    ``init_from`` = its final checkpoint (``None`` if it failed, which the trial then reports as its failure)."""

    def __init__(self, inner: StudySearcher, baseline_configs: list[dict[str, Any]], warm_from: str | None = None,
                 storage_dir: Path | None = None) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.pending = list(baseline_configs)
        self.baseline_trials: set[str] = set()
        self.warm_from, self.storage_dir = warm_from, str(storage_dir) if storage_dir else None
        self.source: dict[str, Any] = {}  # the warm start's source: {"trial_id", "final" (a path, or None: failed)}

    @property
    def constraints(self) -> list[Constraint]:
        return self.inner.constraints

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.pending:
            self.baseline_trials.add(trial_id)
            config = self.pending.pop(0)
            if self.warm_from and config.get("method") == self.warm_from:
                self.source = {"trial_id": trial_id}
            return config
        if self.warm_from is None:
            return self.inner.suggest(trial_id)
        if "final" not in self.source:
            return None  # the baseline it fine-tunes is still training
        return {**self.inner.suggest(trial_id), "warm_start": self.warm_from, "init_from": self.source["final"]}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id not in self.baseline_trials:
            self.inner.on_trial_complete(trial_id, result=result, error=error)
        elif trial_id == self.source.get("trial_id"):
            final = Path(self.storage_dir or ".") / f"trial-{trial_id}" / "final"
            ok = not error and result is not None and not result.get("failed") and (final / "pipeline").is_dir()
            self.source["final"] = str(final) if ok else None

    # One file holds both states: Tune syncs and restores the searcher's checkpoint file by its own name only.
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"pending": self.pending, "optuna": self.inner.get_state(),
                                                     "baseline_trials": sorted(self.baseline_trials),
                                                     "source": self.source}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.inner.set_state(state["optuna"])
        self.pending, self.baseline_trials = state["pending"], set(state["baseline_trials"])
        self.source = state.get("source", {})


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
    baselines, over the search space's distributions; with ``--constraint``s, each trial's constraint values go to
    Optuna, whose samplers then prefer the feasible region. The study is ``<run dir>/optuna.db``, named after the
    sweep (created, or loaded on ``--resume``)."""
    import optuna

    if settings.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=settings.seed)
    elif settings.sampler == "nsga2":
        # A small population so a sweep of a few dozen trials still sees several generations.
        sampler = optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=max(4, min(20, settings.trials // 3)))
    else:
        sampler = optuna.samplers.GPSampler(seed=settings.seed)
    objectives = settings.objective_directions
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(study_storage(settings))
    study = optuna.create_study(storage=storage, study_name=settings.name, sampler=sampler,
                                directions=["maximize" if d == "max" else "minimize" for _, d in objectives],
                                load_if_exists=True)
    distributions = {name: dist.to_optuna() for name, dist in space.params.items()}
    baselines = [dict({k: None for k in space.params}, method=m, lr=budget.lr)
                 for m in (BASELINE_METHODS if settings.baselines else ())]
    return BaselinesFirst(StudySearcher(study, storage, distributions, objectives, settings.parsed_constraints), baselines,
                          warm_from="unsupervised" if settings.warm_start == "baseline" else None,
                          storage_dir=settings.run_dir / "train")
