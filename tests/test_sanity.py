"""Scores a broken generator cannot win: realism (the k-NN manifold of real images), fd_per_class, and the default
constraints, against generators built from real digits (``pudm_bench.sanity``)."""

import numpy as np
import pytest
import torch

from pudm_bench.cli import sanity as sanity_cli
from pudm_bench.scoring.diversity import on_manifold
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.scoring.referee import get_class_referee
from pudm_bench.search import sanity
from pudm_bench.search.pareto import DEFAULT_CONSTRAINTS


@pytest.fixture(scope="module")
def scores(digits_even_split, digits_referee):
    class_referee = get_class_referee(digits_even_split.spec)
    sets = sanity.broken_generators(digits_even_split, 300)
    return sanity.score_sets(digits_even_split, sets, digits_referee, class_referee, EvalConfig(fid="off"))


def test_on_manifold_on_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [40.0, 0.0]])
    real = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres])
    inside = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])
    between = np.full((50, 2), 20.0)  # halfway: near no real point
    assert bool(on_manifold(real, real).all())  # every point is inside its own ball
    assert on_manifold(real, inside).double().mean() >= 0.9
    assert not bool(on_manifold(real, between).any())
    # The reference is capped (seeded subsample), not matched to the query's size: one query point gets the same
    # answer whether it is scored alone or among many.
    alone = on_manifold(real, inside[:1], max_reference=100)
    among = on_manifold(real, inside, max_reference=100)[:1]
    assert torch.equal(alone, among)
    with pytest.raises(ValueError, match="more than 3 reference images"):
        on_manifold(real[:3], inside)


def test_broken_generators_have_the_splits_geometry(digits_even_split):
    sets = sanity.broken_generators(digits_even_split, 50)
    assert list(sets) == [sanity.REAL, *sanity.BROKEN]
    for name, images in sets.items():
        assert images.shape == (50, 1, 8, 8) and images.dtype == torch.uint8, name
    assert bool((sets["one image"] == sets["one image"][0]).all())
    assert sets["blurred"].float().std() < sets[sanity.REAL].float().std()  # a blur flattens the strokes
    assert sanity.dropped_classes(digits_even_split) == ("zero", "two")


def test_real_images_are_realistic_and_cover_every_class(scores):
    real = scores[sanity.REAL]
    assert real["realistic_share"] >= 0.85 and real["realistic_share_real"] >= 0.85
    assert real["coverage_missing"] == 0 and real["non_sensitive_rate"] >= 0.97
    assert real["realism_feature_space"] == "class_referee"


@pytest.mark.parametrize("name", ["noise", "blobs", "blurred"])
def test_garbage_is_off_the_real_image_manifold(scores, name):
    broken = scores[name]
    assert broken["realistic_share"] < 0.5, broken["realistic_share"]
    # Counted only where a sample is realistic, the rate of garbage collapses, whatever the referee calls it
    # (noise: the binary referee calls nearly all of it normal).
    assert broken["realistic_non_sensitive_rate"] <= broken["realistic_share"]
    assert broken["realistic_non_sensitive_rate"] < 0.5 * scores[sanity.REAL]["realistic_non_sensitive_rate"]


@pytest.mark.parametrize("name", ["one image", "two classes dropped"])
def test_mode_collapse_drops_normal_classes(scores, name):
    broken = scores[name]
    assert broken["coverage_missing"] >= 2  # realistic images, but too few classes
    assert broken["realistic_share"] >= 0.5


@pytest.mark.parametrize("name", sanity.BROKEN)
def test_fd_per_class_ranks_every_broken_set_below_real_images(scores, name):
    assert scores[name]["fd_per_class"] > 5 * scores[sanity.REAL]["fd_per_class"]


def test_every_broken_generator_is_caught_by_the_default_front(scores):
    verdicts = sanity.check(scores, "fd_per_class")
    assert set(verdicts) == set(sanity.BROKEN)
    for name, verdict in verdicts.items():
        assert verdict["caught"], (name, verdict)
    assert "realistic_share>=0.5" in verdicts["noise"]["violations"]
    assert verdicts["two classes dropped"]["violations"] == ["coverage_missing<=0"]
    # Without the default constraints the fd_per_class axis alone still ranks each below the real images.
    assert all(v["below_real_on_both"] for v in sanity.check(scores, "fd_per_class", constraints=()).values())


def test_the_sanity_cli_prints_the_table(capsys):
    assert sanity_cli.main(["--split", "digits_even", "--num-images", "120"]) == 0
    out = capsys.readouterr().out
    assert ", ".join(DEFAULT_CONSTRAINTS) in out and "| two classes dropped |" in out
    assert "not caught" not in out
