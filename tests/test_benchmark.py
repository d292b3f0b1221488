"""``python -m pudm_bench.benchmark``: suites (load-time validation), planning, the paper-style table, and (slow) a
whole benchmark through Ray and MLflow, fine-tuned from a tiny pipeline the test saves with ``save_pretrained``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pudm_bench.cli import benchmark
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.plan import plan
from pudm_bench.results.tables import markdown_table, runs_frame, summary_table, table_metrics
from pudm_bench.search.suites import BUILTIN_SUITES_DIR, load_suite, parse_suite
from pudm_bench.training.config import TrainConfig
from tests.helpers import settings_for, write_suite

FIXTURE_SPLITS = Path(__file__).parent / "fixtures" / "splits"  # digits_three_vs_eight has labeled normal data


def suite_data(**changes) -> dict:
    data = {"name": "mine", "splits": ["digits_even"], "seeds": 2, "budget": "smoke",
            "methods": {"unsupervised": {"method": "unsupervised"}, "pu-abs": {"method": "pu", "beta": 0.15}}}
    data.update(changes)
    return data






def test_shipped_suites_load_and_name_the_papers_splits():
    names = sorted(p.stem for p in BUILTIN_SUITES_DIR.glob("*.yaml"))
    assert names == ["digits", "digits-prior", "mnist16", "paper-finetune", "paper-scratch"]
    mnist = load_suite("mnist16")
    assert mnist.splits == ("mnist_even_16", "mnist_odd_16") and mnist.budget == "cpu"
    warm = {m.label: m for m in mnist.methods if m.init}
    assert set(warm) == {"unsupervised-ft", "pu-abs-ft", "pu-max-ft", "pu-auto-ft"}
    assert all(m.init == "unsupervised" and m.params["steps"] == 1000 for m in warm.values())
    digits = load_suite("digits")
    assert digits.splits == ("digits_even", "digits_odd") and digits.budget == "cpu" and digits.seeds == 3
    assert [m.label for m in digits.methods] == ["unsupervised", "supervised", "pu-abs", "pu-max", "pu-auto", "filter",
                                                 "pnu"]
    prior_suite = load_suite("digits-prior")
    assert prior_suite.unlabeled_sensitive_shares == (0.05, 0.1, 0.2)
    assert [m.label for m in prior_suite.methods] == ["unsupervised", "pu-abs", "pu-auto", "filter"]
    scratch = load_suite("paper-scratch")
    assert scratch.splits == ("mnist_even", "mnist_odd", "cifar10_vehicles", "cifar10_animals", "stl10_vehicles",
                              "stl10_animals")
    finetune = load_suite("paper-finetune")
    assert finetune.pretrained == "required"
    assert finetune.splits == ("cifar10_vehicles", "cifar10_animals", "celeba_male", "celeba_female")


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("part", sorted(RESULTS.glob("mnist16/*.yaml")), ids=lambda p: p.stem)
def test_a_part_of_a_long_benchmark_runs_the_suites_own_methods(part):
    """A part's suite file (benchmarks/results/mnist16/README.md) may pick splits and methods of mnist16, never change
    one: its rows are merged into mnist16's table (--merge) as if that suite had run them."""
    whole, piece = load_suite("mnist16"), load_suite(str(part))
    assert piece.name == part.stem  # the runs folder and MLflow experiment are named after it
    assert set(piece.splits) <= set(whole.splits) and piece.budget == whole.budget and piece.train == whole.train
    methods = {m.label: m for m in whole.methods}
    for method in piece.methods:
        assert method == methods[method.label], method.label
        if method.init:  # a warm-started method's source runs in the same part (runs do not outlive a session)
            assert method.init in {m.label for m in piece.methods}, method.label


