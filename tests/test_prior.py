"""Class-prior estimation (BBE), the nnPU classifier risk, the filtering baseline, and how runs use them."""

import json
import math

import numpy as np
import pytest
import torch

from pudm_bench.cli import prior as prior_cli
from pudm_bench.data.build import BuiltSplit, build_split, without_unlabeled
from pudm_bench.data.splits import SplitCounts, SplitSpec, get_split
from pudm_bench.errors import ConfigError
from pudm_bench.prior import estimate as prior_module
from pudm_bench.prior.estimate import ScorerConfig, bbe_from_scores, estimate_prior, filter_unlabeled
from pudm_bench.training.config import SampleConfig, TrainConfig
from pudm_bench.training.loop import train
from pudm_bench.training.losses import LABELED_SENSITIVE, UNLABELED, nnpu_classifier_risk

FAST = ScorerConfig(steps=60, batch_size=64, folds=3, bootstrap=30)


# ----------------------------------------------------------------------------------------------------------------
# BBE on scores


@pytest.mark.parametrize("true_prior", [0.05, 0.2])
def test_bbe_recovers_the_prior_of_separable_scores(true_prior):
    rng = np.random.default_rng(0)
    n_u = 2000
    n_sensitive = round(true_prior * n_u)
    unlabeled = np.concatenate([rng.uniform(0, 1, n_u - n_sensitive), rng.uniform(2, 3, n_sensitive)])
    sensitive = rng.uniform(2, 3, 400)
    estimate, top_share = bbe_from_scores(unlabeled, sensitive)
    assert estimate == pytest.approx(true_prior, abs=0.02)
    assert top_share > 0.9  # separable: the top bin that minimises q_U / q_S holds (nearly) all of S


def test_bbe_overestimates_rather_than_underestimates_when_the_classes_overlap():
    """With overlapping score distributions the top bin holds some normal data: q_U/q_S is an upper bound."""
    rng = np.random.default_rng(1)
    n_u, true_prior = 6000, 0.3
    n_sensitive = round(true_prior * n_u)
    unlabeled = np.concatenate([rng.normal(0, 1, n_u - n_sensitive), rng.normal(1.5, 1, n_sensitive)])
    sensitive = rng.normal(1.5, 1, 3000)
    estimate, _ = bbe_from_scores(unlabeled, sensitive)
    assert true_prior - 0.02 <= estimate <= true_prior + 0.15


def test_bbe_is_clipped_to_one_and_refuses_empty_inputs():
    # S scores below all of U: no top bin is sensitive-only; the bound says nothing (1).
    assert bbe_from_scores(np.array([5.0, 6.0, 7.0]), np.array([0.0, 1.0]))[0] == 1.0
    with pytest.raises(ConfigError, match="needs unlabeled and labeled sensitive"):
        bbe_from_scores(np.array([]), np.array([1.0]))


# ----------------------------------------------------------------------------------------------------------------
# The estimator on images: a synthetic mixture of two separable distributions


