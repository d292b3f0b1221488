"""Normal-class coverage and precision/recall: a model that drops normal classes is caught (pudm_bench/diversity.py)."""

import math

import numpy as np
import pytest
import torch

from pudm_bench.scoring import referee as referee_module
from pudm_bench.scoring.diversity import class_coverage, coverage_plot, precision_recall
from pudm_bench.scoring.evaluate import EvalConfig, score_images
from pudm_bench.scoring.referee import RefereeSpec, get_class_referee

DROPPED = ("four", "six")


@pytest.fixture(scope="module")
def class_referee(digits_even_split):
    return get_class_referee(digits_even_split.spec)


def test_coverage_formulas_on_known_counts():
    # Reference 50/50 over two classes; samples 30 of class 0 and 10 of class 1.
    cov = class_coverage([0] * 30 + [1] * 10, [0, 1] * 50, ("a", "b"))
    assert cov.sample_counts == (30, 10) and cov.expected_shares == (0.5, 0.5)
    assert cov.total_variation == pytest.approx(0.5 * (abs(0.75 - 0.5) + abs(0.25 - 0.5)))
    # KL(p || q~) with add-1/2 smoothing: q~ = (30.5/41, 10.5/41).
    expected_kl = 0.5 * math.log(0.5 / (30.5 / 41)) + 0.5 * math.log(0.5 / (10.5 / 41))
    assert cov.kl_divergence == pytest.approx(expected_kl)
    assert cov.missing_classes == ()  # a share of 0.25 is exactly half of 0.5, not under it; one sample fewer is
    assert class_coverage([0] * 30 + [1] * 9, [0, 1] * 50, ("a", "b")).missing_classes == ("b",)


def test_coverage_edge_cases():
    cov = class_coverage([0] * 10 + [1] * 10, [0, 1] * 5, ("a", "b"))
    assert cov.total_variation == 0.0 and cov.missing_classes == ()
    dropped = class_coverage([0] * 20, [0, 1] * 5, ("a", "b"))
    assert dropped.total_variation == pytest.approx(0.5) and dropped.missing_classes == ("b",)
    assert math.isfinite(dropped.kl_divergence) and dropped.kl_divergence > 1.0
    empty = class_coverage([], [0, 1], ("a", "b"))  # no sample was called normal
    assert math.isnan(empty.total_variation) and empty.missing_classes == ("a", "b")
    assert empty.metrics()["coverage_missing"] == 2
    with pytest.raises(ValueError, match="class indices"):
        class_coverage([2], [0, 1], ("a", "b"))


def test_precision_recall_on_clusters():
    """Four well separated clusters; a generator that covers two of them: precision ~1, recall ~1/2."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]])
    real = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])
    fresh = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])  # another draw of the same data
    half = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres[:2]])
    assert precision_recall(real, real) == (1.0, 1.0)
    p_fresh, r_fresh = precision_recall(real, fresh)
    assert p_fresh >= 0.9 and r_fresh >= 0.9
    precision, recall = precision_recall(real, half)
    assert precision >= 0.9 and 0.4 <= recall <= 0.55
    far = real + 1000.0  # nowhere near the real data
    assert precision_recall(real, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], real[:3])


def test_precision_recall_equalises_set_sizes():
    """The larger set is subsampled to the smaller one's size (seeded): the same answer twice."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(400, 5)), rng.normal(size=(100, 5))
    assert precision_recall(real, fake, seed=3) == precision_recall(real, fake, seed=3)
    p, r = precision_recall(real, fake)
    assert 0.6 <= p <= 1.0 and 0.6 <= r <= 1.0  # same distribution: both high


def test_per_class_referee_separates_every_class(class_referee, digits_even_split, digits_referee):
    spec = class_referee.spec
    assert spec.class_groups == tuple((c,) for c in digits_even_split.spec.normal_classes
                                      + digits_even_split.spec.sensitive_classes)
    assert spec.key() != digits_referee.spec.key()  # its own cache entry
    assert class_referee.balanced_accuracy >= 0.9