@pytest.mark.parametrize(("changes", "message"), [
    ({"seed": 3}, "did you mean 'seeds'"),
    ({"splits": []}, "splits must be a non-empty list"),
    ({"splits": ["digits_even", "digits_even"]}, "lists a split twice"),
    ({"methods": {"pu": {"method": "pu", "beta": 1.5}}}, "methods.pu"),
    ({"methods": {"x": {"method": "puu"}}}, "expected one of unsupervised, supervised, pu, pnu"),
    ({"methods": {"x": {"method": "pu", "beta": 0.1, "eta": 1.0}}}, "does not use eta"),
    ({"methods": {"x": {"method": "pu", "betta": 0.1}}}, "did you mean 'beta'"),
    ({"seeds": 0}, "seeds=0 is invalid"),
    ({"budget": "huge"}, "unknown budget 'huge'"),
    ({"train": {"seed": 4}}, "train"),
    ({"train": {"lrr": 1.0e-3}}, "did you mean 'lr'"),
    ({"pretrained": 3}, "pretrained=3 is invalid"),
    ({"methods": {"x": {"method": "pu", "beta": 0.1, "seed": 3}}}, "unknown key 'seed'"),  # the runner's
    ({"methods": {"x": {"method": "pu", "beta": 0.1, "lr": 2.0}}}, "lr=2.0 is invalid"),
    ({"methods": {"x": {"method": "unsupervised", "beta": "auto"}}}, "does not use beta"),
    ({"unlabeled_sensitive_shares": [0.1, 1.0]}, "unlabeled_sensitive_shares=\\[0.1, 1.0\\] is invalid"),
    ({"unlabeled_sensitive_shares": [0.1, 0.1]}, "distinct"),
    ({"train": {"unlabeled_sensitive_share": 0.1}}, "train"),
])
def test_bad_suites_fail_at_load_time_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_suite(suite_data(**changes), "mine.yaml")


def test_a_method_may_override_training_fields_of_the_suite_for_its_own_runs(tmp_path):
    data = suite_data(seeds=1, train={"steps": 40, "lr": 1.0e-3},
                      methods={"slow": {"method": "pu", "beta": 0.1, "lr": 1.0e-4, "steps": 80},
                               "plain": {"method": "unsupervised"}})
    settings = settings_for(write_suite(tmp_path, data), tmp_path)
    cells = plan(settings, load_suite(settings.suite_file)).cells
    slow, plain = cells["digits_even/slow/seed0"]["train_config"], cells["digits_even/plain/seed0"]["train_config"]
    assert (slow["lr"], slow["steps"]) == (1.0e-4, 80) and (plain["lr"], plain["steps"]) == (1.0e-3, 40)


def test_sensitive_shares_run_every_split_at_every_share_as_its_own_column(tmp_path):
    data = suite_data(seeds=1, unlabeled_sensitive_shares=[0.05, 0.2],
                      methods={"pu-auto": {"method": "pu", "beta": "auto"}, "filter": {"method": "filter"}})
    settings = settings_for(write_suite(tmp_path, data), tmp_path)
    the_plan = plan(settings, load_suite(settings.suite_file))
    assert list(the_plan.splits) == ["digits_even-share0.05", "digits_even-share0.2"]
    assert the_plan.splits["digits_even-share0.2"].counts.unlabeled_sensitive == 150
    cell = the_plan.cells["digits_even-share0.2/pu-auto/seed0"]
    assert cell["train_config"]["split"] == "digits_even"  # the registered split, plus the option
    assert cell["train_config"]["unlabeled_sensitive_share"] == 0.2 and cell["train_config"]["beta"] == "auto"
    assert cell["tags"]["pudm.split"] == "digits_even-share0.2"
    assert the_plan.cells["digits_even-share0.05/filter/seed0"]["train_config"]["method"] == "filter"
    # What a worker builds from the cell's config is the variant the plan shows.
    config = TrainConfig.from_dict(cell["train_config"])
    built = get_split(config.split, config.splits_dirs, config.unlabeled_sensitive_share)
    assert built.counts == the_plan.splits["digits_even-share0.2"].counts


