"""``python -m pudm_bench.report`` on sweeps logged to a real SQLite store."""

from __future__ import annotations

import pytest

from pudm_bench.cli.report import main
from pudm_bench.tracking import SweepTracker
from tests.helpers import record_sweep

OTHER_TRIALS = [  # a second sweep: one front point at 0.99 / 20 that raises the common reference to 22
    ("u0", "search", "pu", 0.2, 1e-3, "FINISHED", 0.99, 20.0, None),
    ("u1", "search", "pu", 0.4, 1e-3, "FINISHED", 0.30, 2.0, None),
    ("ub", "baseline", "unsupervised", None, 1e-3, "FINISHED", 0.45, 2.5, None),
]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    first = record_sweep(uri, "pudm-digits_even", "first")
    second = record_sweep(uri, "pudm-digits_even", "second", OTHER_TRIALS)
    SweepTracker(uri, "pudm-empty")  # an experiment without sweeps
    return uri, first, second


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_latest_sweep_by_default(sweeps, capsys):
    uri, first, second = sweeps
    code, out, err = run(capsys, "--mlflow-uri", uri)
    assert code == 0 and err == ""
    assert f"run {second}" in out and "'second'" in out and "experiment 'pudm-digits_even'" in out


def test_one_sweep_front_baselines_and_hypervolume(sweeps, capsys):
    uri, first, _ = sweeps
    code, out, _ = run(capsys, "--mlflow-uri", uri, "--sweep", first)
    assert code == 0
    front = out.split("Pareto front", 1)[1].split("Baselines", 1)[0]
    assert "t0" in front and "t1" in front and "t2" not in front  # t2 is dominated by t1
    assert "fd_classifier" in front
    baselines = out.split("Baselines", 1)[1].split("Trials without a result", 1)[0]
    assert "unsupervised" in baselines and "supervised" in baselines
    assert "t3" in out.split("Trials without a result", 1)[1] and "NonFiniteLossError" in out
    # 0.9 * (15.4 - 10) + 0.6 * (10 - 4) = 8.46 against the logged reference (0, 1.1 * 14)
    assert "Hypervolume of the searched front: 8.46 (reference: non_sensitive_rate=0, fd_classifier=15.4" in out
    assert f"MLflow: {uri}" in out


def test_compare_uses_one_reference(sweeps, capsys):
    uri, first, second = sweeps
    code, out, _ = run(capsys, "--mlflow-uri", uri, "--compare", first, second)
    assert code == 0
    side_by_side = [line for line in out.splitlines() if "|" in line]
    assert any("t0" in line and "u0" in line for line in side_by_side)
    assert "common reference (non_sensitive_rate=0, fd_classifier=22" in out
    # A: 0.9 * (22 - 10) + 0.6 * (10 - 4) = 14.4; B: 0.99 * (22 - 20) + 0.3 * (20 - 2) = 7.38
    assert f"A {first}: 14.4" in out and f"B {second}: 7.38" in out


def test_sweeps_can_be_named_instead_of_run_ids(sweeps, capsys):
    uri, first, second = sweeps
    code, out, _ = run(capsys, "--mlflow-uri", uri, "--compare", "first", "second")
    assert code == 0 and f"A {first}: 14.4" in out and f"B {second}: 7.38" in out
    code, out, _ = run(capsys, "--mlflow-uri", uri, "--sweep", "first")
    assert code == 0 and f"run {first}" in out


def test_list(sweeps, capsys):
    uri, first, second = sweeps
    code, out, _ = run(capsys, "--mlflow-uri", uri, "--list")
    assert code == 0 and out.index(second) < out.index(first)


@pytest.mark.parametrize("argv, message", [
    (["--experiment", "pudm-empty"], "error: no sweeps in"),
    (["--experiment", "pudm-digits_evn"], "did you mean 'pudm-digits_even'"),
    (["--sweep", "0123456789abcdef0123456789abcdef"], "error: no sweep with run id"),
    (["--sweep", "frist"], "error: unknown sweep 'frist' (did you mean 'first'?)"),
])
def test_errors_are_one_line(sweeps, capsys, argv, message):
    uri, _, _ = sweeps
    code, out, err = run(capsys, "--mlflow-uri", uri, *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_missing_store_is_an_error_and_is_not_created(tmp_path, capsys):
    code, _, err = run(capsys, "--mlflow-uri", str(tmp_path / "none.db"))
    assert code == 2 and err.startswith("error: no MLflow store at") and not (tmp_path / "none.db").exists()


def test_empty_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    SweepTracker(uri, "pudm-digits_even")  # creates the store, no sweeps
    code, _, err = run(capsys, "--mlflow-uri", uri)
    assert code == 2 and err.splitlines()[-1].startswith(f"error: no sweeps in {uri}")  # above: MLflow's creation log
