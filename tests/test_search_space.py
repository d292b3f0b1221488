"""Search-space YAML: the shipped files, the distributions, and every load-time error (one line each)."""

from pathlib import Path

import pytest

from pudm_bench.errors import ConfigError
from pudm_bench.search_space import (
    DEFAULT_SEARCH_SPACE,
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    load_search_space,
    parse_search_space,
)

BASE = {"method": "pu", "params": {"beta": {"kind": "uniform", "low": 0.05, "high": 0.3},
                                   "correction": {"kind": "choice", "values": ["abs", "max"]},
                                   "lr": {"kind": "loguniform", "low": 2e-4, "high": 3e-3}}}


def with_param(name, spec, **top):
    data = {"method": "pu", "params": {**BASE["params"], name: spec}, **top}
    return data


def test_shipped_spaces_load():
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    assert space.method == "pu" and set(space.params) == {"beta", "correction", "lr"}
    assert isinstance(space.params["lr"], LogUniform) and space.params["correction"] == Choice(("abs", "max"))
    narrow = load_search_space(DEFAULT_SEARCH_SPACE.parent / "narrow_beta.yaml")
    assert narrow.fixed == {"correction": "abs"}


def test_distributions_contain_and_center():
    assert Uniform(0.1, 0.3).contains(0.2) and not Uniform(0.1, 0.3).contains(0.31)
    assert LogUniform(1e-4, 1e-2).center() == pytest.approx(1e-3)
    steps = IntRange(10, 50, 20)
    assert [v for v in range(0, 60) if steps.contains(v)] == [10, 30, 50] and steps.center() == 30
    assert Choice(("abs", "max")).center() == "abs"


def test_fingerprint_tracks_content():
    a, b = parse_search_space(BASE), parse_search_space(dict(BASE))
    changed = parse_search_space(with_param("beta", {"kind": "uniform", "low": 0.05, "high": 0.25}))
    assert a.fingerprint() == b.fingerprint() != changed.fingerprint()


def test_int_and_choice_round_trip():
    space = parse_search_space(with_param("steps", {"kind": "int", "low": 100, "high": 500, "step": 100}))
    assert space.params["steps"] == IntRange(100, 500, 100)
    space = parse_search_space(with_param("batch_size", {"kind": "choice", "values": [32, 64]}))
    assert space.params["batch_size"].values == (32, 64)


@pytest.mark.parametrize("data,message", [
    ({**BASE, "paramz": {}}, "unknown key 'paramz' (did you mean 'params'?)"),
    (with_param("beta", {"kind": "normal", "low": 0.1, "high": 0.2}), "unknown distribution kind 'normal'"),
    (with_param("beta", {"kind": "uniform", "low": 0.1}), "missing required key(s) high"),
    (with_param("lr", {"kind": "loguniform", "low": "1e-5", "high": 1e-3}), "write it with a decimal point (e.g. 1.0e-5)"),
    (with_param("beta", {"kind": "uniform", "low": 0.3, "high": 0.1}), "low=0.3 must be below high=0.1"),
    (with_param("weight_decay", {"kind": "loguniform", "low": 0.0, "high": 0.1}), "loguniform needs low > 0"),
    (with_param("steps", {"kind": "int", "low": 1.5, "high": 10}), "expected an integer"),
    (with_param("steps", {"kind": "int", "low": 1, "high": 10, "step": 0}), "step=0 is invalid"),
    (with_param("correction", {"kind": "choice", "values": []}), "non-empty list"),
    (with_param("correction", {"kind": "choice", "values": ["abs", "abs"]}), "lists an entry twice"),
    (with_param("betta", {"kind": "uniform", "low": 0.1, "high": 0.2}), "did you mean 'beta'"),
    (with_param("beta", {"kind": "uniform", "low": 0.0, "high": 0.2}), "strictly inside (0, 1)"),
    (with_param("beta", {"kind": "uniform", "low": 0.5, "high": 1.5}), "strictly inside (0, 1)"),
    (with_param("correction", {"kind": "choice", "values": ["abs", "clip"]}), "correction must be a choice of abs, max"),
    (with_param("lr", {"kind": "uniform", "low": 0.5, "high": 2.0}), "learning rates must lie in (0, 1)"),
    (with_param("batch_size", {"kind": "uniform", "low": 16, "high": 64}), "use kind int or a choice of integers"),
    ({**BASE, "method": "unsupervised"}, "searched trials train one of pu, pnu"),
    ({**BASE, "fixed": {"lr": 1e-3}}, "lr is both searched (params) and fixed"),
    ({**BASE, "fixed": {"warmup": 10}}, "did you mean 'warmup_steps'"),
    ({**BASE, "fixed": {"grad_clip": -1.0}}, "grad_clip=-1.0 is invalid"),
    ({"method": "pu"}, "missing required key(s) params"),
])
def test_invalid_spaces_fail_with_one_line(data, message):
    with pytest.raises(ConfigError) as info:
        parse_search_space(data, "space.yaml")
    text = str(info.value)
    assert message in text and "space.yaml" in text and "\n" not in text


def test_file_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  beta: {kind: uniform, low: 0.1\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_search_space(bad)