def test_a_suite_is_found_by_name_in_a_suites_dir_and_must_match_its_file_name(tmp_path):
    write_suite(tmp_path, suite_data())
    assert load_suite("mine", [tmp_path]).name == "mine"
    with pytest.raises(ConfigError, match="did you mean 'mine'"):
        load_suite("mien", [tmp_path])
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(suite_data()))
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_suite(str(tmp_path / "other.yaml"))


def test_plan_covers_every_method_split_and_seed_and_skips_pnu_without_labeled_normal(tmp_path):
    data = suite_data(splits=["digits_even", "digits_three_vs_eight"], seeds=3, methods={
        "unsupervised": {"method": "unsupervised"}, "pu-max": {"method": "pu", "correction": "max", "beta": 0.2},
        "pnu": {"method": "pnu", "beta": 0.2, "eta": 0.5}})
    settings = settings_for(write_suite(tmp_path, data), tmp_path, "--splits-dir", str(FIXTURE_SPLITS))
    the_plan = plan(settings, load_suite(settings.suite_file))
    # 3 seeds x (3 methods on the split with labeled normal data + 2 on digits_even)
    assert len(the_plan.cells) == 3 * (3 + 2)
    assert the_plan.skipped == [("digits_even", "pnu", "the split has no labeled normal data")]
    cell = the_plan.cells["digits_three_vs_eight/pnu/seed2"]
    assert cell["train_config"]["method"] == "pnu" and cell["train_config"]["eta"] == 0.5
    assert cell["train_config"]["seed"] == 2 and cell["train_config"]["split_seed"] == 0  # same split, new seed
    assert cell["tags"] == {"pudm.role": "benchmark", "pudm.split": "digits_three_vs_eight", "pudm.method": "pnu",
                            "pudm.seed": 2}
    seeds_of_samples = {c["eval_config"]["sample_seed"] for c in the_plan.cells.values()}
    assert len(seeds_of_samples) == 3  # each training seed is scored on its own samples
    # Same budget for every method of a split: only the method's own hyperparameters differ.
    configs = [c["train_config"] for c in the_plan.cells.values() if c["params"]["split"] == "digits_even"]
    assert len({(c["steps"], c["lr"], c["batch_size"]) for c in configs}) == 1


def test_pretrained_models_are_required_when_the_suite_fine_tunes_and_chosen_per_dataset(tmp_path):
    suite_file = write_suite(tmp_path, suite_data(pretrained="required", splits=["digits_even", "digits_odd"]))
    with pytest.raises(ConfigError, match="pass --pretrained"):
        plan(settings_for(suite_file, tmp_path), load_suite(str(suite_file)))
    model = tmp_path / "model"
    model.mkdir()
    settings = settings_for(suite_file, tmp_path, "--pretrained", f"digits_odd={model}", "--pretrained", "hub/model")
    cells = plan(settings, load_suite(str(suite_file))).cells
    assert {c["train_config"]["pretrained"] for k, c in cells.items() if k.startswith("digits_odd/")} == {str(model)}
    assert {c["train_config"]["pretrained"] for k, c in cells.items() if k.startswith("digits_even/")} == {"hub/model"}
    with pytest.raises(ConfigError, match="no such folder"):
        settings_for(suite_file, tmp_path, "--pretrained", str(tmp_path / "missing"))


def test_a_suite_can_fine_tune_stable_diffusion_with_lora(tmp_path):
    """``train: {model: sd, lora_rank: 4}``: every run trains the latent model from --pretrained; the budget's pixel
    UNet preset is dropped (a pipeline has its own UNet), the conditional split stays conditional."""
    suite_file = write_suite(tmp_path, suite_data(splits=["digits_even_cond"], pretrained="required",
                                                  train={"model": "sd", "lora_rank": 4}))
    pipeline = tmp_path / "sd"
    pipeline.mkdir()
    cells = plan(settings_for(suite_file, tmp_path, "--pretrained", str(pipeline)), load_suite(str(suite_file))).cells
    assert len(cells) == 4
    for cell in cells.values():
        config = TrainConfig.from_dict(cell["train_config"])
        assert (config.model, config.lora_rank, config.model_preset, config.pretrained) == ("sd", 4, None, str(pipeline))


