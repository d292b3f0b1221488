"""SweepTracker against a real SQLite store; URI resolution, reachability checks and redaction."""

from __future__ import annotations

import http.server
import json
import math
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import default_reference, hypervolume_2d, summarize
from pudm_bench.tracking import (
    SweepTracker,
    check_tracking_reachable,
    list_sweeps,
    load_sweep,
    redact,
    resolve_tracking_uri,
)
from tests.helpers import TRIALS, record_sweep, trials_frame


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (a fresh one takes seconds to create)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    SweepTracker(uri, "pudm-warmup")
    return uri


def children(uri: str, parent: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_parent_and_nested_children(store):
    tracker = SweepTracker(store, "pudm-nested")
    parent = tracker.start_sweep("nested", tags={"pudm.split": "digits_even"}, params={"trials": 3, "dirs": ()})
    ids = {tracker.trial_run(f"tr{i}", params={"beta": 0.1 * i, "method": "pu"}, tags={"pudm.role": "search"})
           for i in range(3)}
    runs = children(store, parent)
    assert {r.info.run_id for r in runs} == ids and len(ids) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs)
    assert {r.data.tags["pudm.trial_id"] for r in runs} == {"tr0", "tr1", "tr2"}
    assert {r.info.status for r in runs} == {"RUNNING"}
    parent_run = MlflowClient(tracking_uri=store).get_run(parent)
    assert parent_run.data.tags["pudm.sweep_name"] == "nested" and parent_run.data.params["trials"] == "3"
    # artifacts go beside the database, not under the current folder
    assert parent_run.info.artifact_uri.startswith(str(Path(store[len("sqlite:///"):]).parent))


def test_trial_run_is_get_or_create_by_trial_id(store):
    tracker = SweepTracker(store, "pudm-getorcreate")
    parent = tracker.start_sweep("goc", tags={}, params={})
    first = tracker.trial_run("abc_00001", params={"beta": 0.5}, tags={"pudm.role": "search"})
    assert tracker.trial_run("abc_00001", params={"beta": 0.5}, tags={}) == first
    tracker.end_trial("abc_00001", "FAILED", "worker died")
    # a resumed driver (new tracker, same parent) gets the same run back, RUNNING again and without the old error
    again = SweepTracker(store, "pudm-getorcreate")
    again.start_sweep("goc", tags={}, params={}, resume_run_id=parent)
    assert again.trial_run("abc_00001", params={"beta": 0.5, "lr": 1e-3}, tags={}) == first
    runs = children(store, parent)
    assert len(runs) == 1
    assert runs[0].info.status == "RUNNING" and "pudm.error" not in runs[0].data.tags
    assert runs[0].data.params == {"beta": "0.5", "lr": "0.001"}


def test_metrics_are_finite_numbers_with_safe_keys(store):
    tracker = SweepTracker(store, "pudm-metrics")
    tracker.start_sweep("metrics", tags={}, params={})
    run_id = tracker.trial_run("m1", params={}, tags={})
    tracker.log_trial_metrics("m1", {"loss": 0.25, "eval/fid score!": 3, "nan": math.nan, "inf": math.inf,
                                     "done": True, "phase": "train", "../up": 1.5}, step=7)
    metrics = MlflowClient(tracking_uri=store).get_run(run_id).data.metrics
    assert metrics == {"loss": 0.25, "eval/fid score_": 3.0, "up": 1.5}
    history = MlflowClient(tracking_uri=store).get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [7]


def test_end_trial_statuses_and_error_tag(store):
    tracker = SweepTracker(store, "pudm-end")
    parent = tracker.start_sweep("end", tags={}, params={})
    for tid in ("ok", "bad", "gone"):
        tracker.trial_run(tid, params={}, tags={})
    tracker.end_trial("ok", "FINISHED", None)
    tracker.end_trial("bad", "FAILED", "E" * 6000)
    tracker.end_trial("gone", "KILLED", None)
    with pytest.raises(ValueError, match="FINISHED"):
        tracker.end_trial("ok", "DONE", None)
    runs = {r.data.tags["pudm.trial_id"]: r for r in children(store, parent)}
    assert {k: r.info.status for k, r in runs.items()} == {"ok": "FINISHED", "bad": "FAILED", "gone": "KILLED"}
    assert len(runs["bad"].data.tags["pudm.error"]) == 5000
    assert runs["bad"].data.tags["pudm.error"].endswith("[truncated]")
    assert "pudm.error" not in runs["ok"].data.tags
    assert runs["ok"].info.end_time is not None


