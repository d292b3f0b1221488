"""docs/adding-a-split.md, done literally: write an image folder, take the split YAML from the page, validate it with
``python -m pudm_bench.splits validate`` and run ``python -m pudm_bench.sweep --split NAME --splits-dir DIR``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_rate_is_a_scored_count, doc_split, write_my_splits


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command as a user runs it: a new interpreter (about 10 s of imports on 2 cores; used once per page)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def splits_cli(capsys, monkeypatch):
    """``python -m pudm_bench.splits ARGS`` in this process (its ``main``, from ``cwd``): (exit code, stdout,
    stderr)."""
    from pudm_bench.cli.splits import main

    def call(*args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call




@pytest.fixture
def my_splits(tmp_path: Path) -> Path:
    return write_my_splits(tmp_path / "my_splits")


def test_the_documented_image_folder_split_validates(my_splits, tmp_path, splits_cli):
    result = run("pudm_bench.splits", "validate", str(my_splits / "pets.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pets_no_dogs" in result.stdout and re.search(r"\b[0-9a-f]{16}\b", result.stdout)  # built: fingerprint
    code, out, _ = splits_cli("list", "--splits-dir", str(my_splits), cwd=tmp_path)
    assert code == 0 and "pets_no_dogs" in out and "60+6 / 12" in out


def test_mistakes_in_the_file_fail_in_one_line(my_splits, tmp_path, splits_cli):
    data = doc_split("pets_no_dogs")
    data["sensitive_classes"] = ["dgos"]
    (my_splits / "pets.yaml").write_text(yaml.safe_dump(data))
    code, _, err = splits_cli("validate", str(my_splits / "pets.yaml"), cwd=tmp_path)
    assert code != 0 and "did you mean 'dogs'" in err and len(err.strip().splitlines()) == 1
    data = doc_split("pets_no_dogs")
    data["counts"]["unlabeled_normal"] = 600
    (my_splits / "pets.yaml").write_text(yaml.safe_dump(data))
    code, _, err = splits_cli("validate", str(my_splits / "pets.yaml"), cwd=tmp_path)
    assert code != 0 and "60" in err and len(err.strip().splitlines()) == 1  # says how many training cats there are


def test_the_documented_regrouping_of_digits_validates(tmp_path, splits_cli):
    folder = tmp_path / "regroup"
    folder.mkdir()
    (folder / "digits_small.yaml").write_text(yaml.safe_dump(doc_split("digits_small")))
    code, out, err = splits_cli("validate", str(folder / "digits_small.yaml"), cwd=tmp_path)
    assert code == 0, err
    assert "digits_small" in out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sweep_runs_on_the_new_split_from_its_file_alone(pets_sweep_losing_a_node):
    """``python -m pudm_bench.sweep --split pets_no_dogs --splits-dir my_splits --budget smoke`` with 1 trial.

    The sweep is shared with tests/test_reliability.py (session fixture ``pets_sweep_losing_a_node`` in conftest):
    it runs on a multi-node Ray cluster that loses a node during the first trial, so the split file and its image
    folder are read, from the path given with --splits-dir alone, by Train workers on other nodes (and again after
    the loss). Only the part of the outcome this page promises is asserted here."""
    from mlflow.tracking import MlflowClient

    text, uri, _, _ = pets_sweep_losing_a_node
    assert "Pareto front" in text
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pudm-pets_no_dogs")
    runs = client.search_runs([experiment.experiment_id], "tags.`pudm.kind` = 'trial'")
    assert len(runs) == 1 and all(r.info.status == "FINISHED" for r in runs)  # the trial asked for
    for run in runs:
        metrics = run.data.metrics
        assert_rate_is_a_scored_count(metrics, int(metrics["num_samples"]))
        assert metrics["fd_classifier"] > 0
    parent = client.search_runs([experiment.experiment_id], "tags.`pudm.kind` = 'sweep'")[0]
    assert parent.data.tags["pudm.split"] == "pets_no_dogs" and parent.data.tags["pudm.dataset"] == "imagefolder"


def test_the_documented_pu_folder_validates_and_counts_its_files(tmp_path, capsys):
    """The page's PU folder (section 4), at 8 px: its YAML validates against a folder laid out as the page shows;
    one file too few in 0_unlabeled/ is a one-line error naming the count. (In this process: the subprocess runs
    of the other pages' examples already cover the command as users run it.)"""
    from pudm_bench.cli.splits import main
    from tests.helpers import write_pu_folder

    folder = tmp_path / "my_splits"
    write_pu_folder(folder / "celeb", n_normal=64, n_sensitive_u=16, n_s=20, n_eval=10)
    data = {**doc_split("celeb_case"), "image_size": 8, "dataset_options": {"channels": 3, "image_size": 8}}
    (folder / "celeb.yaml").write_text(yaml.safe_dump(data))
    assert main(["validate", str(folder / "celeb.yaml")]) == 0
    out = capsys.readouterr().out
    assert "celeb_case" in out and "64+16" in out
    (folder / "celeb" / "0_unlabeled" / "n000.png").unlink()
    (folder / "celeb" / "metadata.jsonl").unlink()
    assert main(["validate", str(folder / "celeb.yaml")]) != 0
    err = capsys.readouterr().err
    assert "= 80 but U's folder holds 79 images" in err and len(err.strip().splitlines()) == 1


def test_the_documented_conditional_split_validates():
    from pudm_bench.data.build import build_split
    from pudm_bench.data.splits import parse_split

    split = build_split(parse_split(doc_split("digits_small_large")))
    assert split.conditions == ("small", "large") and split.prompts == ("a small digit", "")
