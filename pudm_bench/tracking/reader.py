"""Reading sweeps back from MLflow (``python -m pudm_bench.report``): the sweeps, one sweep's trials and front."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType

from pudm_bench.data.splits import QUALITY_METRICS
from pudm_bench.errors import ConfigError, unknown_name
from pudm_bench.search.pareto import METRIC_DIRECTIONS, QUALITY, RATE, SCORE_METRICS, parse_constraint, summarize
from pudm_bench.tracking.store import (
    TAG_CONSTRAINTS,
    TAG_ERROR,
    TAG_KIND,
    TAG_MISSING_CLASSES,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_QUALITY,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL,
    TRIAL_COLUMNS,
    check_id,
    search_all,
)
from pudm_bench.tracking.uris import check_store_exists, redact, resolve_tracking_uri


def _reader(uri: str | None) -> tuple[str, MlflowClient]:
    uri = resolve_tracking_uri(uri)
    check_store_exists(uri)
    return uri, MlflowClient(tracking_uri=uri)


def list_sweeps(uri: str | None, experiment: str | None = None) -> pd.DataFrame:
    """The sweeps (parent runs) in the store, newest first: run_id, experiment, sweep_name, status, start_time,
    split, quality, n_trials, pareto_size, hypervolume. ``experiment`` limits it to one experiment (an unknown name
    is a ConfigError with the known ones)."""
    uri, client = _reader(uri)
    experiments = _all_experiments(client)
    if experiment is not None:
        if experiment not in experiments.values():
            raise unknown_name("MLflow experiment", experiment, experiments.values(), where=redact(uri))
        experiments = {k: v for k, v in experiments.items() if v == experiment}
    runs = search_all(client, list(experiments), f"tags.`{TAG_KIND}` = 'sweep'",
                       order_by=["attributes.start_time DESC"]) if experiments else []
    rows = [{
        "run_id": r.info.run_id, "experiment": experiments.get(r.info.experiment_id, r.info.experiment_id),
        "sweep_name": r.data.tags.get(TAG_SWEEP), "status": r.info.status,
        "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
        "split": r.data.tags.get("pudm.split"), "quality": r.data.tags.get(TAG_QUALITY),
        "n_trials": r.data.metrics.get("n_trials"), "pareto_size": r.data.metrics.get("pareto_size"),
        "hypervolume": r.data.metrics.get("hypervolume"),
    } for r in runs]
    columns = ["run_id", "experiment", "sweep_name", "status", "start_time", "split", "quality", "n_trials",
               "pareto_size", "hypervolume"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _all_experiments(client: MlflowClient) -> dict[str, str]:
    out, token = {}, None
    while True:
        page = client.search_experiments(ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        out.update({e.experiment_id: e.name for e in page})
        token = page.token
        if not token:
            return out


def load_sweep(uri: str | None, run_id: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The sweep ``run_id``: (parent info, one row per trial).

    Parent info: run_id, experiment_id, experiment, sweep_name, status, start_time, end_time, quality, reference
    (the logged hypervolume reference or None), hypervolume, tags, params, metrics, artifact_uri, tracking_uri
    (redacted). Trial columns: ``TRIAL_COLUMNS``; ``quality`` is the sweep's quality metric, ``excluded`` is True
    for trials not FINISHED or without finite objectives, ``on_front`` is recomputed over all usable trials
    (baselines included).
    """
    uri, client = _reader(uri)
    try:
        run = client.get_run(check_id("run id", run_id))
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        run = None
    if run is None or run.info.lifecycle_stage != "active":
        raise ConfigError(f"no sweep with run id {run_id!r} in {redact(uri)}: list them with "
                          "python -m pudm_bench.report --list")
    tags = run.data.tags
    if tags.get(TAG_KIND) != "sweep":
        parent = tags.get(TAG_PARENT)
        hint = f"; it is a trial of sweep run {parent}" if parent else ""
        raise ConfigError(f"run {run_id!r} in {redact(uri)} is not a sweep{hint}: pass a sweep's run id")
    children = search_all(client, [run.info.experiment_id], f"tags.`{TAG_PARENT}` = '{run_id}'",
                           order_by=["attributes.start_time ASC"])
    quality = tags.get(TAG_QUALITY) or next(
        (q for q in QUALITY_METRICS if any(q in c.data.metrics for c in children)), "fd_classifier")
    rows = []
    for child in children:
        metrics, params, ctags = child.data.metrics, child.data.params, child.data.tags
        rows.append({
            "trial_id": ctags.get(TAG_TRIAL, child.info.run_id), "role": ctags.get(TAG_ROLE, "search"),
            "method": params.get("method"), "beta": _number(params.get("beta")),
            "correction": params.get("correction"), "lr": _number(params.get("lr")), "status": child.info.status,
            RATE: metrics.get(RATE, math.nan),
            "non_sensitive_rate_ci_low": metrics.get("non_sensitive_rate_ci_low", math.nan),
            "non_sensitive_rate_ci_high": metrics.get("non_sensitive_rate_ci_high", math.nan),
            QUALITY: metrics.get(quality, math.nan), **{q: metrics.get(q, math.nan) for q in QUALITY_METRICS},
            **{m: metrics.get(m, math.nan) for m in SCORE_METRICS},
            "coverage_missing_classes": ctags.get(TAG_MISSING_CLASSES),
            "referee_balanced_accuracy": metrics.get("referee_balanced_accuracy", math.nan),
            "error": ctags.get(TAG_ERROR),
        })
    trials = pd.DataFrame(rows, columns=[c for c in TRIAL_COLUMNS
                                         if c not in ("on_front", "excluded", "feasible", "violations")])
    finite = trials[RATE].astype(float).map(math.isfinite) & trials[QUALITY].astype(float).map(math.isfinite)
    trials["excluded"] = ~(finite & (trials["status"] == "FINISHED"))
    extra, constraints = sweep_objectives(tags)
    m = run.data.metrics
    reference = ((m["hypervolume_ref_rate"], m["hypervolume_ref_quality"])
                 if "hypervolume_ref_rate" in m and "hypervolume_ref_quality" in m else None)
    # The same summary the sweep logged: its constraints, objectives and reference point (``pareto.summarize``).
    summary = summarize(trials, constraints, extra, reference=reference)
    trials = summary.trials[list(TRIAL_COLUMNS)]
    experiment = client.get_experiment(run.info.experiment_id)
    info = {
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "experiment": experiment.name,
        "sweep_name": tags.get(TAG_SWEEP), "status": run.info.status,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True) if run.info.end_time else None,
        "quality": quality, "reference": reference, "hypervolume": m.get("hypervolume"), "summary": summary,
        "objectives": extra, "constraints": [str(c) for c in constraints],
        "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")}, "params": dict(run.data.params),
        "metrics": dict(m), "artifact_uri": run.info.artifact_uri, "tracking_uri": redact(uri),
    }
    return info, trials


def sweep_objectives(tags: dict[str, str]) -> tuple[list[tuple[str, str]], list]:
    """A sweep's further objectives (metric, direction) and its constraints, from its parent run's tags."""
    extra = [(m, METRIC_DIRECTIONS[m]) for m in (tags.get(TAG_OBJECTIVES) or "").split(",") if m in METRIC_DIRECTIONS]
    constraints = []
    for text in (tags.get(TAG_CONSTRAINTS) or "").split(";"):
        if text.strip():
            try:
                constraints.append(parse_constraint(text, METRIC_DIRECTIONS))
            except ValueError:  # a tag edited by hand: the front is shown without it rather than not at all
                continue
    return extra, constraints


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan
