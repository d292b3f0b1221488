"""Dataset plug-ins: a package that declares a ``pudm_bench.datasets`` entry point adds a dataset that split files
can name, without editing pudm_bench. Each test installs a plug-in into a temporary folder (a module plus its
``.dist-info`` with ``entry_points.txt``, what pip writes) and runs the splits CLI in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

PLUGIN = '''
import torch
from pudm_bench.data import DatasetAdapter, DatasetParts, TensorSource

CLASSES = ("circles", "squares")


def load(root, download, options):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(200) % 2
    test = torch.arange(200) % 5 == 4
    return DatasetParts(train=TensorSource(images[~test], labels[~test], CLASSES),
                        test=TensorSource(images[test], labels[test], CLASSES))


ADAPTER = DatasetAdapter(name="toy_shapes", load=load, class_names=lambda options, root: CLASSES, needs_root=False)
TAKEN = DatasetAdapter(name="digits", load=load, class_names=lambda options, root: CLASSES, needs_root=False)
'''


def install_plugin(site: Path, target: str) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "toy_plugin.py").write_text(PLUGIN)
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pudm_bench.datasets]\ntoy = {target}\n")


def write_split(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy_split.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy_split", "dataset": "toy_shapes", "normal_classes": ["circles"], "sensitive_classes": ["squares"],
        "counts": {"unlabeled_normal": 50, "unlabeled_sensitive": 5, "labeled_sensitive": 10, "normal_test": "all"},
        "image_size": 8, "channels": 1, "model_preset": "digits", "quality_metric": "fd_classifier"}))
    return path


def splits_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pudm_bench.splits", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_plugin_dataset_is_usable_by_a_split_file(tmp_path):
    install_plugin(tmp_path / "site", "toy_plugin:ADAPTER")
    split = write_split(tmp_path / "splits")
    result = splits_cli(tmp_path / "site", "validate", str(split))
    assert result.returncode == 0, result.stderr
    # Built from the plug-in's data: 80 circles and 80 squares in the train part, counts checked, fingerprint shown.
    assert "ok  toy_split: U 50+5" in result.stdout and "fingerprint" in result.stdout
    # Without the plug-in the same file names an unknown dataset.
    result = splits_cli(tmp_path / "nothing", "validate", str(split))
    assert result.returncode == 2 and "unknown dataset 'toy_shapes'" in result.stderr


def test_a_plugin_class_name_typo_gets_did_you_mean(tmp_path):
    install_plugin(tmp_path / "site", "toy_plugin:ADAPTER")
    split = write_split(tmp_path / "splits")
    data = yaml.safe_load(split.read_text())
    data["sensitive_classes"] = ["squars"]
    split.write_text(yaml.safe_dump(data))
    result = splits_cli(tmp_path / "site", "validate", str(split))
    assert result.returncode == 2 and "did you mean 'squares'" in result.stderr


def test_a_broken_or_clashing_plugin_is_an_error_naming_the_entry_point(tmp_path):
    split = write_split(tmp_path / "splits")
    install_plugin(tmp_path / "broken", "toy_plugin_missing:ADAPTER")
    result = splits_cli(tmp_path / "broken", "validate", str(split))
    assert result.returncode == 2
    assert "dataset plug-in 'toy'" in result.stderr and "failed to load" in result.stderr
    install_plugin(tmp_path / "clash", "toy_plugin:TAKEN")
    result = splits_cli(tmp_path / "clash", "validate", str(split))
    assert result.returncode == 2 and "'digits' is already registered" in result.stderr