def test_single_normal_class_has_no_class_referee(monkeypatch):
    from pathlib import Path

    from pudm_bench.data.splits import load_split_file

    spec = load_split_file(Path(__file__).parent / "fixtures" / "splits" / "digits_three_vs_eight.yaml")
    assert len(spec.normal_classes) == 1
    monkeypatch.setattr(referee_module, "train_referee", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert get_class_referee(spec) is None


def normal_images_of_u(split):
    """The normal images of U (real images of the distribution the model is shown) and their normal-class index."""
    return split.unlabeled[~split.unlabeled_is_sensitive], split.unlabeled_normal_labels


def test_the_reference_is_the_class_distribution_of_us_normal_images(digits_even_split):
    images, labels = normal_images_of_u(digits_even_split)
    assert len(labels) == len(images) == digits_even_split.spec.counts.unlabeled_normal
    assert set(labels.tolist()) == set(range(5))
    assert len(digits_even_split.normal_test_labels) == len(digits_even_split.normal_test)


def test_real_normal_images_cover_every_normal_class(class_referee, digits_referee, digits_even_split):
    images, _ = normal_images_of_u(digits_even_split)
    metrics = score_images(images, digits_even_split, EvalConfig(fid="off"), digits_referee,
                           class_referee=class_referee)
    assert metrics["coverage_tv"] <= 0.03 and metrics["coverage_missing"] == 0
    assert metrics["coverage_missing_classes"] == ""
    assert metrics["pr_feature_space"] == "class_referee"
    rows = metrics["coverage_per_class"]
    assert [r["class"] for r in rows] == list(digits_even_split.spec.normal_classes)
    assert sum(r["sample_count"] for r in rows) == metrics["coverage_samples"]
    # The held-out normal test images, scored the same way, are the floor reported beside every model.
    test = score_images(digits_even_split.normal_test, digits_even_split, EvalConfig(fid="off"), digits_referee,
                        class_referee=class_referee)
    assert test["coverage_tv"] == pytest.approx(test["coverage_tv_real_normal"])
    assert test["precision"] == 1.0 and test["recall"] == 1.0  # the set against itself
    true_test = class_coverage(digits_even_split.normal_test_labels, digits_even_split.unlabeled_normal_labels,
                               digits_even_split.spec.normal_classes)
    # The floor is what the test set's own class mix costs (digits' test part is not stratified), +- referee error.
    assert test["coverage_tv_real_normal"] == pytest.approx(true_test.total_variation, abs=0.03)


def test_dropping_two_normal_classes_is_flagged_by_name(class_referee, digits_referee, digits_even_split):
    names = digits_even_split.spec.normal_classes
    images, labels = normal_images_of_u(digits_even_split)
    dropped = images[~torch.isin(labels, torch.tensor([names.index(c) for c in DROPPED]))]
    full = score_images(images, digits_even_split, EvalConfig(fid="off"), digits_referee,
                        class_referee=class_referee)
    metrics = score_images(dropped, digits_even_split, EvalConfig(fid="off"), digits_referee,
                           class_referee=class_referee)
    # The non-sensitive rate cannot see it: the dropped set is as "normal" as the full one.
    assert metrics["non_sensitive_rate"] >= 0.95
    assert metrics["coverage_missing"] == 2 and metrics["coverage_missing_classes"] == ", ".join(DROPPED)
    assert metrics["coverage_tv"] >= 0.3 and metrics["coverage_kl"] > 10 * full["coverage_kl"]
    # Precision/recall against the normal test images: the full set of U's normal images and the mode-dropped one
    # have a similar precision (both are real digits), and the dropped one a much lower recall.
    assert metrics["precision"] >= full["precision"] - 0.05
    assert metrics["recall"] <= 0.8 and metrics["recall"] < full["recall"] - 0.15


def test_a_mode_dropped_subset_of_the_reference_keeps_precision_and_loses_recall(class_referee, digits_referee,
                                                                                  digits_even_split):
    names = digits_even_split.spec.normal_classes
    keep = ~torch.isin(digits_even_split.normal_test_labels, torch.tensor([names.index(c) for c in DROPPED]))
    metrics = score_images(digits_even_split.normal_test[keep], digits_even_split, EvalConfig(fid="off"),
                           digits_referee, class_referee=class_referee)
    # High precision (every sample is a reference image; the reference is subsampled to the samples' size, so not
    # every sample's own ball is drawn), lower recall.
    assert metrics["precision"] >= 0.9 and metrics["recall"] <= 0.75


def test_diversity_off_and_binary_feature_fallback(digits_referee, digits_even_split):
    off = score_images(digits_even_split.normal_test, digits_even_split, EvalConfig(fid="off", diversity="off"),
                       digits_referee)
    assert not any(k.startswith(("coverage", "precision", "recall")) for k in off)
    # No per-class referee (a split with one normal class): precision/recall in the binary referee's features.
    binary = score_images(digits_even_split.normal_test, digits_even_split, EvalConfig(fid="off"), digits_referee)
    assert binary["pr_feature_space"] == "referee" and binary["precision"] == 1.0 and binary["recall"] == 1.0
    assert "coverage_tv" not in binary


def test_coverage_plot_marks_missing_classes():
    cov = class_coverage([0] * 20 + [2] * 20, [0, 1, 2] * 10, ("a", "b", "c"))
    fig = coverage_plot(cov.rows(), "test")
    bars = fig.axes[0].patches
    assert len(bars) == 6  # expected and observed per class
    observed = bars[3:]
    assert [b.get_height() for b in observed] == pytest.approx([0.5, 0.0, 0.5])
    from matplotlib.colors import to_rgba

    assert observed[1].get_facecolor() == to_rgba("tab:red") and observed[0].get_facecolor() == to_rgba("tab:blue")


@pytest.mark.parametrize("changes,message", [({"diversity": "maybe"}, "diversity"), ({"pr_neighbours": 0}, "pr_neighbours")])
def test_eval_config_validation_of_diversity(changes, message):
    from pudm_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        EvalConfig(**changes)


def test_referee_spec_per_class_keeps_the_binary_training():
    from pudm_bench.data.splits import get_split

    split = get_split("digits_odd")
    binary, per_class = RefereeSpec.binary(split), RefereeSpec.per_class(split)
    assert (per_class.epochs, per_class.arch, per_class.min_steps) == (binary.epochs, binary.arch, binary.min_steps)
    assert per_class.class_groups[:5] == tuple((c,) for c in split.normal_classes)
