"""MLflow tracking of sweeps: one parent run per sweep, one child run per trial, the Pareto front on the parent.

The only module of the package that imports mlflow. Everything goes through an explicit
``MlflowClient(tracking_uri=...)``, so the process-wide tracking URI (``mlflow.set_tracking_uri``) is never read
or changed here. Only the Ray driver writes (``SweepTracker`` is called from a Tune callback there): SQLite must
be written by one process; workers that must log themselves need an MLflow server.

Layout in the store (experiment ``pudm-<split>`` by default):
- parent run: tags ``pudm.kind=sweep``, ``pudm.sweep_name``; the sweep settings as params; after the sweep the
  metrics ``hypervolume``, ``hypervolume_ref_rate``, ``hypervolume_ref_quality``, ``pareto_size``, ``n_trials``,
  ``n_failed`` and the artifacts ``pareto_front.json`` (an MLflow table), ``pareto_front.csv``,
  ``all_trials.csv`` and ``pareto.png``;
- child runs: tags ``mlflow.parentRunId``, ``pudm.kind=trial``, ``pudm.trial_id`` (the key: a resumed trial gets
  its old run back, never a second one), ``pudm.role``, ``pudm.error`` for failures; trial params; metrics; the
  per-class coverage as the table ``coverage.json`` and the plot ``coverage.png`` (splits with 2+ normal classes).
- a sweep's further objectives and its constraints are the parent's tags ``pudm.objectives`` (comma-separated)
  and ``pudm.constraints`` (";"-separated), so ``load_sweep`` recomputes the same front.

Read back with ``list_sweeps`` and ``load_sweep`` (``python -m pudm_bench.report``).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

from pudm_bench.data.splits import QUALITY_METRICS
from pudm_bench.errors import ConfigError, unknown_name
from pudm_bench.pareto import (METRIC_DIRECTIONS, QUALITY, RATE, SCORE_METRICS, FrontSummary, pareto_plot,
                               parse_constraint, summarize)

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
_MAX_KEY, _MAX_PARAM_VALUE, _MAX_TAG_VALUE = 250, 6000, 8000
_MAX_METRICS_PER_BATCH, _MAX_PARAMS_TAGS_PER_BATCH = 1000, 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


# ----------------------------------------------------------------------------------------------------------------
# URIs


# The running driver's tracking URI. Tune pickles its callbacks into the sweep's storage folder, and the sweep's
# MLflow callback leaves the URI (which may hold a password) out of that pickle; a restored callback reads this,
# which the driver sets before Tune runs. A module attribute, not a class attribute: the driver is often
# ``python -m pudm_bench.sweep`` (module __main__), whose classes Ray pickles by value.
ACTIVE_URI: str | None = None


def check_experiment_name(name: str, flag: str = "--experiment") -> str:
    """An MLflow experiment name that is safe as a folder name: with a SQLite store its artifacts go to
    ``<store>/mlruns/<name>``, so ``../``, a path separator or a space would put them outside the store or in a
    path that shells and artifact URIs mangle. The one rule for experiment names: the CLI checks it before any
    work, and ``SweepTracker`` again."""
    if not _NAME_RE.fullmatch(str(name)) or ".." in str(name):
        raise ConfigError(f"{flag}={name!r} is invalid: use letters, digits, '_', '-' or '.' (at most 128, starting "
                          "with a letter or digit), no spaces, no path separators and no '..'")
    return str(name)


def redact(uri: str | None) -> str:
    """``uri`` with passwords hidden: ``http://user:secret@host`` -> ``http://user:***@host``; query parameters
    that look like secrets (password, token, secret, key) get ``***`` too. Use it for every URI printed or logged."""
    if not uri:
        return str(uri)
    # String edits, not urlsplit/urlunsplit: those turn sqlite:////abs into sqlite://abs.
    text = str(uri)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)", text)
    if match and "@" in match.group(2):
        userinfo, host = match.group(2).rsplit("@", 1)  # the last @ ends the credentials (a password may hold @)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        text = match.group(1) + userinfo + "@" + host + text[match.end():]
    if "?" in text:
        head, query = text.split("?", 1)
        query = re.sub(r"(?i)((?:^|&)[^=&]*(?:password|passwd|pwd|token|secret|key)[^=&]*=)[^&#]*", r"\1***", query)
        text = f"{head}?{query}"
    return text


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use, always absolute for local stores.

    - None: ``$MLFLOW_TRACKING_URI`` when set (resolved by these same rules), else MLflow 3's default store,
      ``sqlite:///<absolute cwd>/mlflow.db``;
    - a filesystem path ending in .db/.sqlite/.sqlite3 -> ``sqlite:///<absolute path>``; a relative
      ``sqlite:///x.db`` is made absolute, so a sweep resumed from another folder finds its store;
    - http(s) and database URIs (postgresql://, mysql://, ...) are kept as they are;
    - a folder or ``file:`` URI (MLflow's file store) is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``, as
      MLflow 3 itself refuses it.
    """
    if uri is None:
        env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        return resolve_tracking_uri(env) if env else _sqlite_uri(Path.cwd() / "mlflow.db")
    uri = str(uri).strip()
    if not uri:
        raise ConfigError("--mlflow-uri is empty: pass a .db path, sqlite:///PATH or http(s)://HOST:PORT")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith(("file:", "sqlite:")) else ""
    if scheme in ("http", "https"):
        if not urlsplit(uri).hostname:
            raise ConfigError(f"--mlflow-uri={redact(uri)!r} has no host: pass e.g. http://127.0.0.1:5000")
        return uri
    if scheme == "sqlite":
        return _sqlite_uri(_sqlite_path(uri))
    if scheme == "file" or (not scheme and not uri.lower().endswith(_SQLITE_SUFFIXES)):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            path = Path(unquote(urlsplit(uri).path) if scheme == "file" else uri).expanduser().resolve()
            return path.as_uri()
        raise ConfigError(f"--mlflow-uri={redact(uri)!r} is a file store, which MLflow 3 refuses: pass a .db path "
                          "(SQLite), sqlite:///PATH or http(s)://HOST:PORT (or set MLFLOW_ALLOW_FILE_STORE=true)")
    if scheme:
        return uri  # postgresql://, mysql://, databricks, ...: MLflow resolves these
    return _sqlite_uri(Path(uri))