def test_close_stale_trials_kills_runs_left_running(store):
    tracker = SweepTracker(store, "pudm-stale")
    parent = tracker.start_sweep("stale", tags={}, params={})
    for tid in ("done", "orphan", "alive"):
        tracker.trial_run(tid, params={}, tags={})
    tracker.end_trial("done", "FINISHED")
    # the driver crashed; a new one resumes with only "alive" still running
    resumed = SweepTracker(store, "pudm-stale")
    resumed.start_sweep("stale", tags={}, params={}, resume_run_id=parent)
    assert resumed.close_stale_trials(active_trial_ids={"alive"}) == ["orphan"]
    status = {r.data.tags["pudm.trial_id"]: r.info.status for r in children(store, parent)}
    assert status == {"done": "FINISHED", "orphan": "KILLED", "alive": "RUNNING"}


def test_log_pareto_artifacts_and_metrics_without_duplicates_on_resume(store):
    parent = record_sweep(store, "pudm-pareto", "pareto")
    client = MlflowClient(tracking_uri=store)
    assert {f.path for f in client.list_artifacts(parent)} >= {"pareto_front.json", "pareto_front.csv",
                                                               "all_trials.csv", "pareto.png"}
    frame = trials_frame(TRIALS)
    reference = default_reference(frame)
    assert reference == pytest.approx((0.0, 1.1 * 14.0))
    metrics = client.get_run(parent).data.metrics
    # searched front: t0 (0.9, 10) and t1 (0.6, 4): 0.9 * (15.4 - 10) + 0.6 * (10 - 4)
    assert metrics["hypervolume"] == pytest.approx(0.9 * 5.4 + 0.6 * 6.0)
    assert metrics["hypervolume"] == pytest.approx(hypervolume_2d([(0.9, 10.0), (0.6, 4.0)], reference))
    assert (metrics["hypervolume_ref_rate"], metrics["hypervolume_ref_quality"]) == pytest.approx(reference)
    assert metrics["pareto_size"] == 2 and metrics["n_trials"] == 6 and metrics["n_failed"] == 1

    # a resumed sweep logs the front again: the table is replaced, not appended to
    again = SweepTracker(store, "pudm-pareto")
    assert again.start_sweep("pareto", tags={}, params={"seed": 1}, resume_run_id=parent) == parent
    again.log_pareto(summarize(frame, reference=reference), "fd_classifier")
    table = json.loads(Path(client.download_artifacts(parent, "pareto_front.json")).read_text())
    assert sorted(row[table["columns"].index("trial_id")] for row in table["data"]) == ["t0", "t1"]
    assert len(pd.read_csv(client.download_artifacts(parent, "all_trials.csv"))) == 6
    tags = client.get_run(parent).data.tags
    assert tags["pudm.resumed_param.seed"] == "1"  # MLflow refuses to change a param; the new value is a tag


def test_resume_reuses_the_parent(store):
    tracker = SweepTracker(store, "pudm-resume")
    parent = tracker.start_sweep("resume", tags={"pudm.split": "digits_even"}, params={"trials": 4})
    tracker.end_sweep("FAILED")
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(parent).info.status == "FAILED"
    again = SweepTracker(store, "pudm-resume")
    assert again.start_sweep("resume", tags={}, params={"trials": 4}, resume_run_id=parent) == parent
    assert client.get_run(parent).info.status == "RUNNING"
    # an id from another store: found by the sweep-name tag instead
    assert SweepTracker(store, "pudm-resume").start_sweep(
        "resume", tags={}, params={}, resume_run_id="0123456789abcdef0123456789abcdef") == parent
    # no resume id: a new sweep
    assert SweepTracker(store, "pudm-resume").start_sweep("resume", tags={}, params={}) != parent


