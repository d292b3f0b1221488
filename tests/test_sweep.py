"""The sweep: settings and their errors (no Ray needed), the Optuna study's two objectives, and end-to-end smoke
sweeps on a local Ray cluster and on a cluster started separately, read back through the MLflow client."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pudm_bench.cli.sweep import build_parser, main, settings_from_args
from pudm_bench.data.splits import get_split
from pudm_bench.orchestration import sweep as sweep_driver
from pudm_bench.orchestration import trial, worker
from pudm_bench.orchestration.searchers import make_searcher
from pudm_bench.orchestration.settings import check_resume
from pudm_bench.orchestration.trial import trial_train_config
from pudm_bench.search.budgets import budget_for
from pudm_bench.search.space import BASELINE_METHODS, load_search_space
from tests.helpers import (
    another_local_ray_instance,
    assert_coverage_matches_its_histogram,
    assert_rate_is_a_scored_count,
    isolate_start_ray_env,
    read_back,
)

ROOT = Path(__file__).resolve().parents[1]


def settings(tmp_path, *extra):
    args = build_parser().parse_args(["--storage", str(tmp_path / "store"), "--mlflow-uri",
                                      str(tmp_path / "mlflow.db"), *extra])
    return settings_from_args(args)


def test_default_settings_pick_digits_and_fd_per_class(tmp_path):
    s = settings(tmp_path)
    assert s.split == "digits_even" and s.quality == "fd_per_class" and s.budget == "cpu"
    assert s.experiment == "pudm-digits_even" and s.mlflow_uri.startswith("sqlite:///")
    assert s.gpus_per_worker is None  # auto: decided from the Ray cluster once it is up
    assert settings(tmp_path, "--dataset", "stl10").split == "stl10_vehicles"
    assert settings(tmp_path, "--dataset", "stl10").quality == "fid"


def test_trial_configs_combine_budget_space_and_trial(tmp_path):
    s = settings(tmp_path, "--budget", "smoke")
    split, space = get_split(s.split), load_search_space(s.search_space)
    budget = budget_for("smoke", split)
    searched = trial_train_config(s, split, space, budget, {"beta": 0.2, "correction": "max", "lr": 5e-4})
    assert (searched.method, searched.beta, searched.correction, searched.lr) == ("pu", 0.2, "max", 5e-4)
    assert searched.steps == budget.steps and searched.batch_size == budget.batch_size
    baseline = trial_train_config(s, split, space, budget, {"method": "unsupervised", "beta": None,
                                                            "correction": None, "lr": budget.lr})
    assert baseline.method == "unsupervised" and baseline.beta is None and baseline.steps == budget.steps


def test_optuna_study_has_two_directions(tmp_path):
    """metric/mode must not also be set on TuneConfig: the study would silently become single-objective."""
    import optuna

    s = settings(tmp_path, "--budget", "smoke")
    space = load_search_space(s.search_space)
    searcher = make_searcher(s, space, budget_for("smoke", get_split(s.split)))
    searcher.set_search_properties(None, None, {})
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["method"] for c in first[:2]] == list(BASELINE_METHODS)
    assert "method" not in first[2] and 0 < first[2]["beta"] < 1
    assert searcher.inner.study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                                   optuna.study.StudyDirection.MINIMIZE]


def test_extra_objectives_and_constraints_reach_optuna(tmp_path):
    """--objective adds a direction to the study; --constraint gives Optuna's sampler each trial's constraint values
    (<= 0: satisfied), which Optuna stores on the trial."""
    import optuna

    s = settings(tmp_path, "--budget", "smoke", "--no-baselines", "--no-default-constraints", "--objective", "recall", "--objective",
                 "coverage_tv", "--constraint", "coverage_tv<=0.15", "--constraint", "precision >= 0.5")
    assert s.objectives == ("recall", "coverage_tv") and s.constraints == ("coverage_tv<=0.15", "precision>=0.5")
    space = load_search_space(s.search_space)
    searcher = make_searcher(s, space, budget_for("smoke", get_split(s.split)))
    searcher.set_search_properties(None, None, {})
    study = searcher.inner.study
    D = optuna.study.StudyDirection
    assert study.directions == [D.MAXIMIZE, D.MINIMIZE, D.MAXIMIZE, D.MINIMIZE]
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"non_sensitive_rate": 0.9, "fd_per_class": 2.0, "recall": 0.7,
                                      "coverage_tv": 0.1, "precision": 0.8})
    searcher.on_trial_complete("t1", {"non_sensitive_rate": 0.99, "fd_per_class": 1.0, "recall": 0.4,
                                      "coverage_tv": 0.4, "precision": 0.3})
    searcher.on_trial_complete("t2", worker.failed_result("RuntimeError: boom"))  # NaN for every objective
    trials = {t.number: t for t in study.trials}
    assert trials[0].constraints == pytest.approx({"coverage_tv<=0.15": 0.1 - 0.15, "precision>=0.5": 0.5 - 0.8})
    assert trials[1].constraints == pytest.approx({"coverage_tv<=0.15": 0.4 - 0.15, "precision>=0.5": 0.5 - 0.3})
    assert trials[0].state == trials[1].state == optuna.trial.TrialState.COMPLETE
    assert trials[2].state == optuna.trial.TrialState.FAIL  # not left RUNNING in the study
    # Feasible (every constraint value <= 0, what Optuna's constrained samplers read): trial 0 only.
    assert [n for n in (0, 1) if all(v <= 0 for v in trials[n].constraints.values())] == [0]


@pytest.mark.parametrize("args,message", [
    (["--objective", "recal"], "did you mean 'recall'"),
    (["--objective", "fd_per_class"], "already an objective"),
    (["--constraint", "coverage_tv<0.15"], "operator '<' is not allowed"),
    (["--constraint", "coverage<=0.15"], "unknown metric 'coverage'"),
    (["--constraint", "coverage_tv is small"], "expected METRIC<=NUMBER"),
])
def test_bad_objectives_and_constraints(tmp_path, args, message):
    from pudm_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, *args)


def test_default_constraints_are_those_the_split_and_budget_measure(tmp_path):
    """Coverage needs two normal classes and a budget that scores diversity; realism is scored everywhere."""
    assert settings(tmp_path).constraints == ("coverage_missing<=0", "realistic_share>=0.5")
    assert settings(tmp_path, "--no-default-constraints").constraints == ()
    mine = settings(tmp_path, "--constraint", "recall>=0.5", "--constraint", "realistic_share>=0.5")
    assert mine.constraints == ("coverage_missing<=0", "realistic_share>=0.5", "recall>=0.5") and mine.default_constraints
    assert settings(tmp_path, "--dataset", "stl10", "--budget", "smoke").constraints == ("realistic_share>=0.5",)
    assert settings(tmp_path, "--dataset", "celeba").constraints == ("realistic_share>=0.5",)  # one normal class
    # What Optuna is told: each default constraint is a constraint of the study's trials.
    s = settings(tmp_path, "--budget", "smoke")
    assert [str(c) for c in make_searcher(s, load_search_space(s.search_space),
                                          budget_for("smoke", get_split(s.split))).constraints] == list(s.constraints)


def test_resume_accepts_a_sweep_file_written_before_a_setting_existed(tmp_path):
    """sweep.json of a sweep started before --objective/--constraint existed has no such keys: it had the defaults."""
    from dataclasses import asdict

    from pudm_bench.errors import ConfigError

    s = settings(tmp_path, "--budget", "smoke", "--no-default-constraints")
    old = {k: v for k, v in asdict(s).items() if k not in ("objectives", "constraints", "default_constraints")}
    s.state_file.parent.mkdir(parents=True)
    s.state_file.write_text(json.dumps(old))
    check_resume(s, resume=True)  # no error
    with pytest.raises(ConfigError, match=r"constraints: \(\) -> \('recall>=0.5',\)"):
        check_resume(settings(tmp_path, "--budget", "smoke", "--constraint", "recall>=0.5",
                              "--no-default-constraints"), resume=True)
    # A sweep started before the default constraints existed had none: resumed with them, it is refused in one line
    # that names them (--no-default-constraints resumes it, above).
    with pytest.raises(ConfigError, match=r"constraints: \(\) -> \('coverage_missing<=0', 'realistic_share>=0.5'\)"):
        check_resume(settings(tmp_path, "--budget", "smoke"), resume=True)


def test_inception_metrics_turn_fid_on_and_need_its_weights(tmp_path, capsys):
    """--objective fid or a *_inception constraint on digits (quality fd_per_class): trials compute Inception
    features, so the weights are checked before anything runs."""
    plain = settings(tmp_path, "--budget", "smoke")
    assert trial.eval_config(plain, budget_for("smoke", get_split(plain.split))).fid == "off"
    for extra in (["--objective", "fid"], ["--constraint", "recall_inception>=0.3"]):
        s = settings(tmp_path, "--budget", "smoke", *extra)
        assert trial.eval_config(s, budget_for("smoke", get_split(s.split))).fid == "on"
        code = main(["--storage", str(tmp_path / "store"), "--budget", "smoke", "--mlflow-uri",
                     str(tmp_path / "mlflow.db"), *extra])
        assert code == 2 and "Inception weights for FID not found" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_diversity_constraints_need_a_budget_that_scores_them(tmp_path, capsys):
    code = main(["--storage", str(tmp_path / "store"), "--budget", "smoke", "--dataset", "stl10", "--quality",
                 "fd_classifier", "--objective", "recall", "--mlflow-uri", str(tmp_path / "mlflow.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the smoke budget does not score" in err and "--budget cpu" in err
    smoke = budget_for("smoke", get_split("stl10_vehicles"))
    assert smoke.diversity == "off" and budget_for("smoke", get_split("digits_even")).diversity == "auto"
    assert budget_for("cpu", get_split("stl10_vehicles")).diversity == "auto"


def test_coverage_needs_two_normal_classes(tmp_path, capsys):
    store = tmp_path / "store"
    code = main(["--storage", str(store), "--budget", "smoke", "--splits-dir", str(ROOT / "tests" / "fixtures" / "splits"),
                 "--split", "digits_three_vs_eight", "--constraint", "coverage_tv<=0.2", "--mlflow-uri",
                 str(tmp_path / "mlflow.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "one normal class (three)" in err and "\n" not in err
    assert not store.exists()


def test_seeded_sampler_proposes_the_same_configs(tmp_path):
    proposals = []
    for _ in range(2):
        s = settings(tmp_path, "--no-baselines")
        space = load_search_space(s.search_space)
        searcher = make_searcher(s, space, budget_for("cpu", get_split(s.split)))
        searcher.set_search_properties(None, None, {})
        proposals.append([searcher.suggest(f"t{i}") for i in range(4)])
    assert proposals[0] == proposals[1]


def test_searcher_state_survives_tunes_save_and_restore(tmp_path):
    """Through Tune's own save_to_dir / restore_from_dir (what a resumed sweep uses): the restored searcher knows
    which baselines it handed out and continues Optuna's sequence exactly."""
    s = settings(tmp_path, "--budget", "smoke")
    space = load_search_space(s.search_space)

    def fresh():
        searcher = make_searcher(s, space, budget_for("smoke", get_split(s.split)))
        searcher.set_search_properties(None, None, {})
        return searcher

    original = fresh()
    handed_out = [original.suggest(f"t{i}") for i in range(3)]  # both baselines, then one Optuna proposal
    original.on_trial_complete("t2", {"non_sensitive_rate": 0.9, "quality": 2.0})
    (tmp_path / "state").mkdir()
    original.save_to_dir(str(tmp_path / "state"), session_str="s1")
    restored = fresh()
    restored.restore_from_dir(str(tmp_path / "state"))
    assert restored.pending == [] and restored.baseline_trials == {"t0", "t1"}
    assert [restored.suggest(f"t{i}") for i in range(3, 6)] == [original.suggest(f"t{i}") for i in range(3, 6)]
    assert "method" not in handed_out[2]


