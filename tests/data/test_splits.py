"""Sensitive splits: the YAML schema and its errors, the registry, and the index sets ``build_split`` draws.

The digits checks compare against scikit-learn's digits read here directly (not through the adapter), so a wrong
label, a wrong part or a wrong image in a built split is caught, not just a wrong count.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from pudm_bench.data.build import BuiltSplit, build_split, convert_images
from pudm_bench.data.splits import (
    BUILTIN_SPLITS_DIR,
    DATA_DIR_ENV,
    SPLITS_PATH_ENV,
    SplitSpec,
    get_split,
    load_registry,
    load_split_file,
    parse_split,
)
from pudm_bench.errors import ConfigError, DataNotFoundError
from tests.dataset_files import write_imagefolder, write_mnist

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "splits"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
EVEN = ("zero", "two", "four", "six", "eight")
ODD = ("one", "three", "five", "seven", "nine")
SHIPPED = (
    "celeba_female", "celeba_male", "cifar10_animals", "cifar10_vehicles", "digits_even", "digits_even_cond",
    "digits_odd", "mnist_even", "mnist_even_16", "mnist_odd", "mnist_odd_16", "sd_middle_aged_man", "stl10_animals",
    "stl10_vehicles",
)  # fmt: skip
# digits_even built with split seed 0. If this changes, the same (split, seed) now names other images and every
# previously recorded run's fingerprint no longer matches: only change it on purpose, and say so in the changelog.
DIGITS_EVEN_SEED0_FINGERPRINT = "c9cc1d80f2550ae4"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user split folders or dataset folder from the environment leak into a test."""
    monkeypatch.delenv(SPLITS_PATH_ENV, raising=False)
    empty = tmp_path / "no_data_here"
    empty.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(empty))


# ------------------------------------------------------------------------------------------------------- helpers


def digits_split(name: str = "my_digits", counts: dict | None = None, **changes: Any) -> dict:
    """A valid user split over the digits as a YAML mapping; ``changes`` replace top-level keys."""
    data = {
        "name": name,
        "dataset": "digits",
        "description": "test split",
        "normal_classes": list(EVEN),
        "sensitive_classes": list(ODD),
        "counts": {"unlabeled_normal": 100, "unlabeled_sensitive": 10, "labeled_sensitive": 10, "normal_test": "all"},
        "image_size": 8,
        "channels": 1,
        "model_preset": "digits",
    }
    data["counts"].update(counts or {})
    data.update(changes)
    return data