def _outcome(cell: str, rate: float | None, quality: float | None, status: str = "TERMINATED", error=None,
             realistic: float = 0.9) -> dict:
    result = {} if rate is None else {"non_sensitive_rate": rate, "fd_per_class": quality, "coverage_missing": 0,
                                      "realistic_share": realistic}
    return {"cell": cell, "trial_id": cell.replace("/", "_"), "status": status, "result": result, "error": error}


def test_table_reports_mean_and_sample_std_over_seeds_and_marks_missing_runs(tmp_path):
    settings = settings_for(write_suite(tmp_path, suite_data()), tmp_path)
    the_plan = plan(settings, load_suite(settings.suite_file))
    outcomes = [
        _outcome("digits_even/unsupervised/seed0", 0.90, 3.0),
        _outcome("digits_even/unsupervised/seed1", 1.00, 5.0),
        _outcome("digits_even/pu-abs/seed0", 0.98, 1.5),
        _outcome("digits_even/pu-abs/seed1", None, None, status="ERROR", error="RayTaskError: worker died"),
    ]
    runs = runs_frame(outcomes, the_plan)
    assert list(runs.method) == ["unsupervised", "pu-abs", "unsupervised", "pu-abs"]  # plan order
    table = summary_table(runs, the_plan).set_index("method")
    assert table.loc["unsupervised", "rate_mean"] == pytest.approx(0.95)
    assert table.loc["unsupervised", "rate_std"] == pytest.approx(math.sqrt(0.005))  # ddof 1: 0.0707
    assert table.loc["unsupervised", "quality_std"] == pytest.approx(math.sqrt(2.0))
    assert table.loc["pu-abs", "n"] == 1 and table.loc["pu-abs", "planned"] == 2
    assert math.isnan(table.loc["pu-abs", "rate_std"])
    text = markdown_table(table.reset_index(), the_plan)
    assert "| unsupervised | 0.950 ± 0.071 | 4.000 ± 1.414 |" in text
    assert "| pu-abs | 0.980 (1/2) | 1.500 (1/2) |" in text
    assert "digits_even non-sensitive ↑" in text and "digits_even fd_per_class ↓" in text
    assert "Normal-class coverage" not in text  # no run measured it
    assert "realistic non-sensitive" not in text and "⚑" not in text  # no run scored it; no run flagged


def test_runs_that_break_a_default_constraint_are_flagged_and_the_realistic_rate_shown(tmp_path):
    settings = settings_for(write_suite(tmp_path, suite_data()), tmp_path)
    the_plan = plan(settings, load_suite(settings.suite_file))
    outcomes = [_outcome("digits_even/unsupervised/seed0", 0.90, 3.0), _outcome("digits_even/unsupervised/seed1", 0.92, 3.0),
                _outcome("digits_even/pu-abs/seed0", 1.0, 9.0, realistic=0.1),  # garbage the referee calls normal
                _outcome("digits_even/pu-abs/seed1", 0.99, 2.0)]
    outcomes[3]["result"]["coverage_missing"] = 2
    for outcome, realistic_rate in zip(outcomes, (0.80, 0.82, 0.05, 0.9)):
        outcome["result"]["realistic_non_sensitive_rate"] = realistic_rate
    runs = runs_frame(outcomes, the_plan)
    assert list(runs.violations) == ["", "realistic_share>=0.5", "", "coverage_missing<=0"]
    table = summary_table(runs, the_plan)
    text = markdown_table(table, the_plan)
    assert "| pu-abs | 0.995 ± 0.007 ⚑2/2 | 0.475 ± 0.601 | 5.500 ± 4.950 |" in text
    assert "| unsupervised | 0.910 ± 0.014 | 0.810 ± 0.014 | 3.000 ± 0.000 |" in text
    assert "⚑k/n: k of the n runs break a default constraint" in text


