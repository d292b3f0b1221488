"""What a sweep and a benchmark both do around their Tune run, written once: the parent MLflow run with the state
file, the Tuner created or restored, the trials read back from Tune's public ``ResultGrid``, and
the benchmark's fixed cells (``run_cells``)."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ray import tune

from pudm_bench import __version__, tracking
from pudm_bench.orchestration.callbacks import TrackingCallback, set_active_tracking_uri
from pudm_bench.orchestration.searchers import CellSearcher
from pudm_bench.orchestration.settings import TRIAL_DRIVER_CPU, ExecutionSettings, saved_state, write_state
from pudm_bench.orchestration.trial import run_cell_trial


def start_parent_run(settings: ExecutionSettings, tags: dict[str, Any],
                     **state: Any) -> tuple[tracking.SweepTracker, str, ExecutionSettings]:
    """The parent MLflow run of a sweep or benchmark (the earlier one on ``--resume``: its id is in the state file)
    and the state file itself, written with the tracking URI redacted. Returns the tracker, the parent run's id and
    the settings as written (what trials receive). Every parent run is tagged with the checkout's commit and the
    package version."""
    tracker = tracking.SweepTracker(settings.mlflow_uri, settings.experiment)
    parent_id = tracker.start_sweep(
        settings.name, kind=settings.KIND, tags={"pudm.git_commit": git_commit(), "pudm.version": __version__, **tags},
        params={k: v for k, v in asdict(settings).items() if k != "mlflow_uri"},
        resume_run_id=saved_state(settings).get("parent_run_id"))
    redacted = write_state(settings, parent_run_id=parent_id, **state)
    return tracker, parent_id, redacted


def fit_tuner(trainable: Any, run_dir: Path, *, resume: bool, tune_config: Callable[[], tune.TuneConfig],
              callback: TrackingCallback, mlflow_uri: str, max_failures: int, verbose: int,
              param_space: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Create the run's Tuner in ``<run_dir>/tune``, or restore it there on ``--resume`` (errored trials run
    again), fit it, and return one record per trial (``trial_records``)."""
    tune_path = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_errored=True,
                                   **({"param_space": param_space} if param_space is not None else {}))
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune_config(),
            run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=verbose, callbacks=[callback],
                                      # A trial whose own process died (a lost node) runs again and resumes from
                                      # its last Train checkpoint.
                                      failure_config=tune.FailureConfig(max_failures=max_failures)))
    set_active_tracking_uri(mlflow_uri)  # what a restored TrackingCallback logs to (it never pickles the URI)
    return trial_records(tuner.fit())


def trial_records(grid: tune.ResultGrid) -> list[dict[str, Any]]:
    """Tune's results as plain records, read through the public ``ResultGrid`` API: trial_id, config, result (the
    last reported metrics), status (TERMINATED, FAILED when the trial reported a failure, ERROR when it raised,
    STOPPED when successive halving stopped it at a rung) and error (one line or None)."""
    records = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        failed = metrics.get("failed")
        error = failed or (f"{type(result.error).__name__}: {result.error}" if result.error else None)
        stopped = metrics.get("phase") == "rung"  # its last report was a rung's: the scheduler stopped it there
        status = "FAILED" if failed else "ERROR" if result.error else "STOPPED" if stopped else "TERMINATED"
        records.append({"trial_id": trial_id, "config": dict(result.config or {}), "result": metrics,
                        "status": status, "error": error})
    return records


def _trial_id_from_path(path: str | None) -> str:
    """A trial that never reported has no ``trial_id`` metric; its folder is ``<trainable>_<trial id>_<n>_...``."""
    parts = Path(path or "").name.split("_")
    ids = [p for p in parts if len(p) >= 8 and all(c in "0123456789abcdef" for c in p)]
    return ids[0] if ids else Path(path or "unknown").name


def run_cells(cells: dict[str, dict[str, Any]], settings: ExecutionSettings, *, parent_run_id: str,
              gpus_per_worker: float, resume: bool = False, verbose: int = 1) -> list[dict[str, Any]]:
    """Run a fixed set of trials (no search) through the sweep's machinery: one Tune trial per cell, each a
    ``TorchTrainer`` of ``workers_per_trial`` workers, ``max_concurrent`` at once, one MLflow child run per trial.

    ``cells``: id -> {"train_config": TrainConfig.to_dict(), "eval_config": asdict(EvalConfig), "params": what the
    child run logs as params, "tags": its tags, optionally "init": the cell it fine-tunes from}. Ray must be
    started (``cluster.start_ray``). Returns ``trial_records`` with the cell id added as "cell".
    """
    run_dir = settings.run_dir
    trainable = tune.with_resources(
        tune.with_parameters(run_cell_trial, cells=cells, storage_dir=str(run_dir / "train"),
                             workers=settings.workers_per_trial, cpus_per_worker=settings.cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, max_failures=settings.max_failures,
                             placement_timeout=settings.placement_timeout),
        {"cpu": TRIAL_DRIVER_CPU})
    records = fit_tuner(
        trainable, run_dir, resume=resume,
        tune_config=lambda: tune.TuneConfig(search_alg=CellSearcher(cells, run_dir / "train"), num_samples=len(cells),
                                            max_concurrent_trials=settings.max_concurrent, reuse_actors=True),
        callback=TrackingCallback(settings.mlflow_uri, settings.experiment, settings.name, parent_run_id,
                                  cells=cells, kind=settings.KIND),
        mlflow_uri=settings.mlflow_uri, max_failures=settings.max_failures, verbose=verbose)
    return [{**record, "cell": record["config"]["cell"]} for record in records]


def git_commit() -> str:
    """The checkout's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
