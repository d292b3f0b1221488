"""The referee, the non-sensitive rate and its interval, fd_classifier, and scoring a trained run."""

import json

import numpy as np
import pytest
import torch

from pudm_bench.cli.evaluate import main
from pudm_bench.cli.train import run
from pudm_bench.errors import ConfigError
from pudm_bench.scoring import referee as referee_module
from pudm_bench.scoring.evaluate import EvalConfig, score_images, wilson_interval
from pudm_bench.scoring.fid import frechet_distance
from pudm_bench.scoring.referee import RefereeTooWeakError, check_referee, get_referee, load_referee_file, save_referee
from pudm_bench.training.config import SampleConfig, TrainConfig
from tests.helpers import assert_coverage_matches_its_histogram, assert_rate_is_a_scored_count


def test_wilson_interval_known_values():
    # Reference values: Wilson (1927) score interval, z = 1.96 (e.g. as tabulated by statsmodels' proportion_confint).
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(81, 263)
    assert (low, high) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    low, high = wilson_interval(500, 500)
    assert high == 1.0 and low == pytest.approx(0.99239, abs=1e-4)


def test_digits_referee_is_accurate_and_cached(digits_referee, digits_even_split, monkeypatch):
    assert digits_referee.balanced_accuracy >= 0.95
    assert digits_referee.report["test_images"] == 359 and digits_referee.spec.arch == "small_cnn"
    # A second request reads the cache: training again would raise here.
    monkeypatch.setattr(referee_module, "train_referee", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = get_referee(digits_even_split.spec)
    x = digits_even_split.normal_test[:50]
    assert torch.equal(again.predict(x), digits_referee.predict(x))


def test_real_images_score_as_expected(digits_referee, digits_even_split):
    """Real normal test images are called normal, real sensitive ones not; FD of a set to itself is ~0."""
    config = EvalConfig(fid="off")
    normal = score_images(digits_even_split.normal_test, digits_even_split, config, digits_referee)
    sensitive = score_images(digits_even_split.sensitive_test, digits_even_split, config, digits_referee)
    assert normal["non_sensitive_rate"] >= 0.95 and sensitive["non_sensitive_rate"] <= 0.05
    assert normal["non_sensitive_rate_ci_low"] < normal["non_sensitive_rate"] <= normal["non_sensitive_rate_ci_high"]
    assert normal["referee_normal_rate_on_real_normal"] == normal["non_sensitive_rate"]
    assert normal["fd_classifier"] == pytest.approx(0.0, abs=1e-6)
    assert sensitive["fd_classifier"] > 10 * max(normal["fd_classifier"], 1.0)
    assert normal["quality_metric"] == "fd_per_class" and normal["quality"] == normal["fd_per_class"]
    # Without a per-class referee, fd_per_class is taken in the binary referee's features: fd_classifier.
    assert normal["fd_per_class"] == pytest.approx(normal["fd_classifier"])
    assert "fid" not in normal


def test_fd_classifier_grows_with_corruption(digits_referee, digits_even_split):
    torch.manual_seed(0)
    ref = digits_referee.features(digits_even_split.normal_test)
    distances = []
    for noise in (10, 40, 120):
        noisy = (digits_even_split.normal_test.float() + noise * torch.randn(digits_even_split.normal_test.shape))
        distances.append(frechet_distance(digits_referee.features(noisy.clamp(0, 255).to(torch.uint8)), ref))
    assert distances[0] < distances[1] < distances[2]


def test_referee_floor_refuses_to_score(digits_referee):
    check_referee(digits_referee, 0.9)
    with pytest.raises(RefereeTooWeakError, match="below the floor 0.9999"):
        check_referee(digits_referee, 0.9999)


def test_user_supplied_referee_checkpoint(tmp_path, digits_referee, digits_even_split):
    save_referee(digits_referee, tmp_path / "my_referee")
    loaded = get_referee(digits_even_split.spec, path=tmp_path / "my_referee.safetensors")
    x = digits_even_split.sensitive_test[:40]
    assert torch.equal(loaded.predict(x), digits_referee.predict(x))
    from pudm_bench.data.splits import get_split

    with pytest.raises(ConfigError, match="not split 'digits_odd'"):
        get_referee(get_split("digits_odd"), path=tmp_path / "my_referee")
    with pytest.raises(ConfigError, match="needs"):
        load_referee_file(tmp_path / "missing")


@pytest.mark.parametrize("changes,message", [
    ({"num_samples": 1}, "num_samples"), ({"sampler": "euler"}, "sampler"),
    ({"quality_metric": "is"}, "quality_metric"), ({"fid": "maybe"}, "fid"), ({"referee_floor": 1.5}, "referee_floor"),
])
def test_eval_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**changes)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(method="pu", beta=0.1, steps=4, batch_size=32, log_every=2, checkpoint_every=4,
                         sample=SampleConfig(num_images=4, steps=2, batch_size=4))
    run(config, run_dir, progress=False)
    return run_dir