def test_read_back(store):
    parent = record_sweep(store, "pudm-readback", "readback")
    sweeps = list_sweeps(store, "pudm-readback")
    assert sweeps.run_id.tolist() == [parent] and sweeps.sweep_name[0] == "readback"
    info, trials = load_sweep(store, parent)
    assert info["quality"] == "fd_classifier" and info["reference"] == pytest.approx((0.0, 15.4))
    assert info["tracking_uri"] == store and info["experiment"] == "pudm-readback"
    by_id = trials.set_index("trial_id")
    assert by_id.loc["t0", "non_sensitive_rate"] == 0.9 and by_id.loc["t0", "quality"] == 10.0
    assert by_id.loc["t0", "lr"] == pytest.approx(1e-3) and by_id.loc["b0", "method"] == "unsupervised"
    assert by_id.loc["t3", "excluded"] and by_id.loc["t3", "status"] == "FAILED"
    assert by_id.loc["t3", "error"].startswith("NonFiniteLossError")
    # The front the sweep logged: of the searched trials (t2 is dominated by t1); baselines are never on it.
    assert sorted(by_id.index[by_id.on_front]) == ["t0", "t1"]
    with pytest.raises(ConfigError, match="no sweep with run id"):
        load_sweep(store, "0123456789abcdef0123456789abcdef")
    child = children(store, parent)[0].info.run_id
    with pytest.raises(ConfigError, match=f"trial of sweep run {parent}"):
        load_sweep(store, child)
    with pytest.raises(ConfigError, match="did you mean 'pudm-readback'"):
        list_sweeps(store, "pudm-readbak")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "x" * 200, "bad name"])