def stripes_split(true_prior: float, n_u: int = 600, n_s: int = 120, seed: int = 0) -> BuiltSplit:
    """8x8 grey images: normal = horizontal stripes, sensitive = vertical stripes, both with pixel noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(8, 8)
    base[::2, :] = 200.0
    horizontal, vertical = base, base.T

    def draw(pattern, n):
        return (pattern + torch.randn(n, 1, 8, 8, generator=g) * 40 + 20).clamp(0, 255).to(torch.uint8)

    n_sensitive = round(true_prior * n_u)
    truth = torch.zeros(n_u, dtype=torch.bool)
    truth[torch.randperm(n_u, generator=g)[:n_sensitive]] = True
    unlabeled = torch.where(truth.view(-1, 1, 1, 1), draw(vertical, n_u), draw(horizontal, n_u))
    spec = SplitSpec(name="stripes", dataset="digits", normal_classes=("h",), sensitive_classes=("v",),
                     counts=SplitCounts(n_u - n_sensitive, n_sensitive, n_s, 10), image_size=8, channels=1,
                     model_preset="digits")
    empty = torch.zeros(0, 1, 8, 8, dtype=torch.uint8)
    return BuiltSplit(spec=spec, seed=seed, unlabeled=unlabeled, unlabeled_is_sensitive=truth,
                      labeled_sensitive=draw(vertical, n_s), labeled_normal=empty, normal_test=draw(horizontal, 10),
                      sensitive_test=empty, indices={}, fingerprint="synthetic")


@pytest.mark.parametrize("true_prior", [0.05, 0.2])
def test_estimate_prior_recovers_a_known_prior_on_separable_images(true_prior):
    """Stated tolerance: within 0.05 of the truth, with a bootstrap interval around the estimate."""
    est = estimate_prior(stripes_split(true_prior), seed=0, config=FAST)
    assert est.estimate == pytest.approx(true_prior, abs=0.05)
    assert est.ci_low <= est.estimate <= est.ci_high and est.std > 0
    assert est.unlabeled == 600 and est.labeled_sensitive == 120
    assert set(est.metrics()) == {"prior_estimate", "prior_std", "prior_ci_low", "prior_ci_high"}


def test_estimate_prior_reads_neither_the_truth_nor_normal_test_images():
    """Scrambling the ground truth and the test sets changes nothing: the estimator sees U and S only."""
    split = stripes_split(0.2, n_u=300, n_s=60)
    scrambled = BuiltSplit(**{**split.__dict__, "unlabeled_is_sensitive": ~split.unlabeled_is_sensitive,
                              "normal_test": split.labeled_sensitive[:10]})
    a = estimate_prior(split, seed=3, config=FAST)
    b = estimate_prior(scrambled, seed=3, config=FAST)
    assert (a.estimate, a.std) == (b.estimate, b.std)


def test_estimate_prior_needs_two_labeled_sensitive_images():
    split = stripes_split(0.2, n_s=1)
    with pytest.raises(ConfigError, match="at least 2"):
        estimate_prior(split, config=FAST)


# ----------------------------------------------------------------------------------------------------------------
# nnPU classifier risk and the filter


def test_nnpu_classifier_risk_matches_kiryo_et_al():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    role = torch.tensor([LABELED_SENSITIVE, LABELED_SENSITIVE, UNLABELED, UNLABELED, UNLABELED])
    prior = 0.3
    sig = torch.sigmoid
    positive = prior * sig(-logits[:2]).mean()
    negative = sig(logits[2:]).mean() - prior * sig(logits[:2]).mean()
    risk = nnpu_classifier_risk(logits, role, prior)
    assert float(risk.positive_risk) == pytest.approx(float(positive))
    assert float(risk.negative_risk) == pytest.approx(float(negative))
    assert float(risk.loss) == pytest.approx(float(positive + negative))  # R- >= 0 here
    with pytest.raises(ConfigError, match="class prior"):
        nnpu_classifier_risk(logits, role, 1.0)


def test_nnpu_step_pushes_a_negative_risk_back_up():
    """R- < 0 (the classifier fits U's normal part too well): the loss is -R-, and a descent step on it raises U's
    scores and lowers S's, i.e. pushes R- back up (Kiryo et al., Alg. 1)."""
    logits = torch.tensor([5.0, 5.0, -5.0, -5.0], requires_grad=True)
    role = torch.tensor([LABELED_SENSITIVE, LABELED_SENSITIVE, UNLABELED, UNLABELED])
    risk = nnpu_classifier_risk(logits, role, 0.9)
    assert float(risk.negative_risk.detach()) < 0
    assert float(risk.loss.detach()) == pytest.approx(-float(risk.negative_risk.detach()))
    risk.loss.backward()
    assert (logits.grad[2:] < 0).all() and (logits.grad[:2] > 0).all()


@pytest.fixture(scope="module")
def digits_at_ten_percent():
    return build_split(get_split("digits_even", unlabeled_sensitive_share=0.1), seed=0)


def test_filter_removes_most_sensitive_images_of_digits(digits_at_ten_percent):
    """digits_even at 10% sensitive in U; the filter, given the true prior, removes ceil(0.1 |U|) images: most of
    them sensitive (measured 0.79 of U's sensitive images removed, 2.3% of its normal ones)."""
    split = digits_at_ten_percent
    result = filter_unlabeled(split, prior=0.1, seed=0, config=ScorerConfig(steps=150))
    assert len(result.removed) == math.ceil(0.1 * len(split.unlabeled))
    assert result.sensitive_removed_share >= 0.6
    assert result.normal_removed_share <= 0.08
    kept = without_unlabeled(split, result.removed)
    assert len(kept.unlabeled) == len(split.unlabeled) - len(result.removed)
    truth = split.unlabeled_is_sensitive.numpy()
    assert float(kept.unlabeled_is_sensitive.float().mean()) < float(truth.mean()) / 2  # sensitive share halved at least


# ----------------------------------------------------------------------------------------------------------------
# The split option, configs and training runs


def test_unlabeled_sensitive_share_sets_the_true_prior_of_u():
    base = get_split("digits_even")
    for share, expected in ((0.05, 32), (0.1, 67), (0.2, 150)):
        variant = get_split("digits_even", unlabeled_sensitive_share=share)
        assert variant.name == f"digits_even-share{share:g}" and variant.registry_name == "digits_even"
        assert variant.counts.unlabeled_normal == 600 and variant.counts.unlabeled_sensitive == expected
        assert variant.counts.true_prior == pytest.approx(share, abs=0.002)
        built = build_split(variant)
        assert int(built.unlabeled_is_sensitive.sum()) == expected and len(built.labeled_sensitive) == 60
    assert build_split(get_split("digits_even", unlabeled_sensitive_share=0.05)).fingerprint != build_split(base).fingerprint
    with pytest.raises(ConfigError, match="unlabeled_sensitive_share=1.5"):
        base.with_unlabeled_sensitive_share(1.5)
    with pytest.raises(ConfigError, match="no sensitive image"):
        base.with_unlabeled_sensitive_share(0.0001)


@pytest.mark.parametrize("changes, message", [
    ({"method": "unsupervised", "beta": "auto"}, "does not use beta"),
    ({"method": "pu", "beta": "0.1"}, "expected a number in \\(0, 1\\) or auto"),
    ({"method": "filter", "beta": 1.2}, "auto or a class prior"),
    ({"method": "pu", "beta": 0.1, "unlabeled_sensitive_share": 0.0}, "unlabeled_sensitive_share=0.0"),
])
def test_train_config_checks_beta_auto_filter_and_share(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_train_config_knows_when_the_prior_is_estimated():
    assert TrainConfig(method="pu", beta="auto").estimates_prior
    assert TrainConfig(method="filter").estimates_prior
    assert not TrainConfig(method="filter", beta=0.1).estimates_prior
    assert not TrainConfig(method="pu", beta=0.1).estimates_prior
    assert TrainConfig.from_dict(TrainConfig(method="pu", beta="auto").to_dict()).beta == "auto"


def tiny(**changes) -> TrainConfig:
    base = dict(steps=4, batch_size=32, lr=1e-3, warmup_steps=1, log_every=2, checkpoint_every=2, prior_steps=60,
                sample=SampleConfig(num_images=4, steps=2, batch_size=4))
    return TrainConfig(**{**base, **changes})


def test_filter_run_estimates_filters_trains_and_resumes_without_re_estimating(tmp_path, monkeypatch,
                                                                               digits_at_ten_percent):
    monkeypatch.setattr(prior_module, "DEFAULT_SCORER", FAST)
    split = digits_at_ten_percent
    config = tiny(method="filter", unlabeled_sensitive_share=0.1, steps=2)
    first = train(config, split, tmp_path, prior_step=prior_module.prior_step)
    pm = first.prior_metrics
    assert 0 < pm["prior_estimate"] < 1 and pm["beta_used"] == pytest.approx(pm["prior_estimate"])
    assert pm["filter_removed"] == math.ceil(pm["beta_used"] * len(split.unlabeled))
    assert pm["prior_true"] == pytest.approx(split.spec.counts.true_prior)
    saved = json.loads(next((tmp_path / "checkpoints").glob("step_*/state.json")).read_text())["config"]["prior"]
    assert len(saved["filter_removed_positions"]) == pm["filter_removed"]

    def no_second_estimate(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the checkpoint's prior")

    resumed = train(config.replace(steps=4), split, tmp_path, prior_step=no_second_estimate)
    assert resumed.resumed_from == 2 and resumed.prior_metrics == pm


def test_pu_with_beta_auto_trains_with_the_estimate(tmp_path, monkeypatch, digits_at_ten_percent):
    monkeypatch.setattr(prior_module, "DEFAULT_SCORER", FAST)
    seen = []
    import pudm_bench.training.loop as train_module

    real = train_module.training_risk

    def spy(method, error, role, **kwargs):
        seen.append((method, kwargs["beta"]))
        return real(method, error, role, **kwargs)

    monkeypatch.setattr(train_module, "training_risk", spy)
    result = train(tiny(method="pu", beta="auto", steps=2), digits_at_ten_percent, tmp_path,
                   prior_step=prior_module.prior_step)
    assert {m for m, _ in seen} == {"pu"}
    assert {b for _, b in seen} == {result.prior_metrics["beta_used"]}
    assert "filter_removed" not in result.prior_metrics


def test_filter_trains_the_unsupervised_risk(tmp_path, monkeypatch, digits_at_ten_percent):
    monkeypatch.setattr(prior_module, "DEFAULT_SCORER", FAST)
    import pudm_bench.training.loop as train_module

    seen = []
    real = train_module.training_risk
    monkeypatch.setattr(train_module, "training_risk",
                        lambda method, *a, **k: seen.append(method) or real(method, *a, **k))
    train(tiny(method="filter", beta=0.1, steps=2), digits_at_ten_percent, tmp_path, prior_step=prior_module.prior_step)
    assert set(seen) == {"unsupervised"}


def test_the_loop_gets_its_prior_estimator_from_the_caller(tmp_path, digits_at_ten_percent):
    """The training loop imports no estimator: beta auto (or the filter) without one is refused before training."""
    from pudm_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the class-prior estimator"):
        train(tiny(method="pu", beta="auto", steps=2), digits_at_ten_percent, tmp_path)
    assert not list(tmp_path.glob("checkpoints/step_*"))


def test_prior_cli_prints_the_estimate_beside_the_truth(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert prior_cli.main(["--split", "digits_even", "--unlabeled-sensitive-share", "0.2", "--steps", "60",
                              "--folds", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["split"] == "digits_even-share0.2" and rows[0]["true_prior"] == pytest.approx(0.2)
    out_text = capsys.readouterr().out
    assert "true 0.200" in out_text and f"{rows[0]['estimate']:.3f}" in out_text  # the estimate printed is the one saved
    assert abs(rows[0]["estimate"] - 0.2) < 0.15  # 60 classifier steps: a rough estimate, but of this prior
    assert prior_cli.main(["--seeds", "0"]) == 2


def test_train_cli_takes_beta_auto_the_filter_method_and_the_share_option(capsys):
    from pudm_bench.cli.train import main

    assert main(["--method", "filter", "--unlabeled-sensitive-share", "0.05", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["method"] == "filter" and out["config"]["unlabeled_sensitive_share"] == 0.05
    assert out["run_dir"].endswith("digits_even_share0.05_filter_s0")
    assert main(["--method", "pu", "--beta", "auto", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["beta"] == "auto" and out["run_dir"].endswith("digits_even_pu_abs_bauto_s0")
    with pytest.raises(SystemExit):
        main(["--method", "pu", "--beta", "sometimes"])
    assert "expected a number in (0, 1) or auto" in capsys.readouterr().err