def test_evaluate_cli_scores_a_trained_run(trained_run, digits_referee, capsys):
    assert main(["--run", str(trained_run), "--num-samples", "16", "--sample-steps", "3", "--fid", "off"]) == 0
    written = json.loads((trained_run / "eval.json").read_text())
    assert (trained_run / "eval_samples.png").is_file()
    for key in ("non_sensitive_rate", "non_sensitive_rate_ci_low", "non_sensitive_rate_ci_high", "fd_classifier",
                "referee_balanced_accuracy", "referee_normal_rate_on_real_normal",
                "referee_normal_rate_on_real_sensitive"):
        assert np.isfinite(written[key]), key
    assert written["num_samples"] == 16 and written["eval_config"]["sample_steps"] == 3
    assert written["referee_balanced_accuracy"] == pytest.approx(digits_referee.balanced_accuracy)
    printed = json.loads(capsys.readouterr().out)
    assert printed["split_fingerprint"] == written["split_fingerprint"]
    # Coverage over digits_even's five normal classes and precision/recall, with the per-class plot.
    rows = written["coverage_per_class"]
    assert [r["class"] for r in rows] == ["zero", "two", "four", "six", "eight"]
    assert sum(r["sample_count"] for r in rows) == written["coverage_samples"] <= 16
    assert_coverage_matches_its_histogram(written, rows)
    assert_rate_is_a_scored_count(written, 16)
    assert (trained_run / "eval_coverage.png").is_file() and "coverage_per_class" not in printed


def test_evaluate_cli_errors_are_one_line(tmp_path, trained_run, capsys):
    assert main(["--run", str(tmp_path)]) == 2
    assert "is not a finished training run" in capsys.readouterr().err
    # FID demanded without weights anywhere: a clear error, not a download attempt.
    assert main(["--run", str(trained_run), "--num-samples", "4", "--sample-steps", "2", "--fid", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--fid-weights" in err and "\n" not in err


def test_fid_is_reported_when_weights_are_present(tmp_path, digits_referee, digits_even_split):
    """The real pytorch-fid path (random He-initialised weights, dims=64) runs when --fid-weights is given."""
    import dataclasses

    from torch import nn

    from pudm_bench.scoring import fid

    torch.manual_seed(0)
    model = fid.untrained_fid_inception()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    weights = tmp_path / "inception.pth"
    torch.save(model.state_dict(), weights)
    small = dataclasses.replace(digits_even_split, normal_test=digits_even_split.normal_test[:16])
    config = EvalConfig(fid="auto", fid_weights=str(weights), fid_dims=64, cache_dir=str(tmp_path / "cache"))
    same = score_images(small.normal_test, small, config, digits_referee)
    other = score_images(digits_even_split.sensitive_test[:16], small, config, digits_referee)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3) and other["fid"] > same["fid"] + 1e-3
    assert same["fid_dims"] == 64 and same["fid_weights"] == "pytorch-fid pt_inception-2015-12-05"
    assert same["quality"] == same["fd_per_class"]  # digits' objective stays fd_per_class
    # Precision/recall in Inception's features too, from the same pass: a set against itself is 1/1, sensitive
    # digits against normal ones lower; the reference features are cached beside the FID statistics.
    assert same["precision_inception"] == 1.0 and same["recall_inception"] == 1.0
    assert other["precision_inception"] < 1.0 or other["recall_inception"] < 1.0
    assert len(list((tmp_path / "cache" / "fid_features").glob("*.npz"))) == 1
    off = score_images(small.normal_test, small, dataclasses.replace(config, diversity="off"), digits_referee)
    assert off["fid"] == pytest.approx(same["fid"]) and "precision_inception" not in off
