"""``python -m pudm_bench.splits list|validate``, run in-process: what it prints and the status it returns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pudm_bench.cli.splits import main
from pudm_bench.data.build import build_split
from pudm_bench.data.splits import BUILTIN_SPLITS_DIR, DATA_DIR_ENV, SPLITS_PATH_ENV, load_split_file
from tests.dataset_files import write_mnist

SHIPPED = (
    "celeba_female", "celeba_male", "cifar10_animals", "cifar10_vehicles", "digits_even", "digits_even_cond",
    "digits_odd", "mnist_even", "mnist_even_16", "mnist_odd", "mnist_odd_16", "sd_middle_aged_man", "stl10_animals",
    "stl10_vehicles",
)  # fmt: skip
TORCHVISION_SPLITS = [name for name in SHIPPED if not name.startswith("digits")]
# The pinned digits_even seed-0 fingerprint (see tests/data/test_splits.py).
DIGITS_EVEN_SEED0_FINGERPRINT = "c9cc1d80f2550ae4"


@pytest.fixture(autouse=True)
def no_data_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty dataset folder and no user split folders, whatever the machine running the tests has."""
    empty = tmp_path / "empty_data"
    empty.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(empty))
    monkeypatch.delenv(SPLITS_PATH_ENV, raising=False)
    return empty


def user_split(name: str = "my_digits", **changes) -> dict:
    data = {
        "name": name,
        "dataset": "digits",
        "normal_classes": ["three"],
        "sensitive_classes": ["eight"],
        "counts": {"unlabeled_normal": 50, "unlabeled_sensitive": 5, "labeled_sensitive": 5, "normal_test": "all"},
        "image_size": 8,
        "channels": 1,
        "model_preset": "digits",
    }
    data.update(changes)
    return data


