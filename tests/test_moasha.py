"""Multi-objective successive halving (``--scheduler moasha``): the rung decisions on hand-made rung tables
(search/rungs.py), the Tune scheduler around them and its saved state (orchestration/scheduler.py), what Optuna
is told about a stopped trial, and the training loop's probe (a rung's score must not change the training)."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import pytest

from pudm_bench.errors import ConfigError
from pudm_bench.search.pareto import parse_constraint, METRIC_DIRECTIONS
from pudm_bench.search.rungs import (RungTable, crowding_distances, non_dominated_fronts, parse_rungs, rank_trials,
                                     rung_steps)

RATE_FD = (("non_sensitive_rate", "max"), ("fd_per_class", "min"))


def scores(rate, fd, **more):
    return {"non_sensitive_rate": rate, "fd_per_class": fd, **more}


# ------------------------------------------------------------------------------------------------ rungs


def test_rungs_parse_as_increasing_fractions_and_map_to_steps():
    assert parse_rungs("1/9,1/3") == pytest.approx((1 / 9, 1 / 3))
    assert parse_rungs("0.25") == (0.25,)
    assert rung_steps(parse_rungs("1/9,1/3"), 600) == (67, 200)
    assert rung_steps((0.01, 0.5), 20) == (1, 10)  # at least step 1
    assert rung_steps((0.5,), 1) == ()  # nothing before the end of a one-step run


@pytest.mark.parametrize("text", ["", "1/3,1/9", "0", "1", "1/3,1/3", "a", "1/0", "-0.5"])
def test_bad_rungs_are_refused_naming_the_flag(text):
    with pytest.raises(ConfigError, match=r"--rungs=.*increasing fractions"):
        parse_rungs(text)


def test_reduction_factor_below_two_is_refused():
    with pytest.raises(ConfigError, match="--reduction-factor=1 is invalid"):
        RungTable(RATE_FD, reduction_factor=1)


# ------------------------------------------------------------------------------------- sorting by hand


def test_non_dominated_fronts_by_hand():
    # minimised points: a and b trade off, c is dominated by a only, d by everything
    points = {"a": (0, 2), "b": (1, 1), "c": (0.5, 3), "d": (2, 4)}
    assert non_dominated_fronts(points) == [["a", "b"], ["c"], ["d"]]
    assert non_dominated_fronts({"x": (1, 1), "y": (1, 1)}) == [["x", "y"]]  # equal points: neither dominates


def test_crowding_distance_by_hand():
    # one front of four, sorted by the first objective: p, q, r, s; ranges 3 and 3
    points = {"p": (0, 3), "q": (1, 2), "r": (2, 0.5), "s": (3, 0)}
    distance = crowding_distances(points)
    assert math.isinf(distance["p"]) and math.isinf(distance["s"])
    assert distance["q"] == pytest.approx((2 - 0) / 3 + (3 - 0.5) / 3)
    assert distance["r"] == pytest.approx((3 - 1) / 3 + (2 - 0) / 3)


def test_rank_puts_feasible_fronts_first_then_infeasible_ones_by_their_objectives_then_unscored():
    entries = {
        "dominated": {"values": [0.80, 20.0], "violation": 0.0},
        "left": {"values": [0.90, 10.0], "violation": 0.0},   # front 1, extreme (best fd)
        "mid": {"values": [0.94, 12.0], "violation": 0.0},    # front 1, middle
        "right": {"values": [0.99, 15.0], "violation": 0.0},  # front 1, extreme (best rate)
        "broken": {"values": [1.00, 1.0], "violation": 0.5},  # best on both, but breaks a constraint
        "less_broken": {"values": [0.5, 50.0], "violation": 0.1},  # closer to feasible, but dominated by "broken"
        "nan": {"values": [math.nan, 5.0], "violation": 0.0},
    }
    order = rank_trials(entries, ["max", "min"])
    assert order[:2] == ["left", "right"]  # infinite crowding distance, arrival order between them
    assert order[2:] == ["mid", "dominated", "broken", "less_broken", "nan"]


def test_within_a_front_the_smaller_violation_goes_first():
    entries = {"far": {"values": [0.90, 10.0], "violation": 3.4},
               "near": {"values": [0.95, 12.0], "violation": 1.0}}  # trade off: one front of two
    assert rank_trials(entries, ["max", "min"]) == ["near", "far"]


def test_rates_within_each_others_interval_tie_and_quality_decides():
    # Exact comparison: 1.00 vs 0.99 make a front of two, and arrival order keeps the worse quality first.
    exact = {"first": {"values": [1.00, 34.2], "violation": 0.0}, "second": {"values": [0.99, 26.9], "violation": 0.0}}
    assert rank_trials(exact, ["max", "min"]) == ["first", "second"]
    # With their 95% intervals (100 samples: overlapping), the rates are equal and the better quality dominates.
    noisy = {"first": {**exact["first"], "intervals": [[0.963, 1.0], None]},
             "second": {**exact["second"], "intervals": [[0.946, 0.998], None]}}
    assert rank_trials(noisy, ["max", "min"]) == ["second", "first"]
    # Intervals that do not overlap keep the rates apart: a trade-off again, arrival order.
    apart = {"first": {**exact["first"], "intervals": [[0.963, 1.0], None]},
             "second": {**exact["second"], "intervals": [[0.90, 0.95], None]}}
    assert rank_trials(apart, ["max", "min"]) == ["first", "second"]


def test_a_dominance_cycle_through_ties_within_noise_keeps_every_trial_in_the_order():
    # Ties within noise are not transitive: with these (minimised) points and intervals a beats b on the first
    # objective, b beats c, c beats a on the second, and every other pair ties, so no trial is undominated. NSGA-II's
    # sort alone would return no front and the rung would lose all three.
    points = {"a": (1, 0), "b": (2, 0), "c": (3, -1)}
    intervals = {"a": ((5, 6), (0, 1)), "b": ((3, 4), (-1, 0.5)), "c": ((5.5, 7), (-2, -0.6))}
    assert non_dominated_fronts(points, intervals) == [["a", "b", "c"]]


def test_the_measured_step_200_rung_now_keeps_the_trial_with_the_best_end():
    # digits_even seed 0 (docs/performance.md item 10), step 200 of 600: all three searched trials there break the
    # default constraints by 1.0 (one class under half its share on 100 samples). Ranked by violation alone they tied
    # and arrival order stopped cd35 (final fd_per_class 9.55, FIFO's best) in favour of 7903 (final 14.36).
    coverage = parse_constraint("coverage_missing<=0", METRIC_DIRECTIONS)
    table = RungTable(RATE_FD, reduction_factor=3, constraints=(coverage,))
    rung = {"7903": (1.00, 0.963, 1.000, 34.2), "8140": (0.99, 0.946, 0.998, 33.9), "cd35": (0.95, 0.888, 0.978, 26.9)}
    decisions = {t: table.decide(t, 1, scores(r, fd, non_sensitive_rate_ci_low=lo, non_sensitive_rate_ci_high=hi,
                                                coverage_missing=1))
                 for t, (r, lo, hi, fd) in rung.items()}
    assert decisions == {"7903": True, "8140": True, "cd35": True}  # each arrives best so far on quality
    assert table.rungs[1]["cd35"]["intervals"] == [[0.888, 0.978], None]
    assert table.decide("late_worse", 1, scores(1.0, 40.0, non_sensitive_rate_ci_low=0.963,
                                                non_sensitive_rate_ci_high=1.0, coverage_missing=1)) is False


# ---------------------------------------------------------------------------------- decisions at a rung


def test_a_rung_keeps_the_top_third_of_the_trials_that_reached_it():
    table = RungTable(RATE_FD, reduction_factor=3)
    assert table.decide("t1", 0, scores(0.90, 10.0)) is True  # the first at a rung always goes on
    assert table.decide("t2", 0, scores(0.80, 12.0)) is False  # 2 recorded, keep 1: dominated by t1
    assert table.decide("t3", 0, scores(0.95, 15.0)) is False  # 3 recorded, keep 1: on the front with t1, both
    # extremes (infinite distance), and t1 came first
    assert table.decide("t4", 0, scores(0.99, 9.0)) is True  # 4 recorded, keep 2: dominates every other
    assert table.decide("t5", 0, scores(0.50, 30.0)) is False  # 5, keep 2
    assert table.decide("t6", 0, scores(0.97, 9.5)) is True  # 6, keep 2: front {t4, t6}, it is an extreme
    # Decisions are never revisited, and a trial passing the same rung again gets its first answer.
    assert table.decide("t2", 0, scores(1.0, 0.0)) is False
    assert [table.rungs[0][t]["decision"] for t in ("t1", "t2", "t3", "t4", "t5", "t6")] == \
        ["continue", "stop", "stop", "continue", "stop", "continue"]
    assert table.stopped_at("t3") == 0 and table.stopped_at("t4") is None
    assert table.decide("t1", 1, scores(0.9, 10.0)) is True and 1 in table.rungs  # rungs are separate tables


def test_a_trial_that_breaks_a_constraint_ranks_after_every_feasible_one():
    coverage = parse_constraint("coverage_missing<=0", METRIC_DIRECTIONS)
    table = RungTable(RATE_FD, reduction_factor=2, constraints=(coverage,))
    assert table.decide("good", 0, scores(0.80, 20.0, coverage_missing=0)) is True
    # better on both objectives, but drops a normal class: 2 recorded, keep 1, and it ranks second
    assert table.decide("drops_a_class", 0, scores(0.99, 5.0, coverage_missing=1)) is False
    assert table.rungs[0]["drops_a_class"]["violation"] == pytest.approx(1.0)
    # a missing constraint metric counts as broken (Constraint.violation: 1.0)
    assert table.decide("unmeasured", 0, scores(0.99, 5.0)) is False


def test_eta_two_keeps_half():
    table = RungTable(RATE_FD, reduction_factor=2)
    decisions = [table.decide(f"t{i}", 0, scores(0.5 + 0.1 * i, 10.0 - i)) for i in range(4)]  # each dominates the last
    assert decisions == [True, True, True, True]  # each arrives as the best so far
    assert table.decide("worst", 0, scores(0.1, 99.0)) is False


def test_the_table_survives_a_round_trip_through_its_state():
    table = RungTable(RATE_FD)
    table.decide("a", 0, scores(0.9, 10.0))
    table.decide("b", 0, scores(0.8, 11.0))
    restored = RungTable(RATE_FD)
    restored.load(json.loads(json.dumps(table.to_dict())))
    assert restored.rungs == table.rungs
    assert restored.decide("c", 0, scores(0.85, 10.5)) is False  # 3 recorded, keep 1: a is still first


# -------------------------------------------------------------------------------------- the Tune scheduler


def test_the_scheduler_stops_searched_trials_only_and_saves_every_decision(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    from pudm_bench.orchestration.scheduler import MultiObjectiveASHA

    path = tmp_path / "moasha.json"
    scheduler = MultiObjectiveASHA(RungTable(RATE_FD), path)

    def trial(trial_id, **config):
        return SimpleNamespace(trial_id=trial_id, config=config)

    def rung(rate, fd, index=0):
        return {"phase": "rung", "rung": index, "step": 7.0, "rung_non_sensitive_rate": rate, "rung_fd_per_class": fd}

    assert scheduler.on_trial_result(None, trial("a", beta=0.1), {"phase": "train", "loss": 1.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial("a", beta=0.1), rung(0.9, 10.0)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial("b", beta=0.2), rung(0.5, 50.0)) == TrialScheduler.STOP
    # a baseline is never stopped, and never ranked with the searched trials
    assert scheduler.on_trial_result(None, trial("u", method="unsupervised"), rung(0.1, 99.0)) == TrialScheduler.CONTINUE
    saved = json.loads(path.read_text())
    assert set(saved["rungs"]["0"]) == {"a", "b"} and saved["rungs"]["0"]["b"]["decision"] == "stop"
    assert saved["rungs"]["0"]["a"]["values"] == [0.9, 10.0] and saved["rungs"]["0"]["a"]["step"] == 7.0

    # Tune restores a scheduler by unpickling the one the sweep started with: the decisions come from the file.
    fresh = MultiObjectiveASHA(RungTable(RATE_FD), tmp_path / "other.json")
    fresh.state_path = path
    restored = pickle.loads(pickle.dumps(fresh))
    assert restored.table.rungs == scheduler.table.rungs
    # and a new scheduler object over the same folder (a resume whose Tune state was lost) reads it too
    assert MultiObjectiveASHA(RungTable(RATE_FD), path).table.rungs == scheduler.table.rungs


# ------------------------------------------------------------------------------------------------ Optuna


def test_a_stopped_trial_is_told_pruned_with_its_rung_values_and_tpe_goes_on(tmp_path):
    import optuna

    from pudm_bench.orchestration.searchers import StudySearcher

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    searcher = StudySearcher(study, storage, {"beta": optuna.distributions.FloatDistribution(0.01, 0.5)}, RATE_FD)
    for i, tid in enumerate(("t0", "t1", "t2")):
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"phase": "final", "non_sensitive_rate": 0.9 + 0.01 * i, "fd_per_class": 10.0 - i})
    searcher.suggest("stopped")
    searcher.on_trial_complete("stopped", {"phase": "rung", "rung": 0, "step": 7.0, "rung_non_sensitive_rate": 0.5,
                                           "rung_fd_per_class": 40.0})
    loaded = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    last = loaded.trials[-1]
    assert last.state == optuna.trial.TrialState.PRUNED and last.values is None
    assert last.user_attrs == {"stopped_at_rung": 0, "rung_values": [0.5, 40.0]}
    assert len(loaded.best_trials) >= 1 and all(t.state.name == "COMPLETE" for t in loaded.best_trials)
    assert "beta" in searcher.suggest("next")  # TPE samples with a pruned trial in the study


# --------------------------------------------------------------------------------- the loop's probe


def test_a_probe_scores_the_ema_model_mid_training_without_changing_the_training(tmp_path, digits_even_split):
    import torch

    from pudm_bench.training.config import TrainConfig
    from pudm_bench.training.loop import Callback, train

    from safetensors.torch import load_file

    config = TrainConfig(split="digits_even", method="pu", beta=0.1, steps=4, batch_size=16, log_every=2,
                         checkpoint_every=2, ema_decay=0.9, model_preset="tiny", seed=3)

    class Probe(Callback):
        def __init__(self):
            self.seen = []
            self.weights = {}

        def on_probe(self, step, generator):
            model = generator.model
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.seen.append((step, model.training, generator(4, steps=2, seed=0).images.shape))
            torch.rand(100)  # a draw from torch's global stream, which the probe must not leak into training

    probe = Probe()
    torch.manual_seed(0)
    probed = train(config, digits_even_split, tmp_path / "a", callbacks=[probe], resume=False, probe_steps=(2, 4))
    torch.manual_seed(0)
    plain = train(config, digits_even_split, tmp_path / "b", resume=False)
    assert [(s, training) for s, training, _ in probe.seen] == [(2, False)]  # not at the last step: that is the final evaluation
    assert probe.seen[0][2][0] == 4
    # the probe sampled the EMA weights of step 2 (the checkpoint of that step holds both), not the raw ones
    ema = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000002" / "ema.safetensors"))
    raw = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000002" / "model.safetensors"))
    name = next(n for n in probe.weights if n in ema and not torch.equal(ema[n], raw[n]))
    assert torch.equal(probe.weights[name], ema[name])
    for a, b in zip(probed.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    assert probed.metrics["loss"] == plain.metrics["loss"]


# ------------------------------------------------------------------------------------ flags -> a trial's probe


def test_moasha_defaults_its_rungs_and_each_trial_gets_its_rung_steps_and_a_smaller_evaluation(tmp_path):
    from pudm_bench.cli.sweep import build_parser, settings_from_args
    from pudm_bench.data.splits import get_split
    from pudm_bench.orchestration.trial import eval_config, probe_config
    from pudm_bench.search.budgets import budget_for

    def resolved(*flags):
        return settings_from_args(build_parser().parse_args(["--budget", "cpu", "--storage", str(tmp_path), *flags]))

    moasha = resolved("--scheduler", "moasha")
    assert moasha.rungs == pytest.approx((1 / 9, 1 / 3)) and moasha.reduction_factor == 3
    fifo = resolved()
    assert fifo.scheduler == "fifo" and fifo.rungs == ()
    budget = budget_for("cpu", get_split("digits_even"))
    assert probe_config(fifo, eval_config(fifo, budget), 600) is None  # FIFO: no rung scores, no cost
    probe = probe_config(moasha, eval_config(moasha, budget), 600)
    assert probe["steps"] == [67, 200]
    final = eval_config(moasha, budget)
    assert probe["eval_config"]["num_samples"] == budget.num_samples // 3
    # the same referees, metric, sampler and seed as the final evaluation: only the sample count differs
    same = {k: v for k, v in probe["eval_config"].items() if k not in ("num_samples", "pr_neighbours")}
    assert same == {k: v for k, v in final.__dict__.items() if k not in ("num_samples", "pr_neighbours")}
    scored = resolved("--rungs", "0.5", "--rung-samples", "40")  # FIFO that scores at a rung: curves only
    assert probe_config(scored, eval_config(scored, budget), 600)["steps"] == [300]
    assert probe_config(scored, eval_config(scored, budget), 600)["eval_config"]["num_samples"] == 40


# ------------------------------------------------------------------------------- warm-started sweeps


def test_searched_trials_wait_for_the_baseline_and_fine_tune_its_final_model(tmp_path):
    """--warm-start baseline (BaselinesFirst): the baselines first; no searched trial until the unsupervised one
    completed; then init_from = its final checkpoint (None when it failed); the source survives save/restore."""
    import optuna

    from pudm_bench.orchestration.searchers import BaselinesFirst, StudySearcher

    storage = optuna.storages.InMemoryStorage()  # one study, as a resumed sweep reopens its optuna.db

    def searcher(name="s"):
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.RandomSampler(seed=0), load_if_exists=True)
        inner = StudySearcher(study, storage, {"beta": optuna.distributions.FloatDistribution(0.01, 0.5)}, RATE_FD)
        return BaselinesFirst(inner, [{"method": "unsupervised"}, {"method": "supervised"}], warm_from="unsupervised",
                              storage_dir=tmp_path / "train")

    first = searcher()
    assert first.suggest("u") == {"method": "unsupervised"} and first.suggest("s") == {"method": "supervised"}
    assert first.suggest("x") is None  # the unsupervised baseline is still training: Tune waits
    first.on_trial_complete("s", {"phase": "final"})
    assert first.suggest("x") is None  # the supervised one is not the source
    final = tmp_path / "train" / "trial-u" / "final"
    (final / "pipeline").mkdir(parents=True)
    first.on_trial_complete("u", {"phase": "final"})
    config = first.suggest("x")
    assert config["init_from"] == str(final) and config["warm_start"] == "unsupervised" and 0.01 <= config["beta"] <= 0.5
    first.save(str(tmp_path / "state.json"))
    restored = searcher()
    restored.restore(str(tmp_path / "state.json"))
    assert restored.source == {"trial_id": "u", "final": str(final)} and restored.pending == []

    failed = searcher("another")
    failed.suggest("u2"), failed.suggest("s2")
    failed.on_trial_complete("u2", {"phase": "final", "failed": "NonFiniteLossError: ..."})
    assert failed.suggest("y")["init_from"] is None  # the trial reports the failure (trial.run_trial)


def test_a_sweep_that_stops_trials_gives_every_trial_a_process_of_its_own(tmp_path):
    """Tune 2.60 hands a stopped trial's process to the next trial while the stopped trial's Ray Train run still
    blocks it: the next trial failed ("Trainable runner reuse requires reset_config()") and the stopped run held its
    CPUs for Ray Train's 10-minute health timeout (a moasha sweep of 6 trials, benchmarks/perf/sweep_efficiency.py).
    FIFO sweeps, which stop no trial, keep reusing finished trials' processes."""
    from pudm_bench.cli.sweep import build_parser, settings_from_args
    from pudm_bench.orchestration.scheduler import MultiObjectiveASHA
    from pudm_bench.orchestration.sweep import check_sweep, sweep_tune_config

    def tune_config(*flags):
        s = settings_from_args(build_parser().parse_args(["--budget", "smoke", "--storage", str(tmp_path), *flags]))
        _, space, budget = check_sweep(s)
        return sweep_tune_config(s, space, budget)

    moasha = tune_config("--scheduler", "moasha")
    assert isinstance(moasha.scheduler, MultiObjectiveASHA) and moasha.reuse_actors is False
    fifo = tune_config("--rungs", "1/3")  # scored at a rung, never stopped there
    assert fifo.scheduler is None and fifo.reuse_actors is True
    assert fifo.num_samples == moasha.num_samples  # the searched trials + the two baselines, either way