def write_split(folder: Path, data: Any, file_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file_name or f"{data['name']}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def shipped_yaml(name: str) -> dict:
    return yaml.safe_load((BUILTIN_SPLITS_DIR / f"{name}.yaml").read_text())


class DigitsReference:
    """scikit-learn's digits split into train/test exactly as documented (every fifth image is test)."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None]  # (N, 1, 8, 8), 0..16 -> 0..255
        is_test = np.arange(len(bunch.target)) % 5 == 4
        self.train_labels, self.test_labels = bunch.target[~is_test], bunch.target[is_test]
        self.train_pixels, self.test_pixels = pixels[~is_test], pixels[is_test]

    @staticmethod
    def ids(names: tuple[str, ...]) -> list[int]:
        return [DIGITS.index(n) for n in names]

    def count(self, part: str, names: tuple[str, ...]) -> int:
        labels = self.train_labels if part == "train" else self.test_labels
        return int(np.isin(labels, self.ids(names)).sum())


@pytest.fixture(scope="module")
def digits() -> DigitsReference:
    return DigitsReference()


@pytest.fixture(scope="module")
def digits_even_0() -> BuiltSplit:
    return build_split(get_split("digits_even"), seed=0)


# ---------------------------------------------------------------------------------------- counts and classes


@pytest.mark.parametrize("name, normal, sensitive", [("digits_even", EVEN, ODD), ("digits_odd", ODD, EVEN)])
def test_digits_split_has_the_yaml_counts_and_classes(name, normal, sensitive, digits):
    spec = get_split(name)
    counts = shipped_yaml(name)["counts"]
    built = build_split(spec, seed=0)
    normal_ids, sensitive_ids = digits.ids(normal), digits.ids(sensitive)

    is_sensitive = built.unlabeled_is_sensitive
    assert is_sensitive.dtype == torch.bool
    assert int((~is_sensitive).sum()) == counts["unlabeled_normal"] == 600
    assert int(is_sensitive.sum()) == counts["unlabeled_sensitive"] == 60
    assert len(built.unlabeled) == 660
    # The ground truth agrees with the real labels of the chosen images, image by image.
    u_labels = digits.train_labels[built.indices["unlabeled"]]
    assert np.array_equal(np.isin(u_labels, sensitive_ids), is_sensitive.numpy())
    assert np.isin(u_labels[~is_sensitive.numpy()], normal_ids).all()

    assert len(built.labeled_sensitive) == counts["labeled_sensitive"] == 60
    assert np.isin(digits.train_labels[built.indices["labeled_sensitive"]], sensitive_ids).all()
    assert len(built.labeled_normal) == 0  # the shipped digits splits are PU, not PNU
    assert counts["normal_test"] == "all"
    assert len(built.normal_test) == digits.count("test", normal)
    assert len(built.sensitive_test) == digits.count("test", sensitive)
    assert np.isin(digits.test_labels[built.indices["normal_test"]], normal_ids).all()
    assert np.isin(digits.test_labels[built.indices["sensitive_test"]], sensitive_ids).all()

    summary = built.summary()
    assert summary["unlabeled_normal"] == 600 and summary["unlabeled_sensitive"] == 60
    assert summary["true_prior"] == round(60 / 660, 6)
    assert summary["image_shape"] == [1, 8, 8]


def test_built_tensors_are_the_chosen_images_as_uint8(digits_even_0, digits):
    built = digits_even_0
    for tensor in (built.unlabeled, built.labeled_sensitive, built.labeled_normal, built.normal_test,
                   built.sensitive_test):
        assert tensor.dtype == torch.uint8
        assert tuple(tensor.shape[1:]) == (1, 8, 8)
    # Pixel-exact: each row is the digits image at the recorded index of the recorded part.
    assert np.array_equal(built.unlabeled.numpy(), digits.train_pixels[built.indices["unlabeled"]])
    assert np.array_equal(built.labeled_sensitive.numpy(), digits.train_pixels[built.indices["labeled_sensitive"]])
    assert np.array_equal(built.normal_test.numpy(), digits.test_pixels[built.indices["normal_test"]])
    assert np.array_equal(built.sensitive_test.numpy(), digits.test_pixels[built.indices["sensitive_test"]])


def test_unlabeled_set_mixes_normal_and_sensitive(digits_even_0):
    truth = digits_even_0.unlabeled_is_sensitive.numpy()
    # Shuffled once: sensitive images are spread over U, not appended as a block at the end.
    assert not truth[-60:].all()
    assert truth[:330].any() and truth[330:].any()


def test_labeled_normal_when_set(digits):
    spec = parse_split(digits_split(counts={"labeled_normal": 40}))
    built = build_split(spec, seed=3)
    assert spec.counts.labeled_normal == 40
    assert len(built.labeled_normal) == 40
    assert built.labeled_normal.dtype == torch.uint8 and tuple(built.labeled_normal.shape) == (40, 1, 8, 8)
    assert np.isin(digits.train_labels[built.indices["labeled_normal"]], digits.ids(EVEN)).all()
    assert np.array_equal(built.labeled_normal.numpy(), digits.train_pixels[built.indices["labeled_normal"]])
    assert built.summary()["labeled_normal"] == 40
    # N is drawn from the same pool as U's normal images, so the two must not share an image.
    assert not set(built.indices["labeled_normal"]) & set(built.indices["unlabeled_normal"])


def test_fixture_split_counts_and_test_count(digits):
    spec = load_split_file(FIXTURES / "digits_three_vs_eight.yaml")
    built = build_split(spec, seed=0)
    assert int((~built.unlabeled_is_sensitive).sum()) == 100 and int(built.unlabeled_is_sensitive.sum()) == 10
    assert (len(built.labeled_sensitive), len(built.labeled_normal)) == (20, 15)
    assert len(built.sensitive_test) == 12  # a number, not "all"
    assert len(built.normal_test) == digits.count("test", ("three",))
    assert set(digits.train_labels[built.indices["unlabeled_normal"]]) == {3}
    assert set(digits.train_labels[built.indices["labeled_normal"]]) == {3}
    assert set(digits.train_labels[built.indices["unlabeled_sensitive"]]) == {8}
    assert set(digits.train_labels[built.indices["labeled_sensitive"]]) == {8}
    assert set(digits.test_labels[built.indices["sensitive_test"]]) == {8}


# ---------------------------------------------------------------------------------------------------- disjointness


def test_train_sets_never_share_an_index(digits):
    built = build_split(parse_split(digits_split(counts={"unlabeled_normal": 500, "labeled_normal": 200,
                                                         "unlabeled_sensitive": 300, "labeled_sensitive": 400})))
    idx = built.indices
    u, s, n = (set(idx[k].tolist()) for k in ("unlabeled", "labeled_sensitive", "labeled_normal"))
    assert len(u) == len(idx["unlabeled"]) == 800  # no image twice inside U either
    assert len(s) == 400 and len(n) == 200
    assert not u & s and not u & n and not s & n
    u_parts = set(idx["unlabeled_normal"].tolist()) | set(idx["unlabeled_sensitive"].tolist())
    assert set(idx["unlabeled"].tolist()) == u_parts
    # Test indices index the test part: they address images of the test part (pixels match there).
    assert max(idx["normal_test"].max(), idx["sensitive_test"].max()) < len(digits.test_labels)
    assert np.array_equal(built.normal_test.numpy(), digits.test_pixels[idx["normal_test"]])
    assert len(set(idx["normal_test"].tolist()) | set(idx["sensitive_test"].tolist())) == len(digits.test_labels)


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_split(digits_even_0):
    again = build_split(get_split("digits_even"), seed=0)
    assert again.fingerprint == digits_even_0.fingerprint
    assert again.indices.keys() == digits_even_0.indices.keys()
    for key in again.indices:
        assert np.array_equal(again.indices[key], digits_even_0.indices[key]), key
    assert torch.equal(again.unlabeled, digits_even_0.unlabeled)
    assert torch.equal(again.unlabeled_is_sensitive, digits_even_0.unlabeled_is_sensitive)
    assert torch.equal(again.labeled_sensitive, digits_even_0.labeled_sensitive)
    assert torch.equal(again.normal_test, digits_even_0.normal_test)


def test_different_seed_different_split(digits_even_0):
    other = build_split(get_split("digits_even"), seed=1)
    assert other.fingerprint != digits_even_0.fingerprint
    assert not np.array_equal(other.indices["unlabeled"], digits_even_0.indices["unlabeled"])
    assert not np.array_equal(other.indices["labeled_sensitive"], digits_even_0.indices["labeled_sensitive"])


def test_fingerprint_is_pinned(digits_even_0):
    assert digits_even_0.fingerprint == DIGITS_EVEN_SEED0_FINGERPRINT
    assert digits_even_0.summary()["fingerprint"] == DIGITS_EVEN_SEED0_FINGERPRINT


def test_fingerprint_changes_with_image_size_and_channels(digits_even_0):
    spec = get_split("digits_even")
    bigger = build_split(replace(spec, image_size=16), seed=0)
    rgb = build_split(replace(spec, channels=3), seed=0)
    # Same images (same indices), other geometry: the fingerprint must still tell them apart.
    assert np.array_equal(bigger.indices["unlabeled"], digits_even_0.indices["unlabeled"])
    assert tuple(bigger.unlabeled.shape[1:]) == (1, 16, 16)
    assert tuple(rgb.unlabeled.shape[1:]) == (3, 8, 8)
    fingerprints = {digits_even_0.fingerprint, bigger.fingerprint, rgb.fingerprint}
    assert len(fingerprints) == 3


def test_fingerprint_changes_with_dataset_options(tmp_path):
    images = tmp_path / "images"
    write_imagefolder(images, {"cat": 10, "dog": 10}, size=(8, 8))
    base = {
        "name": "pets", "dataset": "imagefolder", "dataset_root": str(images),
        "normal_classes": ["cat"], "sensitive_classes": ["dog"],
        "counts": {"unlabeled_normal": 4, "unlabeled_sensitive": 2, "labeled_sensitive": 2, "normal_test": "all"},
        "image_size": 8, "channels": 3, "model_preset": "small",
    }  # fmt: skip
    plain = build_split(parse_split(base), seed=0)
    options = build_split(parse_split({**base, "dataset_options": {"channels": 1}}), seed=0)
    assert np.array_equal(plain.indices["unlabeled"], options.indices["unlabeled"])
    assert plain.fingerprint != options.fingerprint


# ------------------------------------------------------------------------------------------------ validation errors


def _drop(key: str):
    def change(data: dict) -> None:
        del data[key]
    return change


def _drop_count(key: str):
    def change(data: dict) -> None:
        del data["counts"][key]
    return change


def _set(key: str, value: Any):
    def change(data: dict) -> None:
        data[key] = value
    return change


def _set_count(key: str, value: Any):
    def change(data: dict) -> None:
        data["counts"][key] = value
    return change


INVALID = [
    ("unknown class", _set("normal_classes", ["zero", "sevn"]),
     ["unknown class of dataset digits 'sevn'", "did you mean 'seven'"]),
    ("class both", _set("sensitive_classes", ["one", "two"]), ["two", "both normal and sensitive"]),
    ("class twice", _set("normal_classes", ["zero", "zero"]), ["normal_classes", "lists a class twice"]),
    ("empty classes", _set("sensitive_classes", []), ["sensitive_classes", "non-empty list"]),
    ("numbered classes", _set("normal_classes", [0, 2]), ["normal_classes", "quote names"]),
    ("unknown top key", _set("image_sise", 8), ["unknown key 'image_sise'", "did you mean 'image_size'"]),
    ("unknown counts key", _set_count("unlabelled_normal", 5),
     ["counts", "unknown key 'unlabelled_normal'", "did you mean 'unlabeled_normal'"]),
    ("zero count", _set_count("unlabeled_normal", 0), ["counts.unlabeled_normal=0", "integer >= 1"]),
    ("negative count", _set_count("labeled_sensitive", -5), ["counts.labeled_sensitive=-5", "integer >= 1"]),
    ("float count", _set_count("unlabeled_sensitive", 2.5), ["counts.unlabeled_sensitive=2.5", "integer"]),
    ("string count", _set_count("unlabeled_normal", "100"), ["counts.unlabeled_normal='100'", "integer"]),
    ("bool count", _set_count("unlabeled_normal", True), ["counts.unlabeled_normal=True", "integer"]),
    ("negative labeled_normal", _set_count("labeled_normal", -1), ["counts.labeled_normal=-1", "integer >= 0"]),
    ("zero normal_test", _set_count("normal_test", 0), ["counts.normal_test=0", "integer >= 1"]),
    ("word normal_test", _set_count("normal_test", "most"), ["counts.normal_test='most'"]),
    ("zero sensitive_test", _set_count("sensitive_test", 0), ["counts.sensitive_test=0"]),
    ("channels 2", _set("channels", 2), ["channels=2", "expected 1 or 3"]),
    ("channels 4", _set("channels", 4), ["channels=4", "expected 1 or 3"]),
    ("channels bool", _set("channels", True), ["channels=True", "expected 1 or 3"]),
    ("channels float", _set("channels", 1.0), ["channels=1.0", "expected 1 or 3"]),
    ("tiny image_size", _set("image_size", 2), ["image_size=2", "integer >= 4"]),
    ("unknown preset", _set("model_preset", "papr"), ["unknown model_preset 'papr'", "did you mean 'paper'"]),
    ("preset not a name", _set("model_preset", ["digits"]), ["model_preset=['digits']", "expected a name"]),
    ("unknown dataset", _set("dataset", "digts"), ["unknown dataset 'digts'", "did you mean 'digits'"]),
    ("dataset not a name", _set("dataset", ["digits"]), ["dataset=['digits']", "expected a name"]),
    ("unknown option", _set("dataset_options", {"attribute": "Male"}),
     ["unknown dataset_options key 'attribute'", "dataset digits"]),
    ("options not a mapping", _set("dataset_options", ["channels"]), ["dataset_options must be a mapping"]),
    ("path traversal", _set("name", "../evil"), ["name='../evil' is invalid", "lowercase"]),
    ("uppercase name", _set("name", "Digits_Even"), ["name='Digits_Even' is invalid"]),
    ("space in name", _set("name", "my split"), ["name='my split' is invalid"]),
    ("long name", _set("name", "a" * 65), ["is invalid", "1-64"]),
    ("number name", _set("name", 7), ["name=7 is invalid"]),
    ("missing counts", _drop("counts"), ["missing required key(s) counts"]),
    ("missing preset", _drop("model_preset"), ["missing required key(s) model_preset"]),
    ("missing normal_test", _drop_count("normal_test"), ["counts", "missing required key(s) normal_test"]),
    ("counts not a mapping", _set("counts", [1, 2]), ["counts", "expected a mapping"]),
    ("imagefolder without root", _set("dataset", "imagefolder"), ["imagefolder needs dataset_root"]),
    ("root not a path", _set("dataset_root", 5), ["dataset_root=5 is invalid"]),
]  # fmt: skip


@pytest.mark.parametrize("change, expected", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_split_file_is_refused_with_a_message(tmp_path, change, expected):
    data = digits_split()
    change(data)
    path = write_split(tmp_path, data, "split.yaml")
    with pytest.raises(ConfigError) as info:
        load_split_file(path)
    message = str(info.value)
    for words in expected:
        assert words in message
    assert str(path) in message  # says which file
    assert "\n" not in message  # one line


def test_top_level_must_be_a_mapping(tmp_path):
    for text in ("", "- a\n- b\n"):
        path = tmp_path / "split.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match="expected a mapping"):
            load_split_file(path)


def test_malformed_yaml_names_the_line(tmp_path):
    lines = yaml.safe_dump(digits_split(), sort_keys=False).splitlines()
    bad_line = lines.index("image_size: 8") + 1
    assert bad_line > 5  # after the nested counts, so a wrong count of lines would show
    lines[bad_line - 1] = "image_size: 8: 9"  # a colon too many
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_split_file(path)
    message = str(info.value)
    assert "malformed YAML" in message and str(path) in message
    assert f"at line {bad_line};" in message


def test_missing_split_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_split_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("counts, pool, holds", [
    ({"unlabeled_normal": 5000}, "train part's normal classes", "train_even"),
    ({"unlabeled_normal": 600, "labeled_normal": 119}, "train part's normal classes", "train_even"),
    ({"unlabeled_sensitive": 700, "labeled_sensitive": 21}, "train part's sensitive classes", "train_odd"),
    ({"normal_test": 174}, "test part's normal classes", "test_even"),
    ({"sensitive_test": 187}, "test part's sensitive classes", "test_odd"),
])  # fmt: skip
def test_counts_larger_than_the_data(digits, counts, pool, holds):
    available = {
        "train_even": digits.count("train", EVEN), "train_odd": digits.count("train", ODD),
        "test_even": digits.count("test", EVEN), "test_odd": digits.count("test", ODD),
    }[holds]  # fmt: skip
    spec = parse_split(digits_split(counts=counts))  # loading cannot know; building checks
    with pytest.raises(ConfigError) as info:
        build_split(spec, seed=0)
    message = str(info.value)
    assert pool in message
    assert f"holds only {available} images" in message
    assert "lower the counts" in message
    for key, value in counts.items():
        assert f"{key}={value}" in message


def test_counts_exactly_the_data_are_accepted(digits):
    # The limit itself is fine: one below each failing case above.
    spec = parse_split(digits_split(counts={"unlabeled_normal": 600, "labeled_normal": 118, "normal_test": 173}))
    built = build_split(spec, seed=0)
    assert len(built.labeled_normal) == 118 == digits.count("train", EVEN) - 600
    assert len(built.normal_test) == 173 == digits.count("test", EVEN)


# ------------------------------------------------------------------------------------------------------ registry


def test_shipped_splits_load_with_the_paper_counts():
    registry = load_registry()
    assert sorted(registry) == sorted(SHIPPED)
    table1 = {  # paper Table 1: (U normal, U sensitive, S, normal test)
        "mnist_even": (25000, 2500, 2500, "all"), "mnist_odd": (25000, 2500, 2500, "all"),
        "cifar10_vehicles": (20000, 2000, 2000, 4000), "cifar10_animals": (20000, 2000, 2000, 6000),
        "stl10_vehicles": (2000, 200, 200, 3200), "stl10_animals": (2000, 200, 200, 4800),
        "celeba_male": (2000, 200, 200, "all"), "celeba_female": (2000, 200, 200, "all"),
        "digits_even": (600, 60, 60, "all"), "digits_odd": (600, 60, 60, "all"),
    }  # fmt: skip
    for name, (u_normal, u_sensitive, s, normal_test) in table1.items():
        spec = registry[name]
        c = spec.counts
        assert (c.unlabeled_normal, c.unlabeled_sensitive, c.labeled_sensitive, c.normal_test) == (
            u_normal, u_sensitive, s, normal_test), name
        assert c.labeled_normal == 0, name
        assert spec.source == str(BUILTIN_SPLITS_DIR / f"{name}.yaml")
        assert spec.dataset == name.split("_")[0]
    assert registry["cifar10_vehicles"].normal_classes == ("airplane", "automobile", "ship", "truck")
    assert registry["stl10_vehicles"].normal_classes == ("airplane", "car", "ship", "truck")
    assert registry["celeba_male"].normal_classes == ("male",)
    assert registry["celeba_male"].sensitive_classes == ("female",)
    assert (registry["mnist_even"].channels, registry["mnist_even"].image_size) == (3, 32)
    assert (registry["celeba_female"].image_size, registry["celeba_female"].model_preset) == (256, "paper256")


def test_user_splits_from_extra_dirs(tmp_path):
    path = write_split(tmp_path / "mine", digits_split("my_digits"))
    registry = load_registry(extra_dirs=[tmp_path / "mine"])
    assert set(registry) == set(SHIPPED) | {"my_digits"}
    assert registry["my_digits"].source == str(path)
    assert get_split("my_digits", extra_dirs=[str(tmp_path / "mine")]).counts.unlabeled_normal == 100


def test_user_splits_from_environment(tmp_path, monkeypatch):
    write_split(tmp_path / "a", digits_split("split_a"))
    write_split(tmp_path / "b", digits_split("split_b"), "b.yml")  # .yml is read too
    monkeypatch.setenv(SPLITS_PATH_ENV, f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    registry = load_registry()
    assert {"split_a", "split_b"} <= set(registry)
    assert get_split("split_b").source == str(tmp_path / "b" / "b.yml")


def test_non_yaml_files_are_ignored(tmp_path):
    folder = tmp_path / "mine"
    write_split(folder, digits_split("my_digits"))
    (folder / "notes.txt").write_text("not a split")
    assert set(load_registry(extra_dirs=[folder])) == set(SHIPPED) | {"my_digits"}


def test_duplicate_names_across_directories_name_both_files(tmp_path):
    first = write_split(tmp_path / "one", digits_split("twin"))
    second = write_split(tmp_path / "two", digits_split("twin"), "other_file.yaml")
    with pytest.raises(ConfigError) as info:
        load_registry(extra_dirs=[tmp_path / "one", tmp_path / "two"])
    message = str(info.value)
    assert "'twin' is defined twice" in message
    assert str(first) in message and str(second) in message


def test_user_split_cannot_reuse_a_shipped_name(tmp_path):
    user = write_split(tmp_path / "mine", digits_split("digits_even"), "my_even.yaml")
    with pytest.raises(ConfigError) as info:
        load_registry(extra_dirs=[tmp_path / "mine"])
    message = str(info.value)
    assert "defined twice" in message
    assert str(BUILTIN_SPLITS_DIR / "digits_even.yaml") in message and str(user) in message


def test_a_bad_user_file_fails_the_registry(tmp_path):
    write_split(tmp_path / "mine", digits_split("my_digits", channels=2))
    with pytest.raises(ConfigError, match="channels=2"):
        load_registry(extra_dirs=[tmp_path / "mine"])


def test_missing_splits_dir(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_registry(extra_dirs=[tmp_path / "nowhere"])
    assert str(tmp_path / "nowhere") in str(info.value) and "does not exist" in str(info.value)
    assert "--splits-dir" in str(info.value)


def test_get_split_unknown_name_suggests():
    with pytest.raises(ConfigError) as info:
        get_split("digits_evn")
    message = str(info.value)
    assert "unknown split 'digits_evn'" in message
    assert "did you mean 'digits_even'" in message
    assert "mnist_odd" in message  # lists what exists


# ------------------------------------------------------------------------------------------- user image folder


def imagefolder_split(root: str, **changes: Any) -> dict:
    data = {
        "name": "my_pets",
        "dataset": "imagefolder",
        "dataset_root": root,
        "normal_classes": ["cat", "dog"],
        "sensitive_classes": ["car"],
        "counts": {"unlabeled_normal": 10, "unlabeled_sensitive": 3, "labeled_sensitive": 4, "labeled_normal": 4,
                   "normal_test": "all"},
        "image_size": 8,
        "channels": 3,
        "model_preset": "small",
    }
    data.update(changes)
    return data


def test_user_split_over_an_image_folder(tmp_path, monkeypatch):
    # 10 files a class; every fifth file is test: 8 train + 2 test per class.
    written = write_imagefolder(tmp_path / "images", {"car": 10, "cat": 10, "dog": 10}, size=(8, 8))
    pixels = {str(f.path): f.pixels for f in written}
    path = write_split(tmp_path / "splits", imagefolder_split("../images"))
    monkeypatch.chdir(tmp_path / "no_data_here")  # the relative root is relative to the split file, not the cwd
    spec = load_split_file(path)
    assert spec.data_root(None) == (tmp_path / "images").resolve()
    built = build_split(spec, seed=0)

    assert int((~built.unlabeled_is_sensitive).sum()) == 10 and int(built.unlabeled_is_sensitive.sum()) == 3
    assert (len(built.labeled_sensitive), len(built.labeled_normal)) == (4, 4)
    assert (len(built.normal_test), len(built.sensitive_test)) == (4, 2)
    assert built.unlabeled.dtype == torch.uint8 and tuple(built.unlabeled.shape) == (13, 3, 8, 8)

    from pudm_bench.data import get_dataset

    parts = get_dataset("imagefolder").load(spec.data_root(None), False, {})

    def classes(part, key: str) -> set[str]:
        return {part.paths[i].parent.name for i in built.indices[key]}

    assert classes(parts.train, "unlabeled_normal") <= {"cat", "dog"}
    assert classes(parts.train, "labeled_normal") <= {"cat", "dog"}
    assert classes(parts.train, "unlabeled_sensitive") == {"car"}
    assert classes(parts.train, "labeled_sensitive") == {"car"}
    assert classes(parts.test, "normal_test") == {"cat", "dog"}
    assert classes(parts.test, "sensitive_test") == {"car"}
    assert all(int(parts.test.paths[i].stem[-3:]) % 5 == 4 for i in built.indices["normal_test"])
    # The built images are the files' pixels (lossless PNG, already at the split's size).
    for row, i in zip(built.unlabeled, built.indices["unlabeled"]):
        assert np.array_equal(row.numpy(), pixels[str(parts.train.paths[i])])
    is_car = np.array([parts.train.paths[i].parent.name == "car" for i in built.indices["unlabeled"]])
    assert np.array_equal(is_car, built.unlabeled_is_sensitive.numpy())


def test_image_folder_unknown_class_is_refused_when_built(tmp_path):
    write_imagefolder(tmp_path / "images", {"car": 5, "cat": 5, "dog": 5}, size=(8, 8))
    path = write_split(tmp_path / "splits", imagefolder_split("../images", normal_classes=["cta"]))
    spec = load_split_file(path)  # class names of a folder are only known once it is read
    with pytest.raises(ConfigError) as info:
        build_split(spec, seed=0)
    message = str(info.value)
    assert "unknown class of dataset imagefolder 'cta'" in message
    assert "did you mean 'cat'" in message
    assert "my_pets" in message


def test_image_folder_counts_larger_than_the_folder(tmp_path):
    write_imagefolder(tmp_path / "images", {"car": 5, "cat": 5, "dog": 5}, size=(8, 8))
    spec = load_split_file(write_split(tmp_path / "splits", imagefolder_split("../images")))
    with pytest.raises(ConfigError, match="holds only 8 images"):  # cat + dog: 4 train files each
        build_split(spec, seed=0)


def test_image_folder_missing(tmp_path):
    spec = load_split_file(write_split(tmp_path / "splits", imagefolder_split("../images")))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        build_split(spec, seed=0)


# --------------------------------------------------------------------------------- torchvision data, tiny files


def mnist_split(**changes: Any) -> dict:
    data = {
        "name": "tiny_mnist",
        "dataset": "mnist",
        "normal_classes": ["zero", "two"],
        "sensitive_classes": ["one"],
        "counts": {"unlabeled_normal": 8, "unlabeled_sensitive": 2, "labeled_sensitive": 3, "normal_test": "all"},
        "image_size": 32,
        "channels": 3,
        "model_preset": "paper",
    }
    data.update(changes)
    return data


def test_mnist_split_from_tiny_files(tmp_path):
    train_labels = [i % 10 for i in range(60)]  # 6 of each digit
    test_labels = [i % 10 for i in range(30)]  # 3 of each digit
    written = write_mnist(tmp_path / "data", train_labels, test_labels)
    spec = load_split_file(write_split(tmp_path / "splits", mnist_split()))
    built = build_split(spec, seed=0, data_dir=tmp_path / "data")

    assert tuple(built.unlabeled.shape) == (10, 3, 32, 32)
    assert built.unlabeled.dtype == torch.uint8
    assert tuple(built.labeled_sensitive.shape) == (3, 3, 32, 32)
    assert tuple(built.normal_test.shape) == (6, 3, 32, 32)  # "all": 3 zeros + 3 twos in the test part
    assert tuple(built.sensitive_test.shape) == (3, 3, 32, 32)
    # Grey to RGB by repetition: the three channels are equal.
    assert torch.equal(built.unlabeled[:, 0], built.unlabeled[:, 1])
    assert torch.equal(built.unlabeled[:, 0], built.unlabeled[:, 2])
    # Each row is the written 28x28 image at the recorded index, converted.
    u = built.indices["unlabeled"]
    assert torch.equal(built.unlabeled, convert_images(torch.from_numpy(written.train_images[u]), 32, 3))
    assert np.array_equal(np.isin(written.train_labels[u], [1]), built.unlabeled_is_sensitive.numpy())
    assert set(written.train_labels[u]) == {0, 1, 2}
    assert set(written.test_labels[built.indices["normal_test"]]) == {0, 2}
    nt = built.indices["normal_test"]
    assert torch.equal(built.normal_test, convert_images(torch.from_numpy(written.test_images[nt]), 32, 3))


def test_the_16px_mnist_splits_fit_the_first_10000_training_digits(tmp_path):
    """mnist_even_16 / mnist_odd_16 build from a training part with the class counts of the first 10,000 official
    MNIST training digits (what ../shared/data/mnist and many offline copies hold), 9% of U sensitive, at 16x16x1."""
    first_10000 = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
    train = [digit for digit, n in enumerate(first_10000) for _ in range(n)]
    write_mnist(tmp_path / "data", train, [i % 10 for i in range(50)])
    for name in ("mnist_even_16", "mnist_odd_16"):
        built = build_split(get_split(name), seed=0, data_dir=tmp_path / "data")
        assert tuple(built.unlabeled.shape) == (4950, 1, 16, 16) and len(built.labeled_sensitive) == 450
        assert int(built.unlabeled_is_sensitive.sum()) == 450  # true prior 450 / 4,950 = 0.091
    # With 600 fewer even digits there are not enough for mnist_even_16's U: the count error says how many exist.
    fewer = [d for i, d in enumerate(train) if not (d % 2 == 0 and i % 9 == 0)]
    write_mnist(tmp_path / "fewer", fewer, [i % 10 for i in range(50)])
    with pytest.raises(ConfigError, match="mnist_even_16"):
        build_split(get_split("mnist_even_16"), seed=0, data_dir=tmp_path / "fewer")


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", [i % 10 for i in range(60)], [i % 10 for i in range(30)])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    built = build_split(parse_split(mnist_split()), seed=0)
    assert len(built.unlabeled) == 10


def test_mnist_counts_larger_than_tiny_files(tmp_path):
    write_mnist(tmp_path / "data", [i % 10 for i in range(60)], [i % 10 for i in range(30)])
    spec = parse_split(mnist_split(counts={"unlabeled_normal": 13, "unlabeled_sensitive": 2, "labeled_sensitive": 3,
                                           "normal_test": "all"}))
    with pytest.raises(ConfigError, match="holds only 12 images"):
        build_split(spec, seed=0, data_dir=tmp_path / "data")


def test_missing_data_says_how_to_get_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        build_split(get_split("mnist_even"), seed=0, data_dir=empty)
    message = str(info.value)
    assert "--download" in message
    assert str(empty / "MNIST" / "raw") in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------ convert_images


def test_grey_to_rgb_repeats_the_channel():
    grey = torch.randint(0, 256, (4, 1, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rgb = convert_images(grey, 5, 3)
    assert rgb.dtype == torch.uint8 and tuple(rgb.shape) == (4, 3, 5, 5)
    for channel in range(3):
        assert torch.equal(rgb[:, channel], grey[:, 0])


def test_rgb_to_grey_uses_luma_weights():
    rgb = torch.zeros((4, 3, 2, 2), dtype=torch.uint8)
    rgb[0, 0] = 255  # pure red
    rgb[1, 1] = 255  # pure green
    rgb[2, 2] = 255  # pure blue
    rgb[3] = torch.tensor([10, 200, 40], dtype=torch.uint8).view(3, 1, 1)
    grey = convert_images(rgb, 2, 1)
    assert grey.dtype == torch.uint8 and tuple(grey.shape) == (4, 1, 2, 2)
    # ITU-R 601: 0.299 R + 0.587 G + 0.114 B, rounded.
    expected = [round(0.299 * 255), round(0.587 * 255), round(0.114 * 255),
                round(0.299 * 10 + 0.587 * 200 + 0.114 * 40)]
    assert expected == [76, 150, 29, 125]
    assert grey[:, 0, 0, 0].tolist() == expected
    assert (grey == grey[:, :, :1, :1]).all()  # uniform images stay uniform


def test_resize_keeps_uint8_and_constants():
    constant = torch.full((2, 3, 7, 7), 123, dtype=torch.uint8)
    for size in (4, 16):
        out = convert_images(constant, size, 3)
        assert out.dtype == torch.uint8
        assert tuple(out.shape) == (2, 3, size, size)
        assert (out == 123).all()


def test_matching_images_pass_through_unchanged():
    images = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(convert_images(images, 6, 3), images)


def test_spec_is_frozen():
    spec = get_split("digits_even")
    assert isinstance(spec, SplitSpec)
    with pytest.raises(AttributeError):
        spec.image_size = 16  # type: ignore[misc]


def test_fixture_file_is_a_valid_user_split(tmp_path):
    copied = tmp_path / "mine" / "digits_three_vs_eight.yaml"
    copied.parent.mkdir()
    shutil.copy(FIXTURES / "digits_three_vs_eight.yaml", copied)
    spec = load_registry(extra_dirs=[copied.parent])["digits_three_vs_eight"]
    assert spec.counts.sensitive_test == 12 and spec.counts.labeled_normal == 15
    assert spec.source == str(copied)
