"""The layout of a sweep in the MLflow store (tags, trial columns) and the names and values MLflow accepts."""

from __future__ import annotations

import math
import numbers
import re
import time
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType

from pudm_bench.data.splits import QUALITY_METRICS
from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import QUALITY, RATE, SCORE_METRICS

TAG_KIND, TAG_SWEEP, TAG_TRIAL = "pudm.kind", "pudm.sweep_name", "pudm.trial_id"
PARENT_KINDS = ("sweep", "benchmark")
# MLflow 3's UI opens an experiment in its GenAI (traces) view unless the experiment says it is model training; with
# this tag our experiments open on the runs table, where the sweeps and their trials are.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_ROLE, TAG_ERROR, TAG_QUALITY = "pudm.role", "pudm.error", "pudm.quality"
TAG_MISSING_CLASSES = "pudm.coverage_missing_classes"  # a trial's normal classes under half their share
TAG_PARENT = "mlflow.parentRunId"
TAG_OBJECTIVES, TAG_CONSTRAINTS = "pudm.objectives", "pudm.constraints"  # a sweep's extra objectives, constraints
TRIAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
SWEEP_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_ERROR_CHARS = 5000
TRIAL_COLUMNS = ("trial_id", "role", "method", "beta", "correction", "lr", "status", RATE,
                 "non_sensitive_rate_ci_low", "non_sensitive_rate_ci_high", QUALITY, *QUALITY_METRICS,
                 *SCORE_METRICS, "coverage_missing_classes", "referee_balanced_accuracy", "feasible",
                 "violations", "on_front", "excluded", "error")

# MLflow limits (mlflow.utils.validation) that the store enforces with an exception.
MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE = 250, 6000, 8000
MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH = 1000, 100
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")



def mlflow_key(name: Any) -> str:
    """A metric/param/tag key MLflow accepts: ASCII letters, digits, ``_ - . /`` and spaces, no empty or ``..``
    path segments, at most 250 characters."""
    text = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(name))
    text = "/".join(s for s in text.split("/") if s and s not in (".", ".."))
    return (text or "_")[:MAX_KEY]


def truncated(value: Any, limit: int) -> str:
    text, marker = str(value), "...[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_id(kind: str, value: str) -> str:
    value = str(value)
    if not _ID_RE.fullmatch(value):
        raise ConfigError(f"{kind} {value!r} is invalid: use letters, digits, '_', '-' or '.' (at most 128)")
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str,
                order_by: list[str] | None = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def json_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns MLflow's table writer takes as they are: objects (e.g. tuples) become strings."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
    return out
