"""benchmarks/gpu/check.py --tiny: every section of the prepared GPU check runs on a CPU at toy sizes, on MNIST files
the test writes, and reports what the full check reports on a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.dataset_files import write_mnist

CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "check.py"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_tiny_check_runs_every_section_and_writes_its_report(tmp_path):
    data = tmp_path / "data"
    write_mnist(data, [i % 10 for i in range(120)], [i % 10 for i in range(60)])
    check = load_check()
    assert check.main(["--tiny", "--data-dir", str(data), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["skipped"] == [] and report["machine"]["tiny"] is True
    steps = report["steps"]
    assert [(r["size"], r["batch"], r["precision"]) for r in steps] == [(16, 4, "fp32"), (16, 4, "bf16")]
    for row in steps:  # both timings taken, and the loop's per-step cost compared with the bare model's
        assert row["bare_ms"] > 0 and row["loop_ms"] > 0
        assert row["loop_vs_bare"] == pytest.approx(row["loop_ms"] / row["bare_ms"])
    assert [r["size"] for r in report["sampling"]] == [16] and report["sampling"][0]["images_per_s"] > 0
    assert report["inception"][0]["images"] == check.TINY.inception_images
    compare = report["compare"]
    assert [r["method"] for r in compare] == ["unsupervised", "pu abs beta 0.1"]
    samples = check.TINY.compare_samples
    for row in compare:  # scored by the suite's evaluation: the rate is a count of the samples
        assert row["non_sensitive_rate"] * samples == pytest.approx(round(row["non_sensitive_rate"] * samples))
        assert row["train_s"] > 0 and row["fd_per_class"] > 0
    assert {"unsupervised.png", "pu.png", "check.md"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert "Unsupervised vs PU on real MNIST" in (tmp_path / "out" / "check.md").read_text()


def test_the_full_check_refuses_to_run_without_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_check().main(["--data-dir", str(tmp_path)]) == 2
    assert "no GPU visible" in capsys.readouterr().err