def _sqlite_uri(path: Path) -> str:
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def _sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (query string dropped); in-memory databases are refused."""
    rest = uri.split("://", 1)[1] if "://" in uri else uri.split(":", 1)[1]
    rest = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db -> rel.db, sqlite:////abs -> /abs
    path = unquote(rest.split("?", 1)[0])
    if not path or path == ":memory:":
        raise ConfigError(f"--mlflow-uri={uri!r} is an in-memory database, which no other process can read: "
                          "pass sqlite:///PATH/mlflow.db")
    return Path(path).expanduser().resolve()


def check_tracking_reachable(uri: str, timeout_s: float = 5) -> None:
    """Fail fast, before any training, when the store cannot be used.

    http(s): GET ``<uri>/health`` with a short timeout; no answer -> ConfigError naming the (redacted) URI.
    sqlite: the database file, or the nearest existing folder above it, must be writable. Other schemes are left
    to MLflow.
    """
    uri = resolve_tracking_uri(uri)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials are not needed for /health
        health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:  # noqa: S310 (http(s) only)
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ConfigError(f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it or pass "
                              "--mlflow-uri") from None
        if status >= 500:
            raise ConfigError(f"MLflow tracking server {redact(uri)} is unreachable (HTTP {status} from /health); "
                              "start it or pass --mlflow-uri")
    elif scheme == "sqlite":
        path = _sqlite_path(uri)
        if path.exists():
            if path.is_dir() or not os.access(path, os.W_OK):
                raise ConfigError(f"MLflow store {path} is not a writable file; pass --mlflow-uri with another path")
            return
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot create the MLflow store {path}: {folder} is not writable; pass --mlflow-uri "
                              "with another path")


def _check_store_exists(uri: str) -> None:
    """Readers must not create an empty store as a side effect of a typo."""
    if urlsplit(uri).scheme.lower() == "sqlite":
        path = _sqlite_path(uri)
        if not path.is_file():
            raise ConfigError(f"no MLflow store at {path}: run a sweep first, or pass --mlflow-uri")
    else:
        check_tracking_reachable(uri)


# ----------------------------------------------------------------------------------------------------------------
# Names and values MLflow accepts


def _key(name: Any) -> str:
    """A metric/param/tag key MLflow accepts: ASCII letters, digits, ``_ - . /`` and spaces, no empty or ``..``
    path segments, at most 250 characters."""
    text = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(name))
    text = "/".join(s for s in text.split("/") if s and s not in (".", ".."))
    return (text or "_")[:_MAX_KEY]


def _text(value: Any, limit: int) -> str:
    text, marker = str(value), "...[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_id(kind: str, value: str) -> str:
    value = str(value)
    if not _ID_RE.fullmatch(value):
        raise ConfigError(f"{kind} {value!r} is invalid: use letters, digits, '_', '-' or '.' (at most 128)")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str,
                order_by: list[str] | None = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# ----------------------------------------------------------------------------------------------------------------
# Writing (the Ray driver)


class SweepTracker:
    """Driver-side writer of one sweep: the parent run and its trials' child runs.

    Child runs are found by their ``pudm.trial_id`` tag in the store (a cache only saves searches), so two
    trackers of the same sweep (the driver's and the Tune callback's) and a resumed driver all agree.
    """

    def __init__(self, uri: str | None, experiment_name: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment_name = check_experiment_name(experiment_name, "experiment name")
        if urlsplit(self.uri).scheme == "sqlite":
            _sqlite_path(self.uri).parent.mkdir(parents=True, exist_ok=True)
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
            artifact_location = str(_sqlite_path(self.uri).parent / "mlruns" / check_experiment_name(self.experiment_name))
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
        self.sweep_name = _check_id("sweep name", sweep_name)
        self.kind = kind
        run = self._find_parent(sweep_name, resume_run_id) if resume_run_id is not None else None
        all_tags = {**{_key(k): _text(v, _MAX_TAG_VALUE) for k, v in tags.items()},
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
            run = self.client.get_run(_check_id("run id", run_id))
        except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST (or a malformed id)
            run = None
        if (run is not None and run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id
                and run.data.tags.get(TAG_SWEEP) == sweep_name):
            return run
        found = _search_all(self.client, [self.experiment_id],
                            f"tags.`{TAG_KIND}` = '{self.kind}' and tags.`{TAG_SWEEP}` = '{sweep_name}'",
                            order_by=["attributes.start_time DESC"])
        return found[0] if found else None

    def end_sweep(self, status: str = "FINISHED") -> None:
        if status not in SWEEP_STATUSES:
            raise ValueError(f"sweep status must be one of {SWEEP_STATUSES}, got {status!r}")
        self.client.set_terminated(self._parent(), status)

    def log_sweep_metrics(self, metrics: dict[str, Any]) -> None:
        """Finite numeric values on the parent run (e.g. the estimated class prior of a ``beta: auto*F`` sweep)."""
        now = _now_ms()
        values = [Metric(_key(k), n, now, 0) for k, v in metrics.items() if (n := _finite_number(v)) is not None]
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
        trial_id = _check_id("trial id", trial_id)
        run_id = self._children.get(trial_id)
        run = self.client.get_run(run_id) if run_id else self._find_child(trial_id)
        user_tags = {_key(k): _text(v, _MAX_TAG_VALUE) for k, v in (tags or {}).items()}
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
        found = _search_all(self.client, [self.experiment_id],
                            f"tags.`{TAG_PARENT}` = '{self._parent()}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
                            order_by=["attributes.start_time ASC"])
        return found[0] if found else None

    def _child(self, trial_id: str) -> str:
        trial_id = _check_id("trial id", trial_id)
        return self._children.get(trial_id) or self.trial_run(trial_id)

    def log_trial_metrics(self, trial_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the finite numeric values of ``metrics`` (bools, strings, NaN and inf are skipped) at ``step``
        (0 when None); keys are made MLflow-safe."""
        now, values = _now_ms(), []
        for name, value in metrics.items():
            number = _finite_number(value)
            if number is not None:
                values.append(Metric(_key(name), number, now, int(step or 0)))
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
        from pudm_bench.diversity import coverage_plot

        run_id = self._child(trial_id)
        self._log_table(run_id, pd.DataFrame(list(rows)), "coverage.json")
        self.client.log_figure(run_id, coverage_plot(rows, title), "coverage.png")
        self._log(run_id, tags={TAG_MISSING_CLASSES: ", ".join(str(r["class"]) for r in rows if r["missing"])})

    def end_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        """Close the trial's run as FINISHED, FAILED or KILLED; ``error`` goes to the tag ``pudm.error`` (at most
        5000 characters)."""
        if status not in TRIAL_STATUSES:
            raise ValueError(f"trial status must be one of {TRIAL_STATUSES}, got {status!r}")
        run_id = self._child(trial_id)
        if error:
            self.client.set_tag(run_id, TAG_ERROR, _text(error, MAX_ERROR_CHARS))
        self.client.set_terminated(run_id, status)

    def close_stale_trials(self, active_trial_ids: Iterable[str]) -> list[str]:
        """Set KILLED every child run still RUNNING whose trial is not in ``active_trial_ids`` (runs left open by a
        crashed driver); returns their trial ids."""
        active = {str(t) for t in active_trial_ids}
        running = _search_all(self.client, [self.experiment_id],
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
        now = _now_ms()
        finite = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite_number(v) is not None]
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
        now = _now_ms()
        self._log(run_id, metrics=[Metric(_key(k), float(v), now, 0) for k, v in metrics.items()
                                   if _finite_number(v) is not None])

    # -- batching -------------------------------------------------------------------------------------------------

    def _log_table(self, run_id: str, table: pd.DataFrame, name: str) -> None:
        """``table`` as the MLflow table artifact ``name`` (the UI shows it as a table). ``log_table`` appends to an
        existing file, so a second call (a resumed sweep or trial) writes the same format over it instead."""
        table = _json_safe(table)
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
            key, text = _key(name), _text(value, _MAX_PARAM_VALUE)
            if key not in existing:
                new[key] = text
            elif existing[key] != text:
                changed[_key(f"pudm.resumed_param.{key}")] = _text(value, _MAX_TAG_VALUE)
        self._log(run_id, params=new, tags=changed)

    def _log(self, run_id: str, metrics: Sequence[Metric] = (), params: dict[str, str] | None = None,
             tags: dict[str, str] | None = None) -> None:
        """``log_batch`` within MLflow's per-call limits (1000 metrics; 100 params and tags)."""
        params_list = [Param(k, v) for k, v in (params or {}).items()]
        tags_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        metrics = list(metrics)
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_METRICS_PER_BATCH])
        n = _MAX_PARAMS_TAGS_PER_BATCH
        for i in range(0, max(len(params_list), len(tags_list)), n):
            self.client.log_batch(run_id, params=params_list[i:i + n], tags=tags_list[i:i + n])


def _json_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns MLflow's table writer takes as they are: objects (e.g. tuples) become strings."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading back (python -m pudm_bench.report)


def _reader(uri: str | None) -> tuple[str, MlflowClient]:
    uri = resolve_tracking_uri(uri)
    _check_store_exists(uri)
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
    runs = _search_all(client, list(experiments), f"tags.`{TAG_KIND}` = 'sweep'",
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
        run = client.get_run(_check_id("run id", run_id))
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
    children = _search_all(client, [run.info.experiment_id], f"tags.`{TAG_PARENT}` = '{run_id}'",
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
