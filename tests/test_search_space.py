"""Search-space YAML: the shipped files, the distributions, the fingerprint, and every one-line load error."""

import copy
from pathlib import Path

import pytest
import yaml

from pudm_bench.errors import ConfigError
from pudm_bench.search.distributions import Choice, IntRange, LogUniform, Uniform
from pudm_bench.search.space import (
    DEFAULT_SEARCH_SPACE,
    KINDS,
    TUNABLE,
    SearchSpace,
    load_search_space,
    parse_search_space,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "spaces/mine.yaml"
BASE = {
    "description": "test",
    "method": "pu",
    "params": {
        "beta": {"kind": "uniform", "low": 0.05, "high": 0.3},
        "correction": {"kind": "choice", "values": ["abs", "max"]},
        "lr": {"kind": "loguniform", "low": 2.0e-4, "high": 3.0e-3},
    },
    "fixed": {"warmup_steps": 100},
}


def space_with(**changes):
    """BASE with top-level keys replaced; ``params__NAME`` / ``fixed__NAME`` replace (None: remove) one entry."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        target = data[section] if name else data
        name = name or key
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return data


def load_error(data, source=SOURCE) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_search_space(data, source)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"search space {source}")
    return message


def assert_mentions(message, *words):
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------------------------
# The shipped files


def test_shipped_spaces_load():
    default = load_search_space(DEFAULT_SEARCH_SPACE)
    assert DEFAULT_SEARCH_SPACE == ROOT / "search_spaces" / "default.yaml"
    assert default.method == "pu" and list(default.params) == ["beta", "correction", "lr"]
    assert default.params["beta"] == Uniform(0.05, 0.2)
    assert default.params["correction"] == Choice(("abs", "max"))
    assert default.params["lr"] == LogUniform(2.0e-4, 3.0e-3)
    assert default.fixed == {} and default.description  # budgets keep their own warm-up
    narrow = load_search_space(ROOT / "search_spaces" / "narrow_beta.yaml")
    assert narrow.params["beta"] == Uniform(0.08, 0.2) and narrow.fixed == {"correction": "abs"}
    assert isinstance(narrow.params["lr"], LogUniform) and "correction" not in narrow.params
    assert narrow.fingerprint() != default.fingerprint()


def test_every_shipped_space_loads():
    files = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        assert load_search_space(path).source == str(path)


def test_module_does_not_import_ray_or_optuna():
    """Only the sweep imports Ray; checked on the source (also catches imports inside functions), without the
    seconds a fresh interpreter would take to import torch."""
    import ast

    import pudm_bench.search.space as module

    imported = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"ray", "optuna"}


# ---------------------------------------------------------------------------------------------------------------
# Distributions


def test_contains():
    assert Uniform(0.05, 0.3).contains(0.05) and Uniform(0.05, 0.3).contains(0.3)
    assert not Uniform(0.05, 0.3).contains(0.31) and not Uniform(0.0, 1.0).contains(True)
    assert not Uniform(0.0, 1.0).contains("0.5")
    assert LogUniform(1e-4, 1e-2).contains(1e-3) and not LogUniform(1e-4, 1e-2).contains(1e-5)
    steps = IntRange(32, 128, 32)
    assert steps.contains(32) and steps.contains(128) and steps.contains(64)
    assert not steps.contains(48) and not steps.contains(160) and not steps.contains(64.0)
    assert IntRange(0, 3).contains(3)  # high is inclusive
    choice = Choice(("abs", "max"))
    assert choice.contains("max") and not choice.contains("min")
    assert Choice((0, 1)).contains(1) and not Choice((0, 1)).contains(True)


def test_center():
    assert Uniform(0.1, 0.3).center() == pytest.approx(0.2)
    assert LogUniform(1e-4, 1e-2).center() == pytest.approx(1e-3)
    assert IntRange(32, 128, 32).center() == 64 and IntRange(0, 10).center() == 5
    assert Choice(("max", "abs")).center() == "max"
    space = load_search_space(DEFAULT_SEARCH_SPACE)
    center = space.center()
    assert center["correction"] == "abs" and center["beta"] == pytest.approx(0.125)
    assert center["lr"] == pytest.approx((2.0e-4 * 3.0e-3) ** 0.5)
    assert space.contains(center) and not space.contains({**center, "beta": 0.5})
    for dist in space.params.values():
        assert dist.contains(dist.center())


def test_kinds_and_tunable_names():
    assert KINDS == ("uniform", "loguniform", "int", "choice")
    assert set(TUNABLE) == {"beta", "correction", "lr", "weight_decay", "warmup_steps", "ema_decay", "batch_size",
                            "steps", "eta", "grad_clip"}


def test_int_and_choice_round_trip(tmp_path):
    data = space_with(params__batch_size={"kind": "int", "low": 16, "high": 64, "step": 16},
                      params__steps={"kind": "int", "low": 100, "high": 300},
                      params__ema_decay={"kind": "choice", "values": [None, 0.999]},
                      params__correction={"kind": "choice", "values": ["max", "abs"]})
    space = parse_search_space(data, SOURCE)
    assert space.params["batch_size"] == IntRange(16, 64, 16) and space.params["steps"] == IntRange(100, 300, 1)
    assert space.params["ema_decay"] == Choice((None, 0.999))
    assert parse_search_space(space.to_dict(), SOURCE) == space
    path = tmp_path / "round_trip.yaml"
    path.write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    again = load_search_space(path)
    assert again.params == space.params and again.fixed == space.fixed
    assert again.fingerprint() == space.fingerprint()
    assert list(again.params) == list(space.params)  # the file's order is kept


# ---------------------------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_stable_for_identical_content(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(DEFAULT_SEARCH_SPACE.read_text())
    b.write_text(DEFAULT_SEARCH_SPACE.read_text().replace("description: \"", "description: \"renamed "))
    fingerprints = {load_search_space(p).fingerprint() for p in (a, b, DEFAULT_SEARCH_SPACE)}
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 16
    reordered = space_with()
    reordered["params"] = dict(reversed(list(reordered["params"].items())))
    assert parse_search_space(reordered, "x").fingerprint() == parse_search_space(space_with(), "y").fingerprint()


@pytest.mark.parametrize("change", [
    {"params__beta": {"kind": "uniform", "low": 0.05, "high": 0.25}},
    {"params__lr": {"kind": "loguniform", "low": 1.0e-4, "high": 3.0e-3}},
    {"params__correction": {"kind": "choice", "values": ["max", "abs"]}},
    {"fixed__warmup_steps": 50},
    {"method": "pnu"},
])
def test_fingerprint_changes_with_content(change):
    assert parse_search_space(space_with(**change), SOURCE).fingerprint() != parse_search_space(BASE, SOURCE).fingerprint()


# ---------------------------------------------------------------------------------------------------------------
# Load errors: one line naming the file, the key, the value and the fix


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_search_space(missing)
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: pu\nparams:\n  beta: {kind: uniform, low: 0.1\n  lr: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert_mentions(message, str(path), "malformed YAML", "line")
    assert "\n" not in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_search_space(path)


def test_exponent_without_decimal_point_says_how_to_write_it(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(DEFAULT_SEARCH_SPACE.read_text().replace("low: 2.0e-4", "low: 2e-4"))
    with pytest.raises(ConfigError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert_mentions(message, str(path), "params.lr", "low='2e-4'", "write 2.0e-4")
    assert "\n" not in message


@pytest.mark.parametrize(("text", "fix"), [("1e-5", "write 1.0e-5"), ("1.0e5", "write 1.0e+5"),
                                           ("3E-3", "write 3.0e-3")])
def test_number_spellings_pyyaml_reads_as_text(text, fix):
    value = yaml.safe_load(f"v: {text}")["v"]
    assert isinstance(value, str)
    message = load_error(space_with(params__lr={"kind": "loguniform", "low": 1.0e-6, "high": value}))
    assert_mentions(message, "params.lr", f"high={text!r}", fix)


@pytest.mark.parametrize(("change", "words"), [
    # top level
    ({"paramz": {}}, ["unknown key 'paramz'", "did you mean 'params'"]),
    ({"method": None}, ["missing method", "method: pu"]),
    ({"method": "unsupervised"}, ["method='unsupervised'", "baselines", "pu or pnu"]),
    ({"method": "pnuu"}, ["unknown method 'pnuu'", "did you mean 'pnu'"]),
    ({"params": {}}, ["params={}", "non-empty"]),
    ({"params": None}, ["params=None", "non-empty"]),
    ({"description": 3}, ["description=3", "text"]),
    ({"fixed": [1, 2]}, ["fixed=[1, 2]", "mapping"]),
    # names
    ({"params__betta": {"kind": "uniform", "low": 0.1, "high": 0.2}},
     ["params", "unknown parameter 'betta'", "did you mean 'beta'", "allowed:"]),
    ({"params__seed": {"kind": "int", "low": 0, "high": 3}}, ["seed is not tunable", "--seed"]),
    ({"params__precision": {"kind": "choice", "values": ["fp16"]}}, ["unknown parameter 'precision'"]),
    ({"fixed__warmup_step": 10}, ["fixed", "unknown parameter 'warmup_step'", "did you mean 'warmup_steps'"]),
    ({"fixed__split": "digits_odd"}, ["split is not tunable", "--split"]),
    # distribution structure
    ({"params__lr": {"kind": "normal", "low": 0.1, "high": 0.2}},
     ["params.lr", "unknown distribution kind 'normal'", "allowed: choice, int, loguniform, uniform"]),
    ({"params__lr": {"kind": "log_uniform", "low": 0.1, "high": 0.2}}, ["did you mean 'loguniform'"]),
    ({"params__lr": {"low": 0.1, "high": 0.2}}, ["params.lr", "missing kind", "uniform"]),
    ({"params__lr": 0.001}, ["params.lr=0.001", "not a distribution", "fixed"]),
    ({"params__lr": {"kind": "uniform", "low": 0.1}}, ["params.lr", "needs high"]),
    ({"params__lr": {"kind": "uniform"}}, ["params.lr", "needs low and high"]),
    ({"params__correction": {"kind": "choice"}}, ["params.correction", "needs values"]),
    ({"params__lr": {"kind": "uniform", "low": 0.1, "hgh": 0.2}}, ["unknown key 'hgh'", "did you mean 'high'"]),
    ({"params__lr": {"kind": "uniform", "low": 0.1, "high": 0.2, "step": 2}}, ["unknown key 'step'"]),
    # bounds
    ({"params__lr": {"kind": "uniform", "low": "small", "high": 0.2}}, ["params.lr", "low='small'", "expected a number"]),
    ({"params__lr": {"kind": "uniform", "low": True, "high": 0.2}}, ["low=True", "expected a number"]),
    ({"params__lr": {"kind": "uniform", "low": 0.01, "high": float("inf")}}, ["high=inf", "finite"]),
    ({"params__lr": {"kind": "uniform", "low": 0.02, "high": 0.01}}, ["params.lr", "low=0.02 >= high=0.01", "swap"]),
    ({"params__lr": {"kind": "uniform", "low": 0.01, "high": 0.01}}, ["low=0.01 >= high=0.01", "fixed"]),
    ({"params__weight_decay": {"kind": "loguniform", "low": 0.0, "high": 0.1}},
     ["params.weight_decay", "low=0.0", "> 0", "uniform"]),
    ({"params__steps": {"kind": "int", "low": 100.5, "high": 200}}, ["params.steps", "low=100.5", "whole number"]),
    ({"params__steps": {"kind": "int", "low": 100.0, "high": 200}}, ["low=100.0", "write 100"]),
    ({"params__steps": {"kind": "int", "low": 100, "high": "1e3"}}, ["high='1e3'", "write 1000"]),
    ({"params__steps": {"kind": "int", "low": 100, "high": 200, "step": 0}}, ["step=0", ">= 1"]),
    ({"params__batch_size": {"kind": "int", "low": 20, "high": 128, "step": 32}},
     ["params.batch_size", "multiples of step", "low: 32"]),
    ({"params__batch_size": {"kind": "int", "low": 200, "high": 100}}, ["low=200 >= high=100"]),
    # choices
    ({"params__correction": {"kind": "choice", "values": []}}, ["params.correction", "values=[]", "non-empty"]),
    ({"params__correction": {"kind": "choice", "values": "abs"}}, ["values='abs'", "list"]),
    ({"params__correction": {"kind": "choice", "values": ["abs", "abs"]}}, ["lists 'abs' twice"]),
    ({"params__correction": {"kind": "choice", "values": ["abs", ["max"]]}}, ["['max']", "string, number"]),
    # per-parameter domains
    ({"params__beta": {"kind": "uniform", "low": 0.0, "high": 0.3}}, ["params.beta", "low=0.0", "class prior", "(0, 1)"]),
    ({"params__beta": {"kind": "uniform", "low": 0.5, "high": 1.0}}, ["params.beta", "high=1.0", "(0, 1)"]),
    ({"params__beta": {"kind": "choice", "values": [0.1, 1.5]}}, ["params.beta", "values[1]=1.5", "(0, 1)"]),
    ({"params__correction": {"kind": "choice", "values": ["abs", "nnpu"]}},
     ["params.correction", "values[1]", "unknown correction 'nnpu'", "allowed: abs, max"]),
    ({"params__correction": {"kind": "choice", "values": ["abs", "mx"]}}, ["did you mean 'max'"]),
    ({"params__correction": {"kind": "uniform", "low": 0.1, "high": 0.2}},
     ["params.correction", "kind='uniform'", "takes names", "kind: choice"]),
    ({"params__lr": {"kind": "loguniform", "low": 1.0e-4, "high": 2.0}}, ["params.lr", "high=2.0", "(0, 1)"]),
    ({"params__lr": {"kind": "choice", "values": [1.0e-4, "3e-4"]}}, ["values[1]='3e-4'", "write 3.0e-4"]),
    ({"params__batch_size": {"kind": "uniform", "low": 16.0, "high": 64.0}},
     ["params.batch_size", "kind='uniform'", "whole numbers", "kind: int"]),
    ({"params__steps": {"kind": "loguniform", "low": 100.0, "high": 1000.0}}, ["params.steps", "whole numbers"]),
    ({"params__warmup_steps": {"kind": "choice", "values": [0, 50.5]}}, ["values[1]=50.5", "whole number"]),
    ({"params__batch_size": {"kind": "int", "low": 1, "high": 64}}, ["params.batch_size", "low=1", ">= 2"]),
    ({"params__grad_clip": {"kind": "uniform", "low": 0.0, "high": 2.0}}, ["params.grad_clip", "low=0.0", "> 0"]),
    ({"params__ema_decay": {"kind": "uniform", "low": 0.9, "high": 1.0}}, ["params.ema_decay", "high=1.0", "(0, 1)"]),
    ({"params__lr": {"kind": "choice", "values": [None, 1.0e-3]}}, ["values[0]=null", "lr needs a value"]),
    # fixed
    ({"fixed__lr": 1.0e-3}, ["lr is both in params and in fixed"]),
    ({"fixed__weight_decay": -0.1}, ["fixed.weight_decay=-0.1", ">= 0"]),
    ({"fixed__warmup_steps": "1e2"}, ["fixed.warmup_steps='1e2'", "write 100"]),
    ({"fixed__correction": "abs"}, ["correction is both in params and in fixed"]),
    # method and the parameters it uses
    ({"params__beta": None}, ["method pu needs the class prior beta", "params", "fixed"]),
    ({"params__eta": {"kind": "uniform", "low": 0.5, "high": 2.0}}, ["eta", "method pu does not use it", "method: pnu"]),
    ({"fixed__eta": 1.0}, ["eta", "method pu does not use it"]),
    # bounds relative to the estimated prior
    ({"params__beta": {"kind": "uniform", "low": "auto*0.5", "high": 0.3}}, ["params.beta", "auto*FACTOR"]),
    ({"params__beta": {"kind": "uniform", "low": "auto/2", "high": "auto*2.0"}}, ["low='auto/2'", "auto*FACTOR"]),
    ({"params__beta": {"kind": "loguniform", "low": "auto*2.0", "high": "auto*0.5"}},
     ["params.beta", "0 < low factor < high factor"]),
    ({"params__lr": {"kind": "loguniform", "low": "auto*0.5", "high": "auto*2.0"}}, ["params.lr", "low='auto*0.5'"]),
])
def test_load_errors(change, words):
    assert_mentions(load_error(space_with(**change)), *words)


def test_fixed_values_are_checked_with_train_config(monkeypatch):
    """What only TrainConfig knows still fails at load, with the file named."""
    from pudm_bench.search import space as search_space
    from pudm_bench.training.config import TrainConfig

    class StricterConfig(TrainConfig):
        def __post_init__(self):
            super().__post_init__()
            if self.warmup_steps > 50:
                raise ConfigError(f"warmup_steps={self.warmup_steps} is invalid: expected at most 50")

    monkeypatch.setattr(search_space, "TrainConfig", StricterConfig)
    message = load_error(BASE)
    assert_mentions(message, "fixed", "warmup_steps=100", "at most 50")


def test_bounds_are_range_checked_by_train_config_alone(monkeypatch):
    """A range TrainConfig narrows is narrowed for a search space's bounds too, named by their key: the search space
    holds no range of its own."""
    from pudm_bench.search import space as search_space
    from pudm_bench.training.config import TrainConfig

    class StricterConfig(TrainConfig):
        def __post_init__(self):
            super().__post_init__()
            if self.lr > 1.0e-3:
                raise ConfigError(f"lr={self.lr} is invalid: expected at most 1.0e-3")

    monkeypatch.setattr(search_space, "TrainConfig", StricterConfig)
    assert_mentions(load_error(BASE), "params.lr: high=0.003 is invalid", "at most 1.0e-3")
    assert parse_search_space(space_with(params__lr={"kind": "loguniform", "low": 1.0e-4, "high": 1.0e-3}), SOURCE)


def test_pnu_takes_eta_and_a_fixed_correction():
    space = parse_search_space(space_with(method="pnu", params__correction=None, fixed__correction="max",
                                          params__eta={"kind": "loguniform", "low": 0.1, "high": 10.0}), SOURCE)
    assert space.method == "pnu" and space.fixed == {"warmup_steps": 100, "correction": "max"}
    assert space.center()["eta"] == pytest.approx(1.0)


def test_fixed_beta_without_searching_it():
    space = parse_search_space(space_with(params__beta=None, fixed__beta=0.17), SOURCE)
    assert "beta" not in space.params and space.fixed["beta"] == 0.17


def test_numbers_are_normalised():
    space = parse_search_space(space_with(params__beta={"kind": "uniform", "low": 0.05, "high": 0.3},
                                          params__grad_clip={"kind": "uniform", "low": 1, "high": 2},
                                          fixed__weight_decay=0), SOURCE)
    assert space.params["grad_clip"] == Uniform(1.0, 2.0) and isinstance(space.params["grad_clip"].low, float)
    assert isinstance(space.fixed["weight_decay"], float)
    assert isinstance(space, SearchSpace)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_search_space(tmp_path)


def test_beta_bounds_relative_to_the_estimated_prior_resolve_in_the_sweep():
    space = load_search_space(ROOT / "search_spaces" / "beta_auto.yaml")
    assert space.needs_prior and not load_search_space(DEFAULT_SEARCH_SPACE).needs_prior
    assert space.params["beta"].to_dict() == {"kind": "loguniform", "low": "auto*0.5", "high": "auto*2"}
    resolved = space.resolve_prior(0.08)
    assert resolved.params["beta"] == LogUniform(0.04, 0.16) and not resolved.needs_prior
    assert resolved.params["lr"] == space.params["lr"] and resolved.fingerprint() != space.fingerprint()
    # Clamped into (0, 1): an estimate of 0.7 cannot give beta 1.4.
    assert space.resolve_prior(0.7).params["beta"] == LogUniform(0.35, 0.999)
    assert space.resolve_prior(0.0).params["beta"].low > 0
    # Checked at load time with a nominal prior of 0.1 (the TrainConfig combination must be valid).
    assert space.center()["beta"] == pytest.approx(0.1)