def test_a_trial_running_when_the_sweep_stopped_is_told_to_the_study_after_resume(tmp_path):
    """Tune resumes an unfinished trial with its config and completes it on the restored searcher: the study trial
    it was asked as gets its values and constraint values (not a new trial, not left RUNNING)."""
    import optuna

    s = settings(tmp_path, "--budget", "smoke", "--no-baselines", "--no-default-constraints", "--constraint",
                 "recall>=0.5")
    space = load_search_space(s.search_space)
    original = make_searcher(s, space, budget_for("smoke", get_split(s.split)))
    config = original.suggest("t0")
    (tmp_path / "state").mkdir()
    original.save_to_dir(str(tmp_path / "state"), session_str="s1")
    restored = make_searcher(s, space, budget_for("smoke", get_split(s.split)))  # a new driver process
    restored.restore_from_dir(str(tmp_path / "state"))
    restored.on_trial_complete("t0", {"non_sensitive_rate": 0.8, "fd_per_class": 3.0, "recall": 0.7})
    study = optuna.load_study(study_name=s.name, storage=f"sqlite:///{s.run_dir / 'optuna.db'}")
    (only,) = study.trials
    assert only.state == optuna.trial.TrialState.COMPLETE and only.values == [0.8, 3.0]
    assert only.params == config and only.constraints == pytest.approx({"recall>=0.5": 0.5 - 0.7})
    # Asked after the last saved state (Tune runs it again under a new id): closed as failed on the next restore.
    restored.suggest("t1")
    restored.save_to_dir(str(tmp_path / "state"), session_str="s2")
    restored.suggest("t2")
    again = make_searcher(s, space, budget_for("smoke", get_split(s.split)))
    again.restore_from_dir(str(tmp_path / "state"))
    states = {t.number: t.state for t in optuna.load_study(study_name=s.name, storage=f"sqlite:///{s.run_dir / 'optuna.db'}").trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.RUNNING,
                      2: optuna.trial.TrialState.FAIL}
    assert set(again.inner.trials) == {"t1"}