def test_diversity_table_shows_coverage_precision_recall_and_missing_classes(tmp_path):
    methods = {**suite_data()["methods"], "filter": {"method": "filter"}}  # planned, never finished: no scores
    settings = settings_for(write_suite(tmp_path, suite_data(methods=methods)), tmp_path)
    the_plan = plan(settings, load_suite(settings.suite_file))
    scores = {  # cell -> coverage_tv, missing classes, precision, recall
        "digits_even/unsupervised/seed0": (0.05, "", 0.9, 0.8),
        "digits_even/unsupervised/seed1": (0.07, "", 0.8, 0.9),
        "digits_even/pu-abs/seed0": (0.40, "four, six", 0.95, 0.5),
        "digits_even/pu-abs/seed1": (0.30, "six", 0.97, 0.6),
    }
    outcomes = []
    for cell, (tv, missing, precision, recall) in scores.items():
        outcome = _outcome(cell, 0.95, 2.0)
        outcome["result"].update(coverage_tv=tv, coverage_missing=len([m for m in missing.split(",") if m]),
                                 coverage_missing_classes=missing, precision=precision, recall=recall,
                                 coverage_tv_real_normal=0.04)
        outcomes.append(outcome)
    runs = runs_frame(outcomes, the_plan)
    assert runs.set_index("trial_id").loc[outcomes[2]["trial_id"], "coverage_missing"] == 2
    table = summary_table(runs, the_plan)
    pu = table.set_index("method").loc["pu-abs"]
    assert pu.coverage_tv_mean == pytest.approx(0.35) and pu.recall_std == pytest.approx(math.sqrt(0.005))
    assert pu.coverage_missing_classes == "six (2/2), four (1/2)"
    text = markdown_table(table, the_plan)
    assert "Normal-class coverage" in text and "**digits_even**" in text
    assert "| pu-abs | 0.350 ± 0.071 | six (2/2), four (1/2) | 0.960 ± 0.014 | 0.550 ± 0.071 | 0.900 ± 0.000 |" in text
    assert "| unsupervised | 0.060 ± 0.014 | none | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.900 ± 0.000 |" in text
    assert "| filter | — | — | — | — | — |" in text  # no run scored: no classes to call missing, not "none"
    assert "Real held-out images, scored the same way: coverage TV 0.040 (the floor" in text
    metrics = table_metrics(table)
    assert metrics["digits_even/pu-abs/coverage_tv_mean"] == pytest.approx(0.35)


