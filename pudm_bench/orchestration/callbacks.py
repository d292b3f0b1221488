"""Driver-side MLflow logging of a Tune run, as a Tune callback (``tracking.SweepTracker`` does the writing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from pudm_bench import tracking
from pudm_bench.search.space import BASELINE_METHODS
from pudm_bench.tracking import uris


class TrackingCallback(tune.Callback):
    """Driver-side MLflow logging: one child run per trial, keyed by trial id, so a resumed trial reuses its run.

    Tune pickles callbacks with its experiment state: the tracker (an MLflow client) is created lazily, and the
    tracking URI, which may hold a password, is left out of the pickle: a restored callback uses the URI the
    resuming driver was given (``tracking.uris.ACTIVE_URI``, set before ``fit``).
    """

    def __init__(self, mlflow_uri: str, experiment: str, sweep_name: str, parent_run_id: str,
                 searched_method: str | None = None, cells: dict[str, dict[str, Any]] | None = None,
                 kind: str = "sweep", fixed: dict[str, Any] | None = None) -> None:
        self.uri, self.experiment, self.parent, self.kind = mlflow_uri, experiment, parent_run_id, kind
        self.sweep_name, self.searched_method = sweep_name, searched_method
        self.cells = cells or {}  # fixed trials (run_cells): config {"cell": id} -> the cell's params and tags
        self.fixed = dict(fixed or {})  # the search space's fixed values: logged with every searched trial
        self._tracker = None

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = tracking.SweepTracker(self.tracking_uri(), self.experiment)
            self._tracker.start_sweep(self.sweep_name, tags={}, params={}, resume_run_id=self.parent, kind=self.kind)
        return self._tracker

    def tracking_uri(self) -> str:
        uri = self.uri or uris.ACTIVE_URI
        if uri is None:
            raise RuntimeError("TrackingCallback restored from a pickle while tracking.uris.ACTIVE_URI is unset")
        return uri

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None, "uri": None}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if "cell" in trial.config:
            cell = self.cells[trial.config["cell"]]
            self.tracker.trial_run(trial.trial_id, params=cell["params"],
                                   tags={**cell["tags"], "pudm.cell": trial.config["cell"]})
            return
        params = trial_params(trial.config)
        role = "baseline" if params.get("method") in BASELINE_METHODS else "search"
        if role == "search":
            params = {**self.fixed, **params}
        params.setdefault("method", self.searched_method)
        self.tracker.trial_run(trial.trial_id, params=params, tags={"pudm.role": role})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        numeric = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "rung", "training_iteration", "timestamp", "time_this_iter_s", "pid")}
        # Training curves and rung scores (rung_<metric>) by training step; the final scores at step 0.
        step = int(result["step"]) if result.get("phase") in ("train", "rung") and "step" in result else None
        self.tracker.log_trial_metrics(trial.trial_id, numeric, step)
        if result.get("failed"):
            self.tracker.end_trial(trial.trial_id, "FAILED", result["failed"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("failed"):
            return
        if result.get("phase") == "rung":
            self.tracker.tag_trial(trial.trial_id, {"pudm.stopped_at_rung": int(result["rung"]),
                                                    "pudm.stopped_at_step": int(result.get("step", 0))})
        path = result.get("checkpoint_path")
        if path and Path(path).is_dir():
            files = [p for p in Path(path).iterdir() if p.name in ("samples.png", "eval.json", "train_config.json")]
            self.tracker.log_trial_artifacts(trial.trial_id, files)
            scores = json.loads((Path(path) / "eval.json").read_text()) if (Path(path) / "eval.json").is_file() else {}
            if scores.get("coverage_per_class"):
                self.tracker.log_trial_coverage(trial.trial_id, scores["coverage_per_class"],
                                                f"trial {trial.trial_id}: normal classes of the samples called normal "
                                                f"(TV {scores['coverage_tv']:.3f})")
        self.tracker.end_trial(trial.trial_id, "FINISHED", None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        self.tracker.end_trial(trial.trial_id, "FAILED", f"{type(error).__name__}: {error}" if error else "error")


def set_active_tracking_uri(uri: str) -> None:
    uris.ACTIVE_URI = uri


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if v is not None and not k.startswith("_")}
