"""Writing a sweep to MLflow (the Ray driver only): the parent run, one child run per trial, the front."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import QUALITY, RATE, SCORE_METRICS, FrontSummary, pareto_plot
from pudm_bench.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_ERROR_CHARS,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE,
    PARENT_KINDS,
    SWEEP_STATUSES,
    TAG_ERROR,
    TAG_KIND,
    TAG_MISSING_CLASSES,
    TAG_PARENT,
    TAG_QUALITY,
    TAG_SWEEP,
    TAG_TRIAL,
    TRIAL_STATUSES,
    check_id,
    finite_number,
    json_safe,
    mlflow_key,
    now_ms,
    search_all,
    truncated,
)
from pudm_bench.tracking.uris import check_experiment_name, redact, resolve_tracking_uri, sqlite_path


class SweepTracker:
    """Driver-side writer of one sweep: the parent run and its trials' child runs.

    Child runs are found by their ``pudm.trial_id`` tag in the store (a cache only saves searches), so two
    trackers of the same sweep (the driver's and the Tune callback's) and a resumed driver all agree.
    """

    def __init__(self, uri: str | None, experiment_name: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment_name = check_experiment_name(experiment_name, "experiment name")
        if urlsplit(self.uri).scheme == "sqlite":
            sqlite_path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment()
        self.parent_run_id: str | None = None
        self.sweep_name: str | None = None
        self._children: dict[str, str] = {}
        self.kind = "sweep"

    def _experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"MLflow experiment {self.experiment_name!r} (id {experiment.experiment_id}) is deleted in "
                    f"{redact(self.uri)}: restore it (mlflow experiments restore --experiment-id "
                    f"{experiment.experiment_id}) or pass --experiment NEW")
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        artifact_location = None
        if urlsplit(self.uri).scheme == "sqlite":
            # MLflow's default is ./mlruns under the *current* folder; keep artifacts beside the database instead.
            artifact_location = str(sqlite_path(self.uri).parent / "mlruns" / check_experiment_name(self.experiment_name))
        return self.client.create_experiment(self.experiment_name, artifact_location=artifact_location,
                                             tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    # -- the parent run -------------------------------------------------------------------------------------------

    def start_sweep(self, sweep_name: str, tags: dict[str, Any], params: dict[str, Any],
                    resume_run_id: str | None = None, kind: str = "sweep") -> str:
        """The parent run's id: a new run, or with ``resume_run_id`` the earlier one, set RUNNING again.

        On resume the run is looked up by id, then (e.g. when the id came from another store) by the tag
        ``pudm.sweep_name``; a new run is created only when neither finds one. Params already on a resumed run are
        not logged again (MLflow refuses changed values); a changed value is recorded as the tag
        ``pudm.resumed_param.<key>``. ``kind``: "sweep", or "benchmark" for a comparison run
        (``pudm_bench.benchmark``), which ``list_sweeps`` does not list.
        """
        if kind not in PARENT_KINDS:
            raise ValueError(f"kind must be one of {PARENT_KINDS}, got {kind!r}")
        self.sweep_name = check_id("sweep name", sweep_name)
        self.kind = kind
        run = self._find_parent(sweep_name, resume_run_id) if resume_run_id is not None else None
        all_tags = {**{mlflow_key(k): truncated(v, MAX_TAG_VALUE) for k, v in tags.items()},
                    TAG_KIND: kind, TAG_SWEEP: sweep_name}
        if run is None:
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=sweep_name)
            existing: dict[str, str] = {}
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            self._log(run.info.run_id, tags=all_tags)
            existing = run.data.params
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, params, existing)
        return self.parent_run_id

    def _find_parent(self, sweep_name: str, run_id: str):
        try:
            run = self.client.get_run(check_id("run id", run_id))
        except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST (or a malformed id)
            run = None
        if (run is not None and run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id
                and run.data.tags.get(TAG_SWEEP) == sweep_name):
            return run
        found = search_all(self.client, [self.experiment_id],
                            f"tags.`{TAG_KIND}` = '{self.kind}' and tags.`{TAG_SWEEP}` = '{sweep_name}'",
                            order_by=["attributes.start_time DESC"])
        return found[0] if found else None

    def end_sweep(self, status: str = "FINISHED") -> None:
        if status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status must be one of {SWEEP_STATUSES}, got {status!r}")
        self.client.set_terminated(self._parent(), status)

    def log_sweep_metrics(self, metrics: dict[str, Any]) -> None:
        """Finite numeric values on the parent run (e.g. the estimated class prior of a ``beta: auto*F`` sweep)."""
        now = now_ms()
        values = [Metric(mlflow_key(k), n, now, 0) for k, v in metrics.items() if (n := finite_number(v)) is not None]
        if values:
            self._log(self._parent(), metrics=values)

    def log_sweep_params(self, params: dict[str, Any]) -> None:
        """Params on the parent run; ones already there are kept (see ``start_sweep``)."""
        run = self.client.get_run(self._parent())
        self._log_params(self._parent(), params, run.data.params)

    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("SweepTracker.start_sweep() has not been called")
        return self.parent_run_id

    # -- trials ---------------------------------------------------------------------------------------------------

    def trial_run(self, trial_id: str, params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None) -> str:
        """The child run of ``trial_id``: found by its ``pudm.trial_id`` tag under the parent, or created.

        A found run (a resumed or retried trial) is set RUNNING again and loses an earlier ``pudm.error``; only
        params it does not have yet are logged.
        """
        trial_id = check_id("trial id", trial_id)
        run_id = self._children.get(trial_id)
        run = self.client.get_run(run_id) if run_id else self._find_child(trial_id)
        user_tags = {mlflow_key(k): truncated(v, MAX_TAG_VALUE) for k, v in (tags or {}).items()}
        if run is None:
            method = (params or {}).get("method")
            run = self.client.create_run(
                self.experiment_id, run_name=f"{method}-{trial_id}" if method else trial_id,
                tags={**user_tags, TAG_PARENT: self._parent(), TAG_KIND: "trial", TAG_TRIAL: trial_id,
                      TAG_SWEEP: self.sweep_name or ""})
            existing: dict[str, str] = {}
        else:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if TAG_ERROR in run.data.tags:
                self.client.delete_tag(run.info.run_id, TAG_ERROR)
            if user_tags:
                self._log(run.info.run_id, tags=user_tags)
            existing = run.data.params
        self._children[trial_id] = run.info.run_id
        self._log_params(run.info.run_id, params or {}, existing)
        return run.info.run_id

    def _find_child(self, trial_id: str):
        found = search_all(self.client, [self.experiment_id],
                            f"tags.`{TAG_PARENT}` = '{self._parent()}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
                            order_by=["attributes.start_time ASC"])
        return found[0] if found else None

    def _child(self, trial_id: str) -> str:
        trial_id = check_id("trial id", trial_id)
        return self._children.get(trial_id) or self.trial_run(trial_id)

    def log_trial_metrics(self, trial_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the finite numeric values of ``metrics`` (bools, strings, NaN and inf are skipped) at ``step``
        (0 when None); keys are made MLflow-safe."""
        now, values = now_ms(), []
        for name, value in metrics.items():
            number = finite_number(value)
            if number is not None:
                values.append(Metric(mlflow_key(name), number, now, int(step or 0)))
        if values:
            self._log(self._child(trial_id), metrics=values)

    def log_trial_artifacts(self, trial_id: str, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> None:
        """Copy a directory's contents, or the given files, into the trial's artifacts (missing files skipped)."""
        run_id = self._child(trial_id)
        if isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir():
            self.client.log_artifacts(run_id, str(paths))
            return
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            if Path(path).is_file():
                self.client.log_artifact(run_id, str(path))

    def log_trial_coverage(self, trial_id: str, rows: Sequence[dict[str, Any]], title: str) -> None:
        """The per-class coverage histogram (``diversity.Coverage.rows``) as the MLflow table ``coverage.json``
        and the bar plot ``coverage.png`` of the trial's run."""
        from pudm_bench.scoring.diversity import coverage_plot

        run_id = self._child(trial_id)
        self._log_table(run_id, pd.DataFrame(list(rows)), "coverage.json")
        self.client.log_figure(run_id, coverage_plot(rows, title), "coverage.png")
        self._log(run_id, tags={TAG_MISSING_CLASSES: ", ".join(str(r["class"]) for r in rows if r["missing"])})

    def tag_trial(self, trial_id: str, tags: dict[str, Any]) -> None:
        self._log(self._child(trial_id), tags={mlflow_key(k): truncated(v, MAX_TAG_VALUE) for k, v in tags.items()})

    def end_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        """Close the trial's run as FINISHED, FAILED or KILLED; ``error`` goes to the tag ``pudm.error`` (at most
        5000 characters)."""
        if status not in TRIAL_STATUSES:
            raise ValueError(f"trial status must be one of {TRIAL_STATUSES}, got {status!r}")
        run_id = self._child(trial_id)
        if error:
            self.client.set_tag(run_id, TAG_ERROR, truncated(error, MAX_ERROR_CHARS))
        self.client.set_terminated(run_id, status)

    def close_stale_trials(self, active_trial_ids: Iterable[str]) -> list[str]:
        """Set KILLED every child run still RUNNING whose trial is not in ``active_trial_ids`` (runs left open by a
        crashed driver); returns their trial ids."""
        active = {str(t) for t in active_trial_ids}
        running = search_all(self.client, [self.experiment_id],
                              f"tags.`{TAG_PARENT}` = '{self._parent()}' and attributes.status = 'RUNNING'")
        closed = []
        for run in running:
            trial_id = run.data.tags.get(TAG_TRIAL, run.info.run_id)
            if trial_id not in active:
                self.client.set_terminated(run.info.run_id, "KILLED")
                closed.append(trial_id)
        return closed

    # -- the front ------------------------------------------------------------------------------------------------

    def log_pareto(self, summary: FrontSummary, quality_name: str, extra: Sequence[tuple[str, str]] = ()) -> float:
        """Log a sweep's results (``pareto.summarize``: computed once, by the driver) on the parent run; returns
        the hypervolume.

        Artifacts: ``pareto_front.json`` (an MLflow table), ``pareto_front.csv``, ``all_trials.csv`` and
        ``pareto.png``; metrics: the hypervolume with its reference point, ``pareto_size``, ``n_trials``,
        ``n_failed`` (``n_infeasible`` with constraints). Calling it again (a resumed sweep) replaces the artifacts:
        ``pareto_front.json`` is written with ``log_table`` the first time and overwritten in the same format
        afterwards, because ``log_table`` appends to an existing file. ``extra``: the sweep's further (metric,
        direction) objectives, shown after the two fixed ones.
        """
        run_id = self._parent()
        df, front, reference, hypervolume = summary.trials, summary.front, summary.reference, summary.hypervolume
        if QUALITY not in df.columns and quality_name in df.columns:
            df = df.assign(**{QUALITY: df[quality_name]})
        all_trials = df
        # The objectives first: the MLflow UI's table view shows the leading columns without scrolling; then the
        # diversity metrics the trials have (coverage needs two normal classes).
        diversity = [c for c in SCORE_METRICS + ("coverage_missing_classes",)
                     if c in front.columns and front[c].notna().any()]
        leading = [c for c in ("trial_id", RATE, quality_name, *[m for m, _ in extra], *diversity, "beta",
                               "correction", "lr", "method") if c in front.columns]
        leading = list(dict.fromkeys(leading))
        front = front[leading + [c for c in front.columns if c not in leading]]
        self._log_table(run_id, front, "pareto_front.json")
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in (("pareto_front.csv", front), ("all_trials.csv", all_trials)):
                table.to_csv(Path(tmp) / name, index=False)
                self.client.log_artifact(run_id, str(Path(tmp) / name))
        fig = pareto_plot(all_trials, quality_name, f"{self.sweep_name or 'sweep'}: {len(df)} trials")
        self.client.log_figure(run_id, fig, "pareto.png")

        failed = int(df["status"].isin(["FAILED", "ERROR"]).sum()) if "status" in df.columns else 0
        metrics = {"hypervolume": hypervolume, "hypervolume_ref_rate": reference[0],
                   "hypervolume_ref_quality": reference[1], "pareto_size": len(front), "n_trials": len(df),
                   "n_failed": failed}
        if "feasible" in df.columns:
            metrics["n_infeasible"] = int((~df["feasible"].astype(bool)).sum())
        now = now_ms()
        finite = [Metric(k, float(v), now, 0) for k, v in metrics.items() if finite_number(v) is not None]
        self._log(run_id, metrics=finite, tags={TAG_QUALITY: quality_name})
        return hypervolume

    # -- benchmark tables -----------------------------------------------------------------------------------------

    def log_benchmark(self, table: pd.DataFrame, runs: pd.DataFrame, markdown: str,
                      metrics: dict[str, float], figures: Iterable[str | os.PathLike] = ()) -> None:
        """Log a benchmark's comparison on the parent run: ``benchmark_table.json`` (``log_table``: the MLflow UI's
        Artifacts tab shows it as a table), ``benchmark_table.csv``, ``benchmark_runs.csv`` (one row per run),
        ``benchmark_table.md`` (the paper-style table) and the summary ``metrics`` (mean/std per split and
        method, for the runs-comparison view); ``figures`` go under ``grids/``."""
        run_id = self._parent()
        self._log_table(run_id, table, "benchmark_table.json")
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "benchmark_table.csv", index=False)
            runs.to_csv(Path(tmp) / "benchmark_runs.csv", index=False)
            (Path(tmp) / "benchmark_table.md").write_text(markdown)
            for name in ("benchmark_table.csv", "benchmark_runs.csv", "benchmark_table.md"):
                self.client.log_artifact(run_id, str(Path(tmp) / name))
        for figure in figures:
            self.client.log_artifact(run_id, str(figure), artifact_path="grids")
        now = now_ms()
        self._log(run_id, metrics=[Metric(mlflow_key(k), float(v), now, 0) for k, v in metrics.items()
                                   if finite_number(v) is not None])

    # -- batching -------------------------------------------------------------------------------------------------

    def _log_table(self, run_id: str, table: pd.DataFrame, name: str) -> None:
        """``table`` as the MLflow table artifact ``name`` (the UI shows it as a table). ``log_table`` appends to an
        existing file, so a second call (a resumed sweep or trial) writes the same format over it instead."""
        table = json_safe(table)
        if name in {f.path for f in self.client.list_artifacts(run_id)}:
            with tempfile.TemporaryDirectory() as tmp:  # the writer MlflowClient.log_table uses
                path = Path(tmp) / name
                table.to_json(path, orient="split", index=False, date_format="iso")
                self.client.log_artifact(run_id, str(path))
        else:
            self.client.log_table(run_id, table, artifact_file=name)

    def _log_params(self, run_id: str, params: dict[str, Any], existing: dict[str, str]) -> None:
        new, changed = {}, {}
        for name, value in params.items():
            key, text = mlflow_key(name), truncated(value, MAX_PARAM_VALUE)
            if key not in existing:
                new[key] = text
            elif existing[key] != text:
                changed[mlflow_key(f"pudm.resumed_param.{key}")] = truncated(value, MAX_TAG_VALUE)
        self._log(run_id, params=new, tags=changed)

    def _log(self, run_id: str, metrics: Sequence[Metric] = (), params: dict[str, str] | None = None,
             tags: dict[str, str] | None = None) -> None:
        """``log_batch`` within MLflow's per-call limits (1000 metrics; 100 params and tags)."""
        params_list = [Param(k, v) for k, v in (params or {}).items()]
        tags_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        metrics = list(metrics)
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
        n = MAX_PARAMS_TAGS_PER_BATCH
        for i in range(0, max(len(params_list), len(tags_list)), n):
            self.client.log_batch(run_id, params=params_list[i:i + n], tags=tags_list[i:i + n])