def test_a_warm_started_trial_trains_a_fraction_of_the_budget_from_the_baseline():
    from pudm_bench.data.splits import get_split
    from pudm_bench.orchestration.trial import warm_start_config
    from pudm_bench.search.budgets import budget_for
    from pudm_bench.training.config import TrainConfig

    budget = budget_for("cpu", get_split("digits_even"))  # 600 steps, 50 warm-up, log every 50, checkpoint every 200
    base = TrainConfig(split="digits_even", method="pu", beta=0.1, steps=600, warmup_steps=50, log_every=50,
                       checkpoint_every=200)
    warm = warm_start_config(base, budget, 1 / 3, "/runs/x/final")
    assert (warm.init_from, warm.steps, warm.warmup_steps, warm.log_every, warm.checkpoint_every) == \
        ("/runs/x/final", 200, 17, 50, 200)
    tiny = warm_start_config(base, budget, 0.001, "/runs/x/final")
    assert (tiny.steps, tiny.warmup_steps, tiny.log_every) == (1, 0, 1)


# ------------------------------------------------------------------------ a stopped trial in the results


def test_a_trial_stopped_at_a_rung_is_stopped_in_the_results_off_the_front_and_printed_as_such(tmp_path, capsys):
    """Its last report was a rung's: status STOPPED, no final objectives (so excluded, never on the front), listed
    under "Stopped at a rung" and not among the trials that break a constraint."""
    from pudm_bench.cli.sweep import build_parser, print_summary, settings_from_args
    from pudm_bench.orchestration.runner import trial_records
    from pudm_bench.orchestration.sweep import results_frame
    from pudm_bench.search.pareto import summarize
    from pudm_bench.search.space import load_search_space

    s = settings_from_args(build_parser().parse_args(["--budget", "smoke", "--storage", str(tmp_path),
                                                      "--scheduler", "moasha"]))
    final = {"phase": "final", "non_sensitive_rate": 0.9, "fd_per_class": 10.0, "coverage_missing": 0,
             "realistic_share": 0.8}
    grid = [SimpleNamespace(metrics={"trial_id": "aaaaaaaa", **final}, config={"beta": 0.1}, path="x", error=None),
            SimpleNamespace(metrics={"trial_id": "bbbbbbbb", "phase": "rung", "rung": 0, "step": 7.0,
                                     "rung_non_sensitive_rate": 0.5}, config={"beta": 0.3}, path="y", error=None)]
    records = trial_records(grid)
    assert [r["status"] for r in records] == ["TERMINATED", "STOPPED"]
    frame = results_frame(records, s, load_search_space(s.search_space))
    summary = summarize(frame, s.parsed_constraints)
    assert list(summary.front.trial_id) == ["aaaaaaaa"]
    assert summary.trials.set_index("trial_id").loc["bbbbbbbb", "excluded"]
    print_summary({"summary": summary, "wall_seconds": 1.0, "tracking_uri": "sqlite:///x", "experiment": "e",
                   "parent_run_id": "p"}, s)
    out = capsys.readouterr().out
    stopped = out.split("Stopped at a rung by --scheduler moasha")[1]
    assert "bbbbbbbb" in stopped.split("\n\n")[0]
    assert "break a constraint" not in out or "bbbbbbbb" not in out.split("break a constraint")[1].split("\n\n")[0]