def write(folder: Path, data: dict, file_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file_name or f"{data['name']}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str], str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def line_for(lines: list[str], name: str) -> str:
    """The one output line about split ``name`` (names are matched whole, so digits_even is not mnist_even)."""
    found = [line for line in lines if f" {name}:" in line or line.startswith(f"{name} ")]
    assert len(found) == 1, (name, lines)
    return found[0]


# ------------------------------------------------------------------------------------------------------------ list


def test_list_shows_every_shipped_split(capsys):
    status, lines, err = run(capsys, "list")
    assert status == 0 and err == ""
    assert lines[0].split()[:2] == ["name", "dataset"]
    assert len(lines) == 1 + len(SHIPPED)
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(SHIPPED)
    mnist = line_for(lines, "mnist_even")
    assert "25000+2500 / 2500" in mnist and "3x32" in mnist
    assert mnist.endswith(str(BUILTIN_SPLITS_DIR / "mnist_even.yaml"))
    assert "zero,two,four,six,eight" in line_for(lines, "digits_even")


def test_list_with_splits_dir_adds_user_splits(capsys, tmp_path):
    path = write(tmp_path / "mine", user_split("my_digits"))
    status, lines, _ = run(capsys, "--splits-dir", str(tmp_path / "mine"), "list")
    assert status == 0
    assert len(lines) == 1 + len(SHIPPED) + 1
    mine = line_for(lines, "my_digits")
    assert "50+5 / 5" in mine and mine.endswith(str(path))


def test_list_with_splits_path_environment(capsys, tmp_path, monkeypatch):
    write(tmp_path / "mine", user_split("env_digits"))
    monkeypatch.setenv(SPLITS_PATH_ENV, str(tmp_path / "mine"))
    status, lines, _ = run(capsys, "list")
    assert status == 0
    line_for(lines, "env_digits")


def test_missing_splits_dir_is_an_error(capsys, tmp_path):
    status, lines, err = run(capsys, "--splits-dir", str(tmp_path / "nowhere"), "list")
    assert status == 2 and lines == []
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(tmp_path / "nowhere") in err and "does not exist" in err


def test_duplicate_names_in_user_dirs_are_an_error(capsys, tmp_path):
    first = write(tmp_path / "one", user_split("twin"))
    second = write(tmp_path / "two", user_split("twin"))
    status, _, err = run(capsys, "--splits-dir", str(tmp_path / "one"), "--splits-dir", str(tmp_path / "two"), "list")
    assert status == 2
    assert "defined twice" in err and str(first) in err and str(second) in err


# -------------------------------------------------------------------------------------------------------- validate


def test_validate_all_shipped_splits_without_data(capsys, no_data_anywhere):
    status, lines, err = run(capsys, "validate")
    assert status == 0 and err == ""
    assert len(lines) == len(SHIPPED)
    even = line_for(lines, "digits_even")
    assert even.startswith("ok  digits_even: U 600+60 ")
    assert f"fingerprint {DIGITS_EVEN_SEED0_FINGERPRINT}" in even
    odd = line_for(lines, "digits_odd")
    assert odd.startswith("ok  digits_odd: U 600+60 ") and "fingerprint " in odd
    for name in TORCHVISION_SPLITS:
        line = line_for(lines, name)
        assert line.startswith(f"ok (schema only)  {name}: data not available"), line
        assert str(no_data_anywhere) in line  # says where it looked


def test_validate_downloads_only_when_asked(capsys, monkeypatch):
    """--download reaches the dataset adapter (torchvision's download=True); without it nothing is fetched."""
    from pudm_bench.cli import splits as cli

    seen = []
    real = cli.build_split
    monkeypatch.setattr(cli, "build_split", lambda spec, **kw: seen.append(kw["download"]) or real(spec, **kw))
    shipped = BUILTIN_SPLITS_DIR / "digits_even.yaml"
    assert run(capsys, "validate", str(shipped), "--download")[0] == 0
    assert run(capsys, "validate", str(shipped))[0] == 0
    assert seen == [True, False]


def test_validate_split_seed_changes_the_fingerprint(capsys):
    status, lines, _ = run(capsys, "validate", "--split-seed", "1")
    assert status == 0
    line = line_for(lines, "digits_even")
    assert "fingerprint " in line and DIGITS_EVEN_SEED0_FINGERPRINT not in line


def test_validate_good_user_file(capsys, tmp_path):
    path = write(tmp_path, user_split())
    status, lines, err = run(capsys, "validate", str(path))
    assert status == 0 and err == ""
    assert len(lines) == 1  # only the file asked about, not the registry
    expected = build_split(load_split_file(path), seed=0).fingerprint
    assert lines[0].startswith("ok  my_digits: U 50+5 ")
    assert lines[0].endswith(f"fingerprint {expected}")


def test_validate_several_files(capsys, tmp_path):
    first = write(tmp_path, user_split("first"))
    second = write(tmp_path, user_split("second", normal_classes=["one"]))
    status, lines, _ = run(capsys, "validate", str(first), str(second))
    assert status == 0
    assert [line.split()[1] for line in lines] == ["first:", "second:"]


def test_validate_file_inside_a_splits_dir_is_not_a_clash_with_itself(capsys, tmp_path):
    path = write(tmp_path / "mine", user_split())
    status, lines, err = run(capsys, "--splits-dir", str(tmp_path / "mine"), "validate", str(path))
    assert status == 0, err
    assert lines[0].startswith("ok  my_digits:")


@pytest.mark.parametrize("change, words", [
    ({"channels": 2}, ["channels=2", "expected 1 or 3"]),
    ({"normal_classes": ["sevn"]}, ["unknown class", "'sevn'", "did you mean 'seven'"]),
    ({"name": "../evil"}, ["name='../evil' is invalid"]),
    ({"model_preset": "papr"}, ["did you mean 'paper'"]),
])  # fmt: skip
def test_validate_bad_user_file(capsys, tmp_path, change, words):
    path = write(tmp_path, user_split(**change), "bad.yaml")
    status, lines, err = run(capsys, "validate", str(path))
    assert status == 2 and lines == []
    assert err.startswith("error: ") and err.count("\n") == 1  # one line, no traceback
    assert str(path) in err
    for word in words:
        assert word in err


def test_validate_counts_against_the_data(capsys, tmp_path):
    # Valid schema, but digits has only 131 threes in the train part.
    path = write(tmp_path, user_split(counts={"unlabeled_normal": 500, "unlabeled_sensitive": 5,
                                               "labeled_sensitive": 5, "normal_test": "all"}))
    status, _, err = run(capsys, "validate", str(path))
    assert status == 2
    assert err.startswith("error: ") and "holds only" in err and "unlabeled_normal=500" in err


def test_validate_malformed_yaml(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndataset: digits\nimage_size: 8: 9\n")
    status, _, err = run(capsys, "validate", str(path))
    assert status == 2
    assert err.startswith("error: ") and "malformed YAML at line 3" in err


def test_validate_missing_file(capsys, tmp_path):
    status, _, err = run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert status == 2 and "does not exist" in err


def test_validate_user_file_reusing_a_shipped_name(capsys, tmp_path):
    path = write(tmp_path, user_split("digits_even"), "my_even.yaml")
    status, lines, err = run(capsys, "validate", str(path))
    assert status == 2 and lines == []
    assert "'digits_even'" in err and "already defined" in err
    assert str(path) in err and str(BUILTIN_SPLITS_DIR / "digits_even.yaml") in err


def test_validate_torchvision_user_split_with_tiny_files(capsys, tmp_path):
    write_mnist(tmp_path / "data", [i % 10 for i in range(60)], [i % 10 for i in range(30)])
    path = write(tmp_path / "splits", user_split("tiny_mnist", dataset="mnist", image_size=32, channels=3,
                                                model_preset="paper"))
    # No data in $PUDM_BENCH_DATA: schema only.
    status, lines, _ = run(capsys, "validate", str(path))
    assert status == 0 and lines[0].startswith("ok (schema only)  tiny_mnist:")
    assert "--download" in lines[0]
    # Counts too large for 6 threes: checked once the data is there.
    status, lines, err = run(capsys, "validate", str(path), "--data-dir", str(tmp_path / "data"))
    assert status == 2 and "holds only 6 images" in err
    small = write(tmp_path / "splits", user_split("tiny_mnist", dataset="mnist", image_size=32, channels=3,
                                                 model_preset="paper", counts={"unlabeled_normal": 4,
                                                 "unlabeled_sensitive": 1, "labeled_sensitive": 2,
                                                 "normal_test": "all"}))
    status, lines, err = run(capsys, "validate", str(small), "--data-dir", str(tmp_path / "data"))
    assert status == 0, err
    assert lines[0].startswith("ok  tiny_mnist: U 4+1 ") and "normal test 3," in lines[0]