def test_cli_lists_suites_and_dry_run_plans_without_training(tmp_path, capsys):
    assert benchmark.main(["--list"]) == 0
    assert "paper-finetune" in capsys.readouterr().out
    assert benchmark.main(["--suite", "digits", "--seeds", "2", "--dry-run", "--storage", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 2 * 2 * 6 and "pnu on digits_even: the split has no labeled normal data" in out["skipped"]
    assert not list(tmp_path.iterdir())  # nothing written
    assert benchmark.main(["--suite", "digitz"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err


def tiny_pipeline(path: Path, image_size: int = 8, channels: int = 1) -> Path:
    """A DDPM pipeline with a deliberately unusual UNet (block widths 8, 16) so a fine-tuned run is recognisable."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(path))
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_benchmark_fine_tunes_every_method_through_ray_and_logs_one_parent_with_a_table(tmp_path, mlflow_store):
    """A real benchmark: the filter baseline and PNU with beta estimated (the split has labeled normal data),
    smoke budget, each fine-tuned from a pipeline written with save_pretrained, and a PU run warm-started from the
    filter run (``init: filter``: CellSearcher inside Tune), read back through MlflowClient."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    pipeline = tiny_pipeline(tmp_path / "tiny-ddpm")
    splits = tmp_path / "splits"  # the fixture split, scored with fd_classifier (no Inception weights here)
    splits.mkdir()
    split = yaml.safe_load((FIXTURE_SPLITS / "digits_three_vs_eight.yaml").read_text())
    (splits / "digits_three_vs_eight.yaml").write_text(yaml.safe_dump({**split, "quality_metric": "fd_classifier"}))
    data = suite_data(splits=["digits_three_vs_eight"], pretrained="required", seeds=1, methods={
        "warm": {"method": "pu", "beta": 0.1, "init": "filter", "steps": 7},  # listed first, runs after its source
        "filter": {"method": "filter"}, "pnu": {"method": "pnu", "correction": "max", "beta": "auto"}})
    suite_file = write_suite(tmp_path, data)
    uri = mlflow_store  # an empty store, copied (conftest)
    argv = ["--suite", str(suite_file), "--splits-dir", str(splits), "--pretrained", f"digits={pipeline}",
            "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri, "--num-cpus", "2", "--quiet",
            "--referee-floor", "0.8"]
    # In a subprocess, as users run it: an in-process run would leave this pytest process a Ray driver, and a
    # later test's `ray stop --force` would take it down with the cluster.
    done = subprocess.run([sys.executable, "-m", "pudm_bench.benchmark", *argv], capture_output=True, text=True,
                          timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| pnu |" in done.stdout and "parent run" in done.stdout

    run_dir = tmp_path / "runs" / "mine-smoke-x1"
    runs = pd.read_csv(run_dir / "benchmark_runs.csv")
    assert len(runs) == 3 and set(runs.status) == {"TERMINATED"}
    assert list(runs.method) == ["warm", "filter", "pnu"]  # plan order
    assert runs.non_sensitive_rate.between(0, 1).all() and (runs.quality > 0).all()
    # Both estimated beta in their Train worker (same seed, same split: the same estimate) and the filter removed
    # that share of U.
    estimating = runs[runs.method != "warm"]
    assert estimating.prior_estimate.between(0, 1, inclusive="neither").all()
    assert estimating.prior_estimate.nunique() == 1
    assert estimating.prior_true.eq(estimating.prior_true.iloc[0]).all() and estimating.prior_true.iloc[0] > 0
    # The warm run trained its own 7 steps from the filter run's final model.
    by_method = runs.set_index("method")
    warm_config = json.loads((run_dir / "train" / f"trial-{by_method.loc['warm', 'trial_id']}" / "final"
                              / "train_config.json").read_text())
    source = run_dir / "train" / f"trial-{by_method.loc['filter', 'trial_id']}" / "final"
    assert warm_config["init_from"] == str(source) and warm_config["pretrained"] is None
    assert warm_config["steps"] == 7
    filters = runs[runs.method == "filter"]
    assert (filters.filter_sensitive_removed_share.between(0, 1) & filters.filter_normal_removed_share.between(0, 1)).all()
    table = pd.read_csv(run_dir / "benchmark_table.csv")
    assert list(table.method) == ["warm", "filter", "pnu"] and set(table.n) == {1}
    assert table.set_index("method").loc[["filter", "pnu"], "prior_estimate_mean"].between(0, 1).all()
    assert "| pnu |" in (run_dir / "benchmark_table.md").read_text()
    assert (run_dir / "grids" / "digits_three_vs_eight.png").is_file()  # one panel per method
    # Every run started from the saved pipeline: its unusual UNet is what each run saved at the end.
    finals = sorted((run_dir / "train").glob("trial-*/final/pipeline/unet/config.json"))
    assert len(finals) == 3
    assert all(json.loads(f.read_text())["block_out_channels"] == [8, 16] for f in finals)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pudm-benchmark-mine")
    parents = client.search_runs([experiment.experiment_id], "tags.`pudm.kind` = 'benchmark'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"benchmark_table.json", "benchmark_table.csv", "benchmark_table.md", "benchmark_runs.csv", "grids"} <= artifacts
    key = "digits_three_vs_eight/pnu/non_sensitive_rate_mean"
    expected = runs[runs.method == "pnu"].non_sensitive_rate.mean()
    assert parent.data.metrics[key] == pytest.approx(expected)
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {(c.data.tags["pudm.method"], c.data.tags["pudm.seed"]) for c in children} == {
        (m, "0") for m in ("warm", "filter", "pnu")}
    child = {c.data.tags["pudm.method"]: c for c in children}
    assert all(0 < child[m].data.metrics["prior_estimate"] < 1 for m in ("filter", "pnu"))  # logged to each child
    assert {child[m].data.params["pretrained"] for m in ("filter", "pnu")} == {str(pipeline)}
    assert child["warm"].data.params["init_from"] == "digits_three_vs_eight/filter/seed0"
    assert "pretrained" not in child["warm"].data.params
    assert all("non_sensitive_rate" in c.data.metrics for c in children)


def test_a_benchmark_in_parts_merges_into_one_table(tmp_path, capsys):
    """--first-seed runs a later seed as its own part; --merge builds the table of all parts from their runs files,
    with the same numbers as one run of every seed (text columns such as violations survive the CSV round trip)."""
    suite_file = write_suite(tmp_path, suite_data())
    first = settings_for(suite_file, tmp_path, "--seeds", "1")
    second = settings_for(suite_file, tmp_path, "--seeds", "1", "--first-seed", "1")
    assert second.name.endswith("-x1-from1") and second.name != first.name
    assert list(plan(second, load_suite(second.suite_file)).cells) == ["digits_even/unsupervised/seed1",
                                                                       "digits_even/pu-abs/seed1"]
    whole = plan(settings_for(suite_file, tmp_path), load_suite(str(suite_file)))
    outcomes = [_outcome("digits_even/unsupervised/seed0", 0.90, 3.0), _outcome("digits_even/unsupervised/seed1", 1.00, 5.0),
                _outcome("digits_even/pu-abs/seed0", 0.98, 1.5, realistic=0.1), _outcome("digits_even/pu-abs/seed1", 0.96, 2.5)]
    parts = []
    for i, (the_settings, mine) in enumerate(((first, outcomes[::2]), (second, outcomes[1::2]))):
        part_plan = plan(the_settings, load_suite(the_settings.suite_file))
        path = tmp_path / f"part{i}.csv"
        runs_frame(mine, part_plan).to_csv(path, index=False)
        parts.append(str(path))
    expected = markdown_table(summary_table(runs_frame(outcomes, whole), whole), whole)
    assert benchmark.main(["--suite", str(suite_file), "--storage", str(tmp_path / "runs"), "--name", "merged",
                           "--merge", *parts]) == 0
    merged = (tmp_path / "runs" / "merged" / "benchmark_table.md").read_text()
    assert expected in merged and "⚑1/2" in merged  # the unrealistic pu-abs seed 0 is flagged once
    assert "| unsupervised | 0.950 ± 0.071 |" in capsys.readouterr().out
    # A part stopped early lists its unfinished cells: a finished row of the same cell elsewhere wins.
    stopped = tmp_path / "stopped.csv"
    runs_frame([_outcome("digits_even/unsupervised/seed0", None, None, status="ERROR", error="stopped")],
               plan(first, load_suite(first.suite_file))).to_csv(stopped, index=False)
    assert benchmark.main(["--suite", str(suite_file), "--storage", str(tmp_path / "runs"), "--name", "merged2",
                           "--merge", *parts, str(stopped)]) == 0
    assert expected in (tmp_path / "runs" / "merged2" / "benchmark_table.md").read_text()
    capsys.readouterr()
    # A planned run in no part counts as not finished: (k/n) of the whole plan.
    assert benchmark.main(["--suite", str(suite_file), "--storage", str(tmp_path / "runs"), "--name", "merged3",
                           "--merge", parts[0]]) == 0
    assert "| unsupervised | 0.900 (1/2) |" in (tmp_path / "runs" / "merged3" / "benchmark_table.md").read_text()
    capsys.readouterr()
    # A part from another suite or seed range is refused in one line.
    assert benchmark.main(["--suite", str(suite_file), "--seeds", "1", "--storage", str(tmp_path / "runs"),
                           "--name", "m2", "--merge", *parts]) == 2
    assert "are not in suite 'mine'" in capsys.readouterr().err
