"""Class-conditional PU-DM: conditional splits, the per-condition risk, a conditional UNet trained, saved, reloaded
and sampled per class, and the per-condition scores."""

from __future__ import annotations

import pytest
import torch

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split, parse_split
from pudm_bench.errors import ConfigError
from pudm_bench.training.config import SampleConfig, TrainConfig
from pudm_bench.training.losses import LABELED_SENSITIVE, UNLABELED, conditional_pu_risk, pu_risk, training_risk
from pudm_bench.training.sampling import PixelGenerator, condition_plan


def conditional_split(**changes) -> dict:
    data = {
        "name": "cond", "dataset": "digits",
        "normal_classes": ["zero", "two", "six", "eight"], "sensitive_classes": ["one", "seven"],
        "conditions": {"low": ["zero", "one", "two"], "high": {"classes": ["six", "seven", "eight"],
                                                               "prompt": "a big digit"}},
        "counts": {"unlabeled_normal": 100, "unlabeled_sensitive": 10, "labeled_sensitive": 10, "normal_test": "all"},
        "image_size": 8, "channels": 1, "model_preset": "digits",
    }
    data.update(changes)
    return data


# ------------------------------------------------------------------------------------------------------- the risk


def test_one_condition_is_the_unconditional_risk():
    gen = torch.Generator().manual_seed(0)
    error = torch.rand(32, generator=gen) * 50
    role = torch.tensor([UNLABELED] * 28 + [LABELED_SENSITIVE] * 4)
    for correction in ("abs", "max"):
        plain = pu_risk(error, role, 0.1, correction)
        cond = conditional_pu_risk(error, role, torch.zeros(32, dtype=torch.long), 0.1, correction)
        assert torch.allclose(cond.loss, plain.loss) and torch.allclose(cond.negative_risk, plain.negative_risk)


def test_each_condition_is_corrected_on_its_own():
    # Condition 0: S's error far above U's, so its R- is negative; condition 1: a large positive R-. Pooled, R- is
    # positive and abs changes nothing; per condition, condition 0's R- is flipped.
    error = torch.tensor([1.0, 1.0, 1.0, 100.0, 50.0, 50.0, 50.0, 1.0])
    role = torch.tensor([UNLABELED, UNLABELED, UNLABELED, LABELED_SENSITIVE] * 2)
    condition = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    beta = 0.5
    r0 = pu_risk(error[:4], role[:4], beta, "abs")
    r1 = pu_risk(error[4:], role[4:], beta, "abs")
    assert r0.negative_risk < 0 < r1.negative_risk
    cond = conditional_pu_risk(error, role, condition, beta, "abs")
    assert torch.allclose(cond.loss, 0.5 * r0.loss + 0.5 * r1.loss)
    assert torch.allclose(cond.negative_risk, 0.5 * r0.negative_risk + 0.5 * r1.negative_risk)
    pooled = pu_risk(error, role, beta, "abs")
    assert pooled.negative_risk > 0 and not torch.allclose(cond.loss, pooled.loss)
    # absPU per condition: condition 0's loss holds -R-_0, so its U errors get a negative gradient (pushed up),
    # condition 1's a positive one.
    leaf = error.clone().requires_grad_(True)
    conditional_pu_risk(leaf, role, condition, beta, "abs").loss.backward()
    assert leaf.grad[0] < 0 < leaf.grad[4]


def test_training_risk_routes_conditions_to_pu_only():
    error = torch.rand(16) * 10
    role = torch.tensor([UNLABELED] * 12 + [LABELED_SENSITIVE] * 4)
    condition = torch.arange(16) % 2
    assert torch.equal(training_risk("unsupervised", error, role, condition=condition).loss,
                       training_risk("unsupervised", error, role).loss)
    assert torch.allclose(training_risk("pu", error, role, beta=0.2, condition=condition).loss,
                          conditional_pu_risk(error, role, condition, 0.2, "abs").loss)
    assert torch.allclose(training_risk("pnu", error, role, beta=0.2, eta=1.0, condition=condition).loss,
                          conditional_pu_risk(error, role, condition, 0.2, "abs", eta=1.0).loss)


# ------------------------------------------------------------------------------------------------------ the split


def test_conditional_split_gives_every_image_its_condition():
    split = build_split(parse_split(conditional_split()), seed=0)
    assert split.conditions == ("low", "high") and split.prompts == ("", "a big digit")
    # The digits adapter's train part: which classes each U/S image is, to check the condition against.
    from pudm_bench.data.base import get_dataset

    labels = get_dataset("digits").load(None, False, {}).train.labels
    low = {0, 1, 2}
    for part in ("unlabeled", "labeled_sensitive"):
        truth = torch.tensor([int(labels[i]) not in low for i in split.indices[part]])
        assert torch.equal(getattr(split, f"{part}_conditions"), truth.long())
    assert set(split.labeled_sensitive_conditions.tolist()) == {0, 1}  # S of both conditions
    shares = split.unlabeled_normal_condition_shares()
    normal = split.unlabeled_conditions[~split.unlabeled_is_sensitive]
    assert shares.tolist() == pytest.approx([float((normal == 0).float().mean()), float((normal == 1).float().mean())])
    assert split.summary()["conditions"] == {"low": int((split.unlabeled_conditions == 0).sum()),
                                             "high": int((split.unlabeled_conditions == 1).sum())}


