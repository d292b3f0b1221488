"""Warm start (``--init-from``): a run begins from another run's final model, on the same split and geometry only;
benchmark suites chain a method's runs onto another method's (``init:``) through ``orchestration.searchers.CellSearcher``."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from pudm_bench.cli import train as train_cli
from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ConfigError
from pudm_bench.search.suites import parse_suite
from pudm_bench.training import loop as train_module
from pudm_bench.training.batches import TrainingSet
from pudm_bench.training.config import SampleConfig, TrainConfig
from pudm_bench.training.denoiser import MODEL_INFO, build_denoiser, resolve_init_from


def tiny(**changes) -> TrainConfig:
    base = dict(method="unsupervised", steps=4, batch_size=32, lr=1e-3, warmup_steps=1, log_every=2,
                checkpoint_every=4, sample=SampleConfig(num_images=4, steps=2, batch_size=4))
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished 4-step unsupervised run of digits_even (train.run: pipeline/, config.json, checkpoints/)."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    train_cli.run(tiny(), run_dir, progress=False)
    return run_dir


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    return UNet2DModel.from_pretrained(str(path)).state_dict()


def test_pipeline_records_what_it_was_trained_on(source_run, digits_even_split):
    info = json.loads((source_run / "pipeline" / MODEL_INFO).read_text())
    assert info["split"] == "digits_even" and info["split_fingerprint"] == digits_even_split.fingerprint
    assert (info["channels"], info["image_size"], info["method"], info["steps"]) == (1, 8, "unsupervised", 4)


def test_warm_start_begins_from_the_source_weights(source_run, digits_even_split):
    config = tiny(method="pu", beta=0.1, init_from=str(source_run))
    data = TrainingSet.from_split(digits_even_split, "pu")
    torch.manual_seed(0)
    model = build_denoiser(config, digits_even_split, data, torch.device("cpu")).model
    source = unet_weights(source_run / "pipeline" / "unet")
    assert source.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    # A fresh model of the same seed is a different one: the equality above is the warm start's doing.
    torch.manual_seed(0)
    fresh = build_denoiser(tiny(method="pu", beta=0.1), digits_even_split, data, torch.device("cpu")).model
    assert not torch.equal(fresh.state_dict()["conv_in.weight"], source["conv_in.weight"])


def test_warm_started_run_trains_its_own_steps_with_a_fresh_schedule(source_run, tmp_path):
    run_dir = tmp_path / "warm"
    metrics = train_cli.run(tiny(method="pu", beta=0.1, steps=3, init_from=str(source_run)), run_dir,
                               progress=False)
    assert metrics["steps"] == 3 and metrics["resumed_from_step"] == 0  # its own steps, not the source's 4 + 3
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["init_from"] == str(source_run)
    info = json.loads((run_dir / "pipeline" / MODEL_INFO).read_text())
    assert info["init_from"] == str(source_run) and info["method"] == "pu"
    # The training moved the weights away from the source's.
    before = unet_weights(source_run / "pipeline" / "unet")["conv_in.weight"]
    assert not torch.equal(unet_weights(run_dir / "pipeline" / "unet")["conv_in.weight"], before)
    # The first logged lr is the warm-up's, i.e. a fresh cosine schedule (warmup_steps=1: lr at step 2 < base lr).
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert 0 < log[0]["lr"] < 1e-3


def test_resume_keeps_the_warm_start(source_run, tmp_path):
    class Crash(train_module.Callback):
        def on_checkpoint(self, step, path):
            raise KeyboardInterrupt

    config = tiny(method="pu", beta=0.1, steps=4, checkpoint_every=2, init_from=str(source_run))
    split = build_split(get_split("digits_even"))
    straight = train_module.train(config, split, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, split, tmp_path / "b", callbacks=[Crash()])
    resumed = train_module.train(config, split, tmp_path / "b")
    assert resumed.resumed_from == 2
    assert torch.equal(resumed.model.state_dict()["conv_in.weight"], straight.model.state_dict()["conv_in.weight"])
    # The init source is part of the resumable config: another one is refused.
    with pytest.raises(ConfigError, match="init_from"):
        train_module.train(config.replace(init_from=None), split, tmp_path / "b")


def test_another_split_is_refused_in_one_line(source_run):
    odd = build_split(get_split("digits_odd"))
    with pytest.raises(ConfigError, match=r"trained on split 'digits_even' .* not on 'digits_odd'") as err:
        resolve_init_from(source_run, odd)
    assert "\n" not in str(err.value)


def test_another_geometry_is_refused_for_any_pipeline(tmp_path, digits_even_split):
    """A foreign pipeline (no pudm_model.json) of another image size is refused before its weights are read."""
    from diffusers import DDPMPipeline

    from pudm_bench.training.models import build_model, build_noise_scheduler

    DDPMPipeline(unet=build_model("tiny", 16, 1), scheduler=build_noise_scheduler()).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"takes 1x16px images but split 'digits_even' gives 1x8px"):
        resolve_init_from(tmp_path, digits_even_split)
    with pytest.raises(ConfigError, match="holds no trained model"):
        resolve_init_from(tmp_path / "unet", digits_even_split)


def test_config_checks():
    with pytest.raises(ConfigError, match="both give the initial weights"):
        TrainConfig(init_from="a", pretrained="b")
    with pytest.raises(ConfigError, match="model=unet only"):
        TrainConfig(init_from="a", model="sd", pretrained=None)


def test_train_cli_takes_init_from(source_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert train_cli.main(["--split", "digits_odd", "--method", "unsupervised", "--steps", "2",
                              "--init-from", str(source_run), "--out", str(out), "--no-progress"]) == 2
    assert "trained on split 'digits_even'" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert train_cli.main(["--method", "pu", "--beta", "0.1", "--init-from", str(source_run), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["init_from"] == str(source_run.resolve())
    assert printed["run_dir"].endswith("_warm_s0")


# ----------------------------------------------------------------------------------------------------------------
# Suites: ``init: <label>``

def suite(methods):
    return {"name": "s", "splits": ["digits_even"], "methods": methods}


def test_suite_init_names_another_method():
    parsed = parse_suite(suite({"unsupervised": {"method": "unsupervised"},
                                "pu-warm": {"method": "pu", "beta": 0.1, "init": "unsupervised", "steps": 50}}))
    warm = parsed.methods[1]
    assert warm.init == "unsupervised" and warm.params == {"beta": 0.1, "steps": 50}
    with pytest.raises(ConfigError, match=r"methods.pu-warm: init='unsup' is not another method of this suite; "
                                          r"expected one of unsupervised"):
        parse_suite(suite({"unsupervised": {"method": "unsupervised"},
                           "pu-warm": {"method": "pu", "beta": 0.1, "init": "unsup"}}))
    with pytest.raises(ConfigError, match="is itself warm-started"):
        parse_suite(suite({"a": {"method": "unsupervised"}, "b": {"method": "pu", "beta": 0.1, "init": "a"},
                           "c": {"method": "pu", "beta": 0.1, "init": "b"}}))
    with pytest.raises(ConfigError, match="init_from"):  # the runner owns it
        parse_suite({**suite({"a": {"method": "unsupervised"}}), "train": {"init_from": "x"}})


def test_plan_chains_each_warm_cell_to_its_source(tmp_path):
    from tests.helpers import settings_for, write_suite

    data = {"name": "warm", "splits": ["digits_even"], "seeds": 2, "budget": "smoke",
            "methods": {"unsupervised": {"method": "unsupervised"},
                        "pu-warm": {"method": "pu", "beta": 0.1, "init": "unsupervised", "steps": 7},
                        "pnu": {"method": "pnu", "beta": 0.1},
                        "pnu-warm": {"method": "pu", "beta": 0.1, "init": "pnu"}}}
    settings = settings_for(write_suite(tmp_path, data), tmp_path)
    from pudm_bench.orchestration.plan import plan
    from pudm_bench.search.suites import load_suite

    the_plan = plan(settings, load_suite(settings.suite_file))
    warm = the_plan.cells["digits_even/pu-warm/seed1"]
    assert warm["init"] == "digits_even/unsupervised/seed1"  # same split and seed
    assert warm["params"]["init_from"] == "digits_even/unsupervised/seed1"  # the MLflow param
    assert warm["train_config"]["init_from"] is None and warm["train_config"]["steps"] == 7
    assert "init" not in the_plan.cells["digits_even/unsupervised/seed1"]
    # pnu needs labeled normal data, which digits_even lacks: its warm start is skipped too, with the reason.
    assert not any("pnu" in cell for cell in the_plan.cells)
    assert ("digits_even", "pnu-warm", "its warm start pnu is not run there") in the_plan.skipped


class _Searcher:
    """CellSearcher as Tune drives it, on hand-made cells (no Ray cluster needed: the searcher is plain Python)."""

    @staticmethod
    def make(tmp_path):
        from pudm_bench.orchestration.searchers import CellSearcher

        cells = {"a/u/seed0": {}, "a/warm/seed0": {"init": "a/u/seed0"}, "a/u/seed1": {},
                 "a/warm/seed1": {"init": "a/u/seed1"}}
        return CellSearcher(cells, tmp_path)


def finish(tmp_path, searcher, trial_id, ok=True):
    final = tmp_path / f"trial-{trial_id}" / "final" / "pipeline"
    if ok:
        final.mkdir(parents=True)
    searcher.on_trial_complete(trial_id, result={"non_sensitive_rate": 0.9} if ok else {"failed": "boom"})


def test_cell_searcher_waits_for_sources_and_passes_their_final_model(tmp_path):
    from ray.tune.search import Searcher

    searcher = _Searcher.make(tmp_path)
    assert searcher.suggest("t1") == {"cell": "a/u/seed0", "init_from": None}
    # The warm cell of seed 0 waits for its source; the next independent cell runs meanwhile.
    assert searcher.suggest("t2") == {"cell": "a/u/seed1", "init_from": None}
    assert searcher.suggest("t3") is None  # nothing ready: Tune asks again later
    finish(tmp_path, searcher, "t2")
    assert searcher.suggest("t3") == {"cell": "a/warm/seed1", "init_from": str(tmp_path / "trial-t2" / "final")}
    # State survives a driver restart (Tune saves and restores the searcher).
    searcher.save(str(tmp_path / "state.json"))
    restored = _Searcher.make(tmp_path)
    restored.restore(str(tmp_path / "state.json"))
    finish(tmp_path, restored, "t1", ok=False)  # the source failed: the warm cell gets no model
    assert restored.suggest("t4") == {"cell": "a/warm/seed0", "init_from": None}
    assert restored.suggest("t5") == Searcher.FINISHED


def test_a_ready_warm_start_goes_before_the_cells_waiting_to_start_from_scratch(tmp_path):
    """The cheap warm starts run as soon as their source is done, so a benchmark stopped part-way has every method
    of the seeds it reached; the from-scratch cells keep their order."""
    from pudm_bench.orchestration.searchers import CellSearcher

    cells = {"a/u/seed0": {}, "a/v/seed0": {}, "a/pu/seed0": {}, "a/w/seed0": {}, "a/warm/seed0": {"init": "a/u/seed0"},
             "a/warm2/seed0": {"init": "a/u/seed0"}}
    searcher = CellSearcher(cells, tmp_path)
    assert [searcher.suggest(t)["cell"] for t in ("t1", "t2")] == ["a/u/seed0", "a/v/seed0"]
    finish(tmp_path, searcher, "t1")
    assert searcher.suggest("t3")["cell"] == "a/warm/seed0"
    assert searcher.suggest("t4")["cell"] == "a/warm2/seed0"
    assert searcher.suggest("t5")["cell"] == "a/pu/seed0"


def test_a_warm_cell_whose_source_failed_reports_a_failure(monkeypatch):
    from pudm_bench.orchestration import trial as sweep

    reports = []
    monkeypatch.setattr(sweep.tune, "report", lambda result: reports.append(result))
    monkeypatch.setattr(sweep, "fit_trial", lambda *a, **k: pytest.fail("must not train"))
    cells = {"c": {"init": "src", "train_config": TrainConfig().to_dict(), "eval_config": {}}}
    sweep.run_cell_trial({"cell": "c", "init_from": None}, cells, "/tmp", 1, 1.0, 0.0, 0)
    assert reports and "warm start from src: that run did not finish" in reports[0]["failed"]