def test_the_search_space_yaml_becomes_optuna_distributions(tmp_path):
    """Each kind maps to Optuna's own distribution: log scale for loguniform, the step for int, choices as listed."""
    import optuna.distributions as od

    from pudm_bench.search.distributions import Choice, IntRange, LogUniform, Uniform

    assert Uniform(0.05, 0.3).to_optuna() == od.FloatDistribution(0.05, 0.3)
    assert LogUniform(1e-4, 1e-2).to_optuna() == od.FloatDistribution(1e-4, 1e-2, log=True)
    assert IntRange(32, 128, 32).to_optuna() == od.IntDistribution(32, 128, step=32)
    assert Choice(("abs", "max")).to_optuna() == od.CategoricalDistribution(("abs", "max"))
    s = settings(tmp_path, "--budget", "smoke", "--no-baselines")
    searcher = make_searcher(s, load_search_space(s.search_space), budget_for("smoke", get_split(s.split)))
    assert searcher.inner.distributions == {k: d.to_optuna() for k, d in load_search_space(s.search_space).params.items()}


def test_dry_run_prints_resources_and_locations(tmp_path, capsys):
    assert main(["--dry-run", "--storage", str(tmp_path / "store"), "--workers-per-trial", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resources_per_trial"]["train_workers"] == 2
    assert out["results"]["sweep_dir"].startswith(str(tmp_path / "store"))
    assert out["trials"]["baselines"] == list(BASELINE_METHODS)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args,message", [
    (["--split", "digits_evn"], "did you mean 'digits_even'"),
    (["--trials", "0"], "--trials=0 is invalid"),
    (["--workers-per-trial", "0"], "--workers-per-trial=0 is invalid"),
    (["--gpus-per-worker", "lots"], "--gpus-per-worker='lots' is invalid"),
    (["--name", "../escape"], "--name='../escape' is invalid"),
    (["--resume"], "no earlier sweep named"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "unreachable"),
    (["--storage", "s3://bucket/runs"], "URIs are not supported"),
])
def test_bad_input_fails_before_anything_runs(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    code = main(["--storage", str(store), "--budget", "smoke", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not store.exists()


# --------------------------------------------------------------------------------------------- end to end




def run_cli(args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "pudm_bench.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


CONSTRAINTS = ("coverage_missing<=0", "realistic_share>=0.5", "coverage_tv<=0.5")  # the defaults first, then the user's


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory, session_referees):
    """One smoke sweep for the end-to-end tests below, each of which asserts one concern of its outcome: 1 searched
    trial with 2 Train workers (DDP over gloo) + 2 baselines, 2 trials at once on 4 logical CPUs; a search space that
    centres beta on its estimate (the driver estimates it before any trial); a third objective and a constraint, so
    every trial is scored for coverage and precision/recall; the searched trial fine-tunes the unsupervised baseline
    (``--warm-start baseline``: the baselines ran first anyway, so this costs the fixture nothing). The referees this
    session has trained are loaded from the sweep's cache, not trained again (tests/test_referee.py and
    tests/test_diversity.py test their training)."""
    tmp = tmp_path_factory.mktemp("digits_sweep")
    session_referees(tmp / "store" / "digits_even-beta_auto-smoke-s0" / "cache")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    done = run_cli(["--budget", "smoke", "--trials", "1", "--max-concurrent", "2", "--workers-per-trial", "2",
                    "--num-cpus", "4", "--storage", str(tmp / "store"), "--mlflow-uri", uri, "--quiet",
                    "--search-space", str(ROOT / "search_spaces" / "beta_auto.yaml"),
                    "--objective", "recall", "--constraint", "coverage_tv<=0.5", "--warm-start", "baseline"])
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, children = read_back(uri, "pudm-digits_even")
    assert len(parents) == 1 and len(children) == 3
    searched = next(c for c in children if c.data.tags["pudm.role"] == "search")
    return SimpleNamespace(out=done.stdout, tmp=tmp, client=client, parent=parents[0], children=children,
                           searched=searched, sweep_dir=tmp / "store" / "digits_even-beta_auto-smoke-s0")


@pytest.mark.slow
def test_the_sweep_prints_its_front_baselines_objectives_and_constraints(digits_sweep):
    out = digits_sweep.out
    assert "Pareto front" in out and "Baselines" in out
    assert "recall up" in out and f"constraints {', '.join(CONSTRAINTS)}" in out
    assert "[prepare] digits_even referee (normal vs sensitive): " in out
    assert "[prepare] warm start: each searched trial fine-tunes the unsupervised baseline for 7 steps" in out


@pytest.mark.slow
def test_one_parent_run_and_one_child_run_per_trial(digits_sweep):
    client, parent, children = digits_sweep.client, digits_sweep.parent, digits_sweep.children
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pudm.split"] == "digits_even" and len(parent.data.tags["pudm.split_fingerprint"]) == 16
    assert "hypervolume" in parent.data.metrics
    assert {"pareto_front.csv", "pareto.png", "all_trials.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len({c.data.tags["pudm.trial_id"] for c in children}) == 3
    assert sorted(c.data.params.get("method", "pu") for c in children) == ["pu", "supervised", "unsupervised"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert "beta" in digits_sweep.searched.data.params and "correction" in digits_sweep.searched.data.params
    for child in children:  # training curves, logged by step
        assert len(client.get_metric_history(child.info.run_id, "loss")) >= 2


@pytest.mark.slow
def test_the_optuna_study_in_the_sweep_folder_holds_what_mlflow_has(digits_sweep):
    import optuna

    sweep_dir, searched = digits_sweep.sweep_dir, digits_sweep.searched
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MAXIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # the searched trial only: baselines are not told
    (trial,) = study.trials
    assert trial.values == pytest.approx([searched.data.metrics[m] for m in ("non_sensitive_rate", "fd_per_class", "recall")])
    assert trial.params["beta"] == pytest.approx(float(searched.data.params["beta"]))
    assert set(trial.constraints) == set(CONSTRAINTS)


@pytest.mark.slow
def test_every_trial_is_scored_from_its_samples(digits_sweep):
    client = digits_sweep.client
    for child in digits_sweep.children:
        metrics = child.data.metrics
        assert metrics["num_samples"] == budget_for("smoke", get_split("digits_even")).num_samples
        assert_rate_is_a_scored_count(metrics, int(metrics["num_samples"]))
        assert metrics["fd_classifier"] >= 0 and metrics["referee_balanced_accuracy"] >= 0.9
        assert metrics["class_referee_balanced_accuracy"] >= 0.9
        # precision and recall: shares of n = min(samples, real images) = the samples, each a count of them (a smoke
        # model's samples may cover no real image at all: recall 0 is a valid score, not a failure)
        for name in ("precision", "recall"):
            assert 0.0 <= metrics[name] <= 1.0
            assert metrics[name] * metrics["num_samples"] == pytest.approx(round(metrics[name] * metrics["num_samples"]))
        assert 0.0 <= metrics["realistic_non_sensitive_rate"] <= metrics["non_sensitive_rate"]
        assert {"samples.png", "coverage.json", "coverage.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}


@pytest.mark.slow
def test_every_trial_logs_its_class_coverage_histogram(digits_sweep):
    client, tmp = digits_sweep.client, digits_sweep.tmp
    for child in digits_sweep.children:
        (tmp / child.info.run_id).mkdir(exist_ok=True)
        histogram = json.loads(Path(client.download_artifacts(child.info.run_id, "coverage.json",
                                                              str(tmp / child.info.run_id))).read_text())
        rows = [dict(zip(histogram["columns"], row)) for row in histogram["data"]]
        assert [r["class"] for r in rows] == ["zero", "two", "four", "six", "eight"]
        missing = [r["class"] for r in rows if r["missing"]]
        assert child.data.tags["pudm.coverage_missing_classes"] == ", ".join(missing)
        assert_coverage_matches_its_histogram(child.data.metrics, rows)


@pytest.mark.slow
def test_beta_auto_is_estimated_once_and_bounds_the_searched_beta(digits_sweep):
    """The estimate and its uncertainty on the parent run and in prior.json; the searched beta within
    [estimate / 2, 2 x estimate] (beta_auto.yaml)."""
    parent, searched = digits_sweep.parent, digits_sweep.searched
    estimate = parent.data.metrics["prior_estimate"]
    assert 0 < estimate < 1 and parent.data.metrics["prior_std"] >= 0
    assert parent.data.metrics["prior_ci_low"] <= estimate <= parent.data.metrics["prior_ci_high"]
    assert parent.data.params["beta_range"].startswith("LogUniform(")
    assert json.loads((digits_sweep.sweep_dir / "prior.json").read_text())["prior_estimate"] == pytest.approx(estimate)
    assert 0.5 * estimate - 1e-6 <= float(searched.data.params["beta"]) <= 2 * estimate + 1e-6


@pytest.mark.slow
def test_constraints_decide_feasibility_and_keep_infeasible_trials_off_the_front(digits_sweep):
    """Each trial is feasible exactly when it meets every constraint; the front holds feasible trials only; the parent
    records the extra objective, the constraints and the number of infeasible trials."""
    client, parent, tmp = digits_sweep.client, digits_sweep.parent, digits_sweep.tmp
    assert parent.data.tags["pudm.objectives"] == "recall" and parent.data.tags["pudm.constraints"] == ";".join(CONSTRAINTS)
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "all_trials.csv", str(tmp)))
    assert {"recall", "coverage_tv", "precision"} <= set(table.columns)
    by_id = {c.data.tags["pudm.trial_id"]: c.data.metrics for c in digits_sweep.children}
    for row in table.itertuples():
        m = by_id[row.trial_id]
        assert bool(row.feasible) == (m["coverage_tv"] <= 0.5 and m["coverage_missing"] == 0
                                      and m["realistic_share"] >= 0.5)
        assert not row.on_front or row.feasible
    assert parent.data.metrics["n_infeasible"] == int((~table.feasible.astype(bool)).sum())


@pytest.mark.slow
def test_the_searched_trial_fine_tunes_the_unsupervised_baseline_after_it_finished(digits_sweep, tmp_path):
    """--warm-start baseline: init_from is the unsupervised baseline's final checkpoint, logged as a param; the
    searched trial trained a third of the smoke budget's 20 steps and started after its source had finished."""
    client, searched = digits_sweep.client, digits_sweep.searched
    source = next(c for c in digits_sweep.children if c.data.params.get("method") == "unsupervised")
    final = digits_sweep.sweep_dir / "train" / f"trial-{source.data.tags['pudm.trial_id']}" / "final"
    assert searched.data.params["init_from"] == str(final) and (final / "pipeline" / "unet").is_dir()
    assert searched.data.params["warm_start"] == "unsupervised"
    saved = json.loads(Path(client.download_artifacts(searched.info.run_id, "train_config.json", str(tmp_path))).read_text())
    assert saved["init_from"] == str(final) and saved["steps"] == 7 and saved["log_every"] == 3
    assert searched.info.start_time >= source.info.end_time
    assert [int(m.step) for m in client.get_metric_history(searched.info.run_id, "loss")] == [3, 6, 7]


@pytest.mark.slow
def test_two_train_workers_train_like_one_process(digits_sweep, tmp_path):
    """The searched trial ran on 2 Ray Train workers (DDP over gloo, global batch 32): the losses it logged equal
    those of the training loop in one process with the trial's own config (global-batch PU risk, training/distributed.py)."""
    import torch

    from pudm_bench.data.build import build_split
    from pudm_bench.training.config import TrainConfig
    from pudm_bench.training.loop import Callback, train

    client, searched = digits_sweep.client, digits_sweep.searched
    assert digits_sweep.parent.data.params["workers_per_trial"] == "2"
    saved = json.loads(Path(client.download_artifacts(searched.info.run_id, "train_config.json", str(tmp_path))).read_text())
    config = TrainConfig.from_dict(saved)
    assert config.method == "pu" and config.beta is not None
    logged = {int(m.step): m.value for m in client.get_metric_history(searched.info.run_id, "loss")}

    class Record(Callback):
        def __init__(self) -> None:
            self.losses: dict[int, float] = {}

        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            self.losses[step] = metrics["loss"]

    record = Record()
    torch.set_num_threads(1)
    split = build_split(get_split(config.split), seed=config.split_seed)
    train(config, split, tmp_path / "one", callbacks=[record], resume=False)
    assert sorted(logged) == sorted(record.losses) and len(logged) >= 2
    assert [logged[s] for s in sorted(logged)] == pytest.approx([record.losses[s] for s in sorted(logged)], rel=1e-4)


STL10_VEHICLES = (0, 2, 8, 9)  # airplane, car, ship, truck in torchvision's STL10 class order


def separable_stl10(rng, labels):
    """Bright images for vehicles, dark ones for animals: a referee learns it in one epoch (the plumbing is under
    test here, not the referee)."""
    bright = np.isin(labels, STL10_VEHICLES)[:, None, None, None]
    noise = rng.integers(0, 100, size=(len(labels), 3, 96, 96), dtype=np.uint8)  # uint8 throughout: 5x faster
    return np.where(bright, noise + np.uint8(155), noise)


@pytest.mark.slow
def test_smoke_sweep_on_stl10_files_in_torchvision_format(tmp_path, mlflow_store):
    """stl10_vehicles with 400 normal test images instead of 3,200 (2,000 + 200 U, 200 S; a split file of the user's
    beside it) from STL10 binaries the test writes. The shipped split's 3,200 cost ~20 s of referee features twice
    (its held-out accuracy, the trial's quality) and show nothing more; their count is checked in
    tests/data/test_splits.py."""
    from tests.dataset_files import write_stl10

    data = tmp_path / "data"
    train = [c for c in STL10_VEHICLES for _ in range(500)] + [c for c in (1, 3, 4, 5, 6, 7) for _ in range(70)]
    test = [c for c in STL10_VEHICLES for _ in range(100)] + [c for c in (1, 3, 4, 5, 6, 7) for _ in range(10)]
    write_stl10(data, train, test, make_images=separable_stl10)
    splits = tmp_path / "splits"
    splits.mkdir()
    split = yaml.safe_load(Path(get_split("stl10_vehicles").source).read_text())
    split["counts"]["normal_test"] = 400
    (splits / "stl10_vehicles_400.yaml").write_text(yaml.safe_dump({**split, "name": "stl10_vehicles_400"}))
    uri = mlflow_store  # an empty store, copied (conftest)
    # The sweep and its Ray workers are other processes: the md5 relaxation reaches them via sitecustomize.
    relaxed = str(Path(__file__).parent / "fixtures" / "relaxed_md5")
    pythonpath = os.pathsep.join(p for p in (relaxed, os.environ.get("PYTHONPATH", "")) if p)
    done = run_cli(["--split", "stl10_vehicles_400", "--splits-dir", str(splits), "--budget", "smoke", "--trials", "1",
                    "--no-baselines", "--quality", "fd_classifier", "--data-dir", str(data),
                    "--storage", str(tmp_path / "store"), "--mlflow-uri", uri, "--quiet"], env={"PYTHONPATH": pythonpath})
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, children = read_back(uri, "pudm-stl10_vehicles_400")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert parents[0].data.tags["pudm.dataset"] == "stl10"
    assert_rate_is_a_scored_count(children[0].data.metrics, int(children[0].data.metrics["num_samples"]))
    assert "coverage_tv" not in children[0].data.metrics  # the smoke budget scores no coverage away from digits


@pytest.mark.slow
@pytest.mark.timeout(600)  # a worker group that never starts (an overloaded machine) fails the test, not the suite
def test_stopping_trials_early_frees_their_train_workers(tmp_path, monkeypatch):
    """More trials than fit at once, each stopped after its first report while its Train worker still runs: the
    second trial runs only once the first has freed its worker, and all CPUs are free again afterwards (Ray 2.60
    needed ray[default] for this) — also while a second Ray instance runs on the machine, where Ray Train's
    placement-group cleaner failed ("Found multiple active Ray instances") until start_ray pinned its state API."""
    import ray
    from ray import tune

    from pudm_bench.orchestration.cluster import start_ray

    # --placement-timeout: the second trial waits for the first one's CPU, and on a busy machine a Train worker can
    # take longer to start than Ray Train's default 60 s, which would restart the worker group, again and again,
    # instead of waiting; if the first trial never freed its worker, the second fails after 300 s and so does this.
    s = settings(tmp_path, "--budget", "smoke", "--gpus-per-worker", "0", "--placement-timeout", "300")
    isolate_start_ray_env(monkeypatch)  # start_ray sets variables in this process for its cluster

    @ray.remote(num_cpus=0)
    def nodes_seen_by_the_state_api():
        import ray.util.state
        # Raised "Found multiple active Ray instances" before start_ray pointed its processes at their own cluster.
        return [node.node_id for node in ray.util.state.list_nodes()]

    with another_local_ray_instance():
        start_ray(None, 2, 0)  # the sweep's own start-up: a local cluster whose processes know their dashboard
        try:
            assert ray.get(nodes_seen_by_the_state_api.remote()) == [ray.get_runtime_context().get_node_id()]
            # Two trials' own processes hold 1 of the 2 CPUs, so one 1-CPU Train worker fits at a time: the second
            # trial waits for the first one's worker (a third trial would only repeat that, ~15 s).
            trainable = tune.with_resources(tune.with_parameters(trial.run_trial, settings=s), {"cpu": 0.5})
            tuner = tune.Tuner(
                trainable,
                param_space={"beta": tune.uniform(0.05, 0.3), "correction": "abs", "lr": 1e-3},
                tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=2),
                run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), stop={"training_iteration": 1},
                                          verbose=0),
            )
            results = tuner.fit()
            assert len(results) == 2
            assert all(r.metrics.get("phase") == "train" for r in results)  # stopped during training, not after
            deadline = time.time() + 90
            while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
                time.sleep(1)
            assert ray.available_resources().get("CPU", 0) == pytest.approx(2)
        finally:
            ray.shutdown()


def test_train_workers_do_not_log_every_report():
    """Ray 2.60's Train context logs each report at INFO through a logger named after its file; train_worker
    silences exactly that logger (this fails if Ray renames it, and the sweep's output would flood again)."""
    import logging

    from ray.train.v2._internal.execution import context as train_context

    from pudm_bench.orchestration.worker import _quiet_train_reports

    _quiet_train_reports()
    assert not train_context.logger.isEnabledFor(logging.INFO)
    assert train_context.logger.isEnabledFor(logging.WARNING)


def test_sweep_prior_is_estimated_once_and_kept_for_resume(tmp_path, monkeypatch):
    from pudm_bench.prior import estimate as prior_module

    s = settings(tmp_path, "--budget", "smoke", "--search-space", str(ROOT / "search_spaces" / "beta_auto.yaml"))
    split = get_split(s.split)
    budget = budget_for("smoke", split)
    first = sweep_driver.sweep_prior(s, split, budget)
    assert 0 < first["prior_estimate"] < 1 and first["prior_true"] == pytest.approx(60 / 660)
    assert (s.run_dir / "prior.json").is_file()
    monkeypatch.setattr(prior_module, "estimate_prior", lambda *a, **k: pytest.fail("estimated twice"))
    assert sweep_driver.sweep_prior(s, split, budget) == first
    space = load_search_space(s.search_space).resolve_prior(first["prior_estimate"])
    domain = space.params["beta"].to_optuna()
    assert domain.low == pytest.approx(first["prior_estimate"] / 2, rel=1e-4)


def test_searched_trials_log_the_search_spaces_fixed_values(tmp_path):
    """A search space that fixes a value (narrow_beta.yaml: correction abs) still shows it on every searched
    trial's MLflow run; baselines do not get it."""
    from types import SimpleNamespace

    from pudm_bench.orchestration.callbacks import TrackingCallback
    from pudm_bench.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = SweepTracker(uri, "pudm-fixed").start_sweep("s", tags={}, params={})
    callback = TrackingCallback(uri, "pudm-fixed", "s", parent, "pu", fixed={"correction": "abs"})
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"beta": 0.1, "lr": 1e-3}))
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="t2", config={"method": "unsupervised", "lr": 1e-3}))
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["pudm.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("pudm-fixed").experiment_id], "tags.`pudm.kind` = 'trial'")}
    assert runs["t1"].data.params["correction"] == "abs" and runs["t1"].data.params["method"] == "pu"
    assert "correction" not in runs["t2"].data.params