def test_experiment_name_is_validated(store, name):
    with pytest.raises(ConfigError, match="experiment name"):
        SweepTracker(store, name)


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("runs/x.db") == f"sqlite:///{tmp_path.resolve()}/runs/x.db"
    assert resolve_tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path.resolve()}/rel.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://user:pw@127.0.0.1:5000") == "http://user:pw@127.0.0.1:5000"
    assert resolve_tracking_uri("postgresql://u@db/mlflow") == "postgresql://u@db/mlflow"
    for file_store in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(ConfigError, match="file store"):
            resolve_tracking_uri(file_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "other.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/other.db"


def test_redact():
    assert redact("http://user:secret@host:5000/x") == "http://user:***@host:5000/x"
    assert redact("postgresql://me:p%40ss@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    assert redact("https://host/?token=abc&x=1") == "https://host/?token=***&x=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("http://user@host") == "http://user@host"
    assert redact("http://me:p@ss@host/a@b") == "http://me:***@host/a@b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_one_line_error():
    uri = f"http://user:secret@127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError) as info:
        check_tracking_reachable(uri, timeout_s=2)
    message = str(info.value)
    assert message.startswith("MLflow tracking server http://user:***@127.0.0.1:") and "unreachable" in message
    assert "secret" not in message and "\n" not in message and message.endswith("start it or pass --mlflow-uri")


def test_reachable_server_answers_health():
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_reachable(f"http://127.0.0.1:{server.server_port}/", timeout_s=2)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/health"]


def test_sqlite_store_location_is_checked(tmp_path):
    check_tracking_reachable(f"sqlite:///{tmp_path}/new/folder/mlflow.db")  # creatable
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile is not a writable folder"):
        check_tracking_reachable(f"sqlite:///{tmp_path}/afile/mlflow.db")
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(ConfigError, match="is not a writable file"):
        check_tracking_reachable(f"sqlite:///{tmp_path}/adir.db")
    with pytest.raises(ConfigError, match="MLflow cannot use it as a tracking store"):
        check_tracking_reachable("ftp://127.0.0.1/store")


def test_experiments_open_on_the_runs_table_in_the_mlflow_ui(store):
    """MLflow 3's UI shows an experiment without mlflow.experimentKind as a GenAI (traces) page; ours say they are
    model training, new ones at creation and existing ones when a sweep next uses them."""
    client = MlflowClient(tracking_uri=store)
    SweepTracker(store, "pudm-kind-new")
    assert client.get_experiment_by_name("pudm-kind-new").tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("pudm-kind-old")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    SweepTracker(store, "pudm-kind-old")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_benchmark_parent_keeps_its_kind_when_resumed_and_is_not_listed_as_a_sweep(store):
    tracker = SweepTracker(store, "pudm-kind-bench")
    parent = tracker.start_sweep("bench", tags={}, params={}, kind="benchmark")
    again = SweepTracker(store, "pudm-kind-bench")  # what the Tune callback does in the driver
    assert again.start_sweep("bench", tags={}, params={}, resume_run_id=parent, kind="benchmark") == parent
    run = MlflowClient(tracking_uri=store).get_run(parent)
    assert run.data.tags["pudm.kind"] == "benchmark"
    assert len(list_sweeps(store, "pudm-kind-bench")) == 0
    with pytest.raises(ValueError, match="kind must be one of"):
        tracker.start_sweep("x", tags={}, params={}, kind="study")


def test_trial_coverage_table_plot_and_missing_classes_tag(tmp_path):
    from pudm_bench.scoring.diversity import class_coverage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "exp")
    tracker.start_sweep("cov", tags={}, params={})
    cov = class_coverage([0] * 30 + [2] * 10, [0, 1, 2] * 20, ("zero", "two", "four"))
    tracker.log_trial_coverage("t0", cov.rows(), "t0")
    tracker.log_trial_coverage("t0", cov.rows(), "t0")  # a resumed trial: replaced, not appended
    client = MlflowClient(tracking_uri=uri)
    run_id = tracker._child("t0")
    assert {"coverage.json", "coverage.png"} <= {a.path for a in client.list_artifacts(run_id)}
    table = json.loads(Path(client.download_artifacts(run_id, "coverage.json", str(tmp_path))).read_text())
    assert [row[0] for row in table["data"]] == ["zero", "two", "four"]  # one row per class, once
    assert client.get_run(run_id).data.tags["pudm.coverage_missing_classes"] == "two"


def test_load_sweep_applies_the_sweeps_objectives_and_constraints(tmp_path):
    """The parent's tags name a third objective and a constraint: the front read back is the sweep's own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "exp")
    parent = tracker.start_sweep("c", tags={"pudm.quality": "fd_classifier", "pudm.objectives": "recall",
                                            "pudm.constraints": "coverage_tv<=0.2"}, params={})
    rows = [("t0", 0.95, 1.0, 0.5, 0.30), ("t1", 0.90, 2.0, 0.9, 0.10), ("t2", 0.80, 3.0, 0.4, 0.05)]
    for tid, rate, q, recall, tv in rows:
        tracker.trial_run(tid, params={"method": "pu"}, tags={"pudm.role": "search"})
        tracker.log_trial_metrics(tid, {"non_sensitive_rate": rate, "fd_classifier": q, "recall": recall,
                                        "coverage_tv": tv})
        tracker.end_trial(tid, "FINISHED")
    tracker.end_sweep("FINISHED")
    info, trials = load_sweep(uri, parent)
    assert info["objectives"] == [("recall", "max")] and info["constraints"] == ["coverage_tv<=0.2"]
    trials = trials.set_index("trial_id")
    assert trials.feasible.tolist() == [False, True, True]
    assert trials.violations["t0"] == "coverage_tv<=0.2"
    # t0 would dominate (rate, quality) but breaks the constraint; t2 is dominated by t1 on every objective.
    assert trials.on_front.tolist() == [False, True, False]
    from pudm_bench.tracking.report import report_sweep

    text = report_sweep(uri, parent)
    assert "recall up" in text and "constraints coverage_tv<=0.2" in text
    assert "Trials that break a constraint" in text and "coverage_tv" in text
