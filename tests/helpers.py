"""Helpers shared by several test modules: files in the formats a test needs, a recorded sweep, a sweep that
loses a node, reading runs back from MLflow. One module, so no test imports another test module."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from pudm_bench.cli import benchmark
from pudm_bench.orchestration.cluster import LOCAL_TRAIN_ENV, STATE_API_ENV, TRAIN_ENV, dashboard_port
from pudm_bench.orchestration.settings import BenchmarkSettings
from pudm_bench.search.pareto import summarize
from pudm_bench.search.suites import load_suite
from pudm_bench.tracking import (
    SweepTracker,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-split.md"


def doc_yaml_blocks() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)]


def doc_split(name: str) -> dict:
    found = [block for block in doc_yaml_blocks() if block.get("name") == name]
    assert len(found) == 1, f"docs/adding-a-split.md has no single split named {name}"
    return found[0]


def write_pets(folder: Path, per_class: int = 75, height: int = 24, width: int = 20) -> None:
    """cats: horizontal stripes, dogs: vertical stripes, noisy grey PNGs of a non-square size (the adapter crops the
    centre square); easy for the referee, so the test is about the plumbing, not the classifier."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    patterns = {"cats": (ys % 4 < 2), "dogs": (xs % 4 < 2)}
    for class_name, pattern in patterns.items():
        (folder / class_name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(pattern * 180 + 40 + rng.normal(0, 25, pattern.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / class_name / f"{i:04d}.png")


def write_my_splits(folder: Path) -> Path:
    """The page's layout: my_splits/pets/ (the images) and my_splits/pets.yaml (the split, copied from the page)."""
    write_pets(folder / "pets")
    (folder / "pets.yaml").write_text(yaml.safe_dump(doc_split("pets_no_dogs"), sort_keys=False))
    return folder


ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def popen(module: str, args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **ENV, **(env or {})}, start_new_session=True, cwd=cwd)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def kill_group(proc: subprocess.Popen) -> None:
    """Whatever the command left running in its session (its Ray processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             every: float = 0.2):
    """Poll ``condition`` every ``every`` seconds. A condition that queries MLflow (a new client and a SQLite search)
    should poll about once a second: at 5 per second it takes a good share of a core from the sweep under test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def children(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return (client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def isolate_start_ray_env(monkeypatch) -> None:
    """start_ray sets these in its own process for the cluster it starts: unset during the test, and after it as
    they were before (monkeypatch.delenv alone would not remove a variable that was absent before the test)."""
    for name in ("RAY_USAGE_STATS_ENABLED", "TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_GLOBAL_CHECKPOINT_S",
                 "RAY_AUTH_MODE", "RAY_ADDRESS", STATE_API_ENV, *TRAIN_ENV, *LOCAL_TRAIN_ENV):
        monkeypatch.setenv(name, "")  # records the value before the test, or its absence
        monkeypatch.delenv(name)


@contextmanager
def another_local_ray_instance():
    """A second local Ray cluster (no CPUs, no dashboard) alive for the block, as when two sweeps, or a sweep and a
    benchmark, run on one machine: Ray's state API, asked with no address, then finds several GCS processes."""
    code = ("import sys, ray; ray.init(address='local', num_cpus=0, include_dashboard=False, log_to_driver=False); "
            "print('up', flush=True); sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert other.stdout.readline().strip() == "up", "the second Ray instance did not start"
        yield
    finally:
        other.stdin.close()  # its sys.stdin.read() returns: ray.shutdown() at exit stops its processes
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()


def sweep_losing_a_node(folder: Path, sweep_args: list[str], experiment: str, uri: str):
    """Run ``python -m pudm_bench.sweep`` (one trial) on a 3-node ``ray.cluster_utils.Cluster`` and
    remove, without warning, a worker node while it runs a trial's Train worker; results go to tracking ``uri``.
    Returns the sweep's output, the URI and the MLflow runs of ``experiment``: (text, uri, parents, runs).

    Used through the session fixture ``pets_sweep_losing_a_node`` (conftest), whose sweep also serves
    tests/test_adding_a_split.py: one cluster and one sweep for both tests.
    """
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # the cluster's processes inherit it
    temp = Path("/tmp") / f"pudm-nodes-{os.getpid()}"  # Ray's socket paths must stay short
    # The head node has no CPUs, so no Train worker can land on it (with one CPU there, Ray's scheduler put both
    # trials' workers on the head node in some runs, and the sweep ended before any worker node ran one). Three
    # worker nodes of one CPU each: the trial's own process (and its Train controller, which Ray Train keeps on the
    # same node) takes a sliver of one, its Train worker a whole CPU of another, and the third is where Ray Train
    # restarts the worker once that node is gone. The trial's worker is thus always on a worker node: the node is
    # lost during the trial, which finishes on the cluster that is left. (One trial: a second one, run after the
    # loss, cost ~20 s of the suite and showed nothing more.)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "temp_dir": str(temp), "include_dashboard": True,
                                      "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port()})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        log = folder / "sweep.log"
        proc = popen("pudm_bench.sweep", [*sweep_args, "--budget", "smoke", "--trials", "1", "--no-baselines",
                                          "--max-concurrent", "1", "--max-failures", "2", "--ray-address",
                                          cluster.address, "--storage", str(folder / "store"), "--mlflow-uri", uri,
                                          "--quiet"], log, cwd=folder)
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in [cluster.head_node, *nodes]}

        def node_of_a_worker():
            for worker in train_workers():
                try:
                    node = raylets.get(worker.ppid())
                except psutil.NoSuchProcess:
                    continue
                if node is not None and node is not cluster.head_node:
                    return node
            return None

        lost = wait_for(node_of_a_worker, 600, "a Train worker on a worker node", proc, log)
        # Lost while the trial runs: it has not finished yet.
        assert not [r for r in children(uri, experiment)[2] if r.info.status == "FINISHED"]
        cluster.remove_node(lost, allow_graceful=False)
        text = finish(proc, log, 900)
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _, parents, runs = children(uri, experiment)
    return text, uri, parents, runs


def write_pu_folder(root: Path, n_normal: int = 12, n_sensitive_u: int = 3, n_s: int = 5, n_eval: int = 10,
                    captions: bool = True) -> Path:
    """Bright images are normal, dark ones sensitive; 8x8 RGB PNGs; metadata.jsonl with captions and U's truth."""
    rng = np.random.default_rng(0)

    def save(folder: str, count: int, bright: bool) -> list[str]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        names = []
        for i in range(count):
            base = 160 if bright else 0
            pixels = (rng.integers(0, 90, size=(8, 8, 3)) + base).astype(np.uint8)
            name = f"{folder}/{'n' if bright else 's'}{i:03d}.png"
            Image.fromarray(pixels).save(root / name)
            names.append(name)
        return names

    unlabeled = save("0_unlabeled", n_normal, True) + save("0_unlabeled", n_sensitive_u, False)
    sensitive = save("1_sensitive", n_s, False)
    save("eval/normal", n_eval, True)
    save("eval/sensitive", n_eval, False)
    lines = []
    for i, name in enumerate(unlabeled):
        entry = {"file_name": name, "sensitive": "/s" in name}
        if captions:
            entry["text"] = "a photo of a man" if i % 2 == 0 else "a portrait of a man"
        lines.append(json.dumps(entry))
    lines += [json.dumps({"file_name": name, "text": "a photo of a man"}) for name in sensitive] if captions else []
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def read_back(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


TRIALS = [  # trial_id, role, method, beta, lr, status, rate, quality, error
    ("t0", "search", "pu", 0.1, 1e-3, "FINISHED", 0.90, 10.0, None),
    ("t1", "search", "pu", 0.5, 2e-3, "FINISHED", 0.60, 4.0, None),
    ("t2", "search", "pu", 0.9, 3e-3, "FINISHED", 0.50, 6.0, None),  # dominated by t1
    ("t3", "search", "pu", 0.3, 1e-4, "FAILED", None, None, "NonFiniteLossError: loss is nan at step 12"),
    ("b0", "baseline", "unsupervised", None, 1e-3, "FINISHED", 0.40, 3.0, None),
    ("b1", "baseline", "supervised", None, 1e-3, "FINISHED", 0.95, 14.0, None),
]


def trials_frame(trials, quality: str = "fd_classifier") -> pd.DataFrame:
    """What the sweep's ``results_frame`` gives the tracker: one row per trial."""
    rows = []
    for tid, role, method, beta, lr, status, rate, q, error in trials:
        rows.append({"trial_id": tid, "role": role, "method": method, "beta": beta, "lr": lr, "status": status,
                     "non_sensitive_rate": math.nan if rate is None else rate,
                     "quality": math.nan if q is None else q, quality: math.nan if q is None else q,
                     "excluded": rate is None, "error": error})
    return pd.DataFrame(rows)


def record_sweep(uri: str, experiment: str, name: str, trials=TRIALS, quality: str = "fd_classifier") -> str:
    """Log a finished sweep as the sweep's driver would; returns the parent run id."""
    tracker = SweepTracker(uri, experiment)
    parent = tracker.start_sweep(name, tags={"pudm.split": "digits_even", "pudm.quality": quality},
                                 params={"trials": len(trials), "seed": 0, "splits_dirs": ()})
    for tid, role, method, beta, lr, status, rate, q, error in trials:
        tracker.trial_run(tid, params={"method": method, "beta": beta, "lr": lr}, tags={"pudm.role": role})
        tracker.log_trial_metrics(tid, {"loss": 0.5, "step_seconds": 0.1}, step=10)
        if rate is not None:
            tracker.log_trial_metrics(tid, {"non_sensitive_rate": rate, "non_sensitive_rate_ci_low": rate - 0.05,
                                            "non_sensitive_rate_ci_high": min(rate + 0.05, 1.0), quality: q,
                                            "referee_balanced_accuracy": 0.97}, None)
        tracker.end_trial(tid, status, error)
    tracker.log_pareto(summarize(trials_frame(trials, quality)), quality)
    tracker.end_sweep("FINISHED")
    return parent


def settings_for(suite_file: Path, tmp_path: Path, *extra: str) -> BenchmarkSettings:
    args = benchmark.build_parser().parse_args(["--suite", str(suite_file), "--storage", str(tmp_path / "runs"),
                                                "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra])
    return benchmark.settings_from_args(args, load_suite(args.suite))


def write_suite(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_rate_is_a_scored_count(metrics: dict, num_samples: int) -> None:
    """The non-sensitive rate is k / n for the n samples scored, and its interval is the Wilson interval of k of n:
    what a wrong count, a wrong denominator or a value set by hand fails (a range check, 0 <= rate <= 1, cannot)."""
    from pudm_bench.scoring.evaluate import wilson_interval

    rate = metrics["non_sensitive_rate"]
    called_normal = round(rate * num_samples)
    assert rate == pytest.approx(called_normal / num_samples, abs=1e-9), (rate, num_samples)
    if "non_sensitive_rate_ci_low" in metrics:
        assert (metrics["non_sensitive_rate_ci_low"], metrics["non_sensitive_rate_ci_high"]) == pytest.approx(
            wilson_interval(called_normal, num_samples))


def assert_coverage_matches_its_histogram(metrics: dict, rows: list[dict]) -> None:
    """coverage_tv is half the L1 distance between the sample and expected class shares of the logged histogram,
    and coverage_missing counts its classes flagged missing (under half their share)."""
    assert metrics["coverage_tv"] == pytest.approx(
        0.5 * sum(abs(r["sample_share"] - r["expected_share"]) for r in rows), abs=1e-9)
    assert metrics["coverage_missing"] == sum(bool(r["missing"]) for r in rows)
    for r in rows:
        assert r["missing"] == (r["sample_share"] < 0.5 * r["expected_share"])