@pytest.mark.parametrize("conditions, message", [
    ({"low": ["zero", "one", "two", "six"], "high": ["six", "seven", "eight"]}, "class 'six' is in conditions"),
    ({"low": ["zero", "one", "two"], "high": ["six", "seven"]}, "eight are in no condition"),
    ({"low": ["zero", "two", "six", "eight"], "high": ["one", "seven"]}, "condition 'high' has no normal class"),
    ({"low": ["zero", "one", "tow"], "high": ["six", "seven", "eight", "two"]}, "did you mean 'two'"),
    ({"all": ["zero", "one", "two", "six", "seven", "eight"]}, "at least two condition names"),
    ({"Low": ["zero", "one", "two"], "high": ["six", "seven", "eight"]}, "condition name 'Low' is invalid"),
    ({"low": {"classes": ["zero", "one", "two"], "promt": "x"}, "high": ["six", "seven", "eight"]}, "promt"),
])
def test_bad_conditions_are_one_line_errors(conditions, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_split(conditional_split(conditions=conditions))
    assert "\n" not in str(info.value)


def test_condition_plan_follows_the_shares():
    plan = condition_plan(10, torch.tensor([0.61, 0.39]))
    assert plan.tolist() == [0] * 6 + [1] * 4
    assert torch.bincount(condition_plan(7, torch.tensor([1.0, 1.0, 1.0]))).tolist() == [3, 2, 2]
    assert condition_plan(5, None).tolist() == [0] * 5


# -------------------------------------------------------------------------------- train, save, reload, sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pudm_bench.cli.train import run

    run_dir = tmp_path_factory.mktemp("cond") / "run"
    config = TrainConfig(split="digits_even_cond", method="pu", beta=0.1, steps=30, log_every=10,
                         checkpoint_every=30, sample=SampleConfig(num_images=8, steps=4))
    metrics = run(config, run_dir, progress=False)
    return config, run_dir, metrics


def test_conditional_unet_trains_saves_and_reloads(trained):
    from diffusers import DDPMPipeline, UNet2DModel

    from pudm_bench.training.denoiser import load_generator
    from pudm_bench.training.sampling import sample_images

    config, run_dir, metrics = trained
    assert metrics["steps"] == 30 and (run_dir / "samples.png").is_file()
    pipe = DDPMPipeline.from_pretrained(str(run_dir / "pipeline"))
    assert pipe.unet.config.num_class_embeds == 2
    unet = UNet2DModel.from_pretrained(str(run_dir / "pipeline" / "unet")).eval()
    labels = torch.tensor([0, 0, 1, 1])
    one = sample_images(unet, pipe.scheduler, num_images=4, steps=4, seed=3, class_labels=labels)
    again = sample_images(unet, pipe.scheduler, num_images=4, steps=4, seed=3, class_labels=labels)
    assert torch.equal(one, again) and one.shape == (4, 1, 8, 8)
    # Same noise, other class: the class embedding changes the samples.
    other = sample_images(unet, pipe.scheduler, num_images=4, steps=4, seed=3, class_labels=1 - labels)
    assert not torch.equal(one, other)
    with pytest.raises(ConfigError, match="needs class_labels"):
        sample_images(unet, pipe.scheduler, num_images=2, steps=2)
    # load_generator (evaluate --run) samples the reloaded model in U's condition mix.
    split = build_split(get_split("digits_even_cond"))
    drawn = load_generator(run_dir / "pipeline", config, split, "cpu")(10, steps=4, seed=3)
    counts = torch.bincount(drawn.conditions, minlength=2)
    expected = condition_plan(10, split.unlabeled_normal_condition_shares())
    assert torch.equal(drawn.conditions, expected) and counts.tolist()[0] > counts.tolist()[1]


def test_conditional_evaluation_reports_each_condition(trained, digits_referee):
    from pudm_bench.scoring.evaluate import EvalConfig, evaluate_model
    from pudm_bench.training.denoiser import load_generator

    config, run_dir, _ = trained
    split = build_split(get_split("digits_even_cond"))
    generator = load_generator(run_dir / "pipeline", config, split, "cpu")
    metrics = evaluate_model(generator, split, EvalConfig(num_samples=40, sample_steps=4, diversity="off",
                                                          fid="off"), grid_path=run_dir / "grid.png")
    assert metrics["num_samples/low"] + metrics["num_samples/high"] == 40
    assert metrics["num_samples/low"] > metrics["num_samples/high"]  # U holds more low normal digits
    pooled = (metrics["non_sensitive_rate/low"] * metrics["num_samples/low"]
              + metrics["non_sensitive_rate/high"] * metrics["num_samples/high"]) / 40
    assert metrics["non_sensitive_rate"] == pytest.approx(pooled)
    assert metrics["non_sensitive_rate_min_condition"] == min(metrics["non_sensitive_rate/low"],
                                                              metrics["non_sensitive_rate/high"])
    assert (run_dir / "grid.png").is_file()


def test_pretrained_unet_must_match_the_split_conditions(trained, tmp_path):
    from pudm_bench.training.models import load_pretrained

    _, run_dir, _ = trained
    with pytest.raises(ConfigError, match="conditional on 2 classes but the split has no conditions"):
        load_pretrained(str(run_dir / "pipeline"), 8, 1, None)
    model, _ = load_pretrained(str(run_dir / "pipeline"), 8, 1, 2)
    assert model.config.num_class_embeds == 2


def test_unconditional_generator_is_unchanged(digits_even_split):
    from pudm_bench.training.models import build_model, build_noise_scheduler
    from pudm_bench.training.sampling import sample_images

    torch.manual_seed(0)
    model = build_model("tiny", 8, 1)
    scheduler = build_noise_scheduler()
    drawn = PixelGenerator(model, scheduler)(3, steps=3, seed=1)
    assert torch.equal(drawn.images, sample_images(model, scheduler, num_images=3, steps=3, seed=1))
    assert drawn.conditions.tolist() == [0, 0, 0]
