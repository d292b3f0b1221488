"""Search spaces: a YAML file in ``search_spaces/`` -> typed distributions, validated when loaded.

This module does not import Ray or Optuna: ``sweep.py`` turns these distributions into Ray Tune domains, which
Ray's ``OptunaSearch`` converts to Optuna distributions. Only the kinds below are admitted (no code in YAML).

```yaml
description: "PU-DM: class prior, correction and learning rate"
method: pu                     # what the searched trials train (pu or pnu); the baselines come from the sweep
params:
  beta: {kind: uniform, low: 0.05, high: 0.3}
  correction: {kind: choice, values: [abs, max]}
  lr: {kind: loguniform, low: 2.0e-4, high: 3.0e-3}
fixed:                         # optional TrainConfig values every searched trial uses
  warmup_steps: 100
```
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pudm_bench.errors import ConfigError, check_keys, unknown_name
from pudm_bench.losses import CORRECTIONS

DEFAULT_SEARCH_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"
KINDS = ("uniform", "loguniform", "int", "choice")
SEARCHED_METHODS = ("pu", "pnu")
TUNABLE = ("beta", "correction", "lr", "weight_decay", "warmup_steps", "ema_decay", "batch_size", "steps", "eta",
           "grad_clip")
INTEGER_PARAMS = ("warmup_steps", "batch_size", "steps")
TOP_KEYS = ("description", "method", "params", "fixed")
# Set by the sweep itself (split, data, method), not by a search space.
FIXED_EXCLUDED = ("split", "method", "splits_dirs", "data_dir", "download", "sample")


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def center(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def center(self) -> float:
        return math.sqrt(self.low * self.high)


@dataclass(frozen=True)
class IntRange:
    """Integers low..high inclusive, in steps of ``step``."""

    low: int
    high: int
    step: int = 1

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def center(self) -> int:
        return self.low + ((self.high - self.low) // 2 // self.step) * self.step


@dataclass(frozen=True)
class Choice:
    values: tuple

    def contains(self, value: Any) -> bool:
        return value in self.values

    def center(self) -> Any:
        return self.values[0]


Distribution = Uniform | LogUniform | IntRange | Choice


@dataclass(frozen=True)
class SearchSpace:
    method: str
    params: Mapping[str, Distribution]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<memory>"

    def center(self) -> dict[str, Any]:
        """A representative configuration (midpoint, geometric mean, first choice)."""
        return {name: dist.center() for name, dist in self.params.items()}

    def fingerprint(self) -> str:
        """sha256 prefix of the canonical content (not the file's comments): detects a changed space on resume."""
        payload = {"method": self.method, "fixed": dict(sorted(self.fixed.items())),
                   "params": {k: [type(v).__name__, repr(v)] for k, v in sorted(self.params.items())}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _number(where: str, key: str, value: Any, integer: bool = False) -> float:
    if isinstance(value, str):
        try:
            float(value)
            hint = f"; write it with a decimal point (e.g. {value.replace('e', '.0e', 1) if 'e' in value and '.' not in value else value}) or unquoted"
        except ValueError:
            hint = ""
        raise ConfigError(f"{where}: {key}={value!r} is a string, not a number{hint} (PyYAML reads 1e-5 as text)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value!r} is invalid: expected a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{where}: {key}={value!r} is invalid: expected an integer")
    return value


def _parse_distribution(name: str, spec: Any, where: str) -> Distribution:
    where = f"{where}: params.{name}"
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'kind' (one of {', '.join(KINDS)})")
    kind = spec["kind"]
    if kind not in KINDS:
        raise unknown_name("distribution kind", kind, KINDS, where)
    if kind == "choice":
        check_keys(spec, ("kind", "values"), where, required=("values",))
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise ConfigError(f"{where}: values lists an entry twice: {values}")
        return Choice(tuple(values))
    allowed = ("kind", "low", "high", "step") if kind == "int" else ("kind", "low", "high")
    check_keys(spec, allowed, where, required=("low", "high"))
    integer = kind == "int"
    low = _number(where, "low", spec["low"], integer)
    high = _number(where, "high", spec["high"], integer)
    if low >= high:
        raise ConfigError(f"{where}: low={low} must be below high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0 (got {low}); use uniform for ranges that include 0")
    if kind == "uniform":
        return Uniform(float(low), float(high))
    if kind == "loguniform":
        return LogUniform(float(low), float(high))
    step = spec.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"{where}: step={step!r} is invalid: expected an integer >= 1")
    return IntRange(int(low), int(high), step)


def _check_domain(name: str, dist: Distribution, where: str) -> None:
    """Per-parameter sanity: the values a distribution can produce must be valid for that parameter."""
    where = f"{where}: params.{name}"
    if name == "beta":
        values = dist.values if isinstance(dist, Choice) else (dist.low, dist.high)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in values):
            raise ConfigError(f"{where}: the class prior beta must lie strictly inside (0, 1); got {values}")
    elif name == "correction":
        if not isinstance(dist, Choice) or not all(v in CORRECTIONS for v in dist.values):
            raise ConfigError(f"{where}: correction must be a choice of {', '.join(CORRECTIONS)}")
    elif name == "lr":
        values = dist.values if isinstance(dist, Choice) else (dist.low, dist.high)
        if not all(isinstance(v, (int, float)) and 0 < v < 1 for v in values):
            raise ConfigError(f"{where}: learning rates must lie in (0, 1); got {values}")
    elif name in INTEGER_PARAMS:
        ok = isinstance(dist, IntRange) or (isinstance(dist, Choice) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in dist.values))
        if not ok:
            raise ConfigError(f"{where}: {name} is an integer: use kind int or a choice of integers")


def parse_search_space(data: Any, source: str = "<memory>") -> SearchSpace:
    where = f"search space {source}"
    check_keys(data, TOP_KEYS, where, required=("params",))
    method = data.get("method", "pu")
    if method not in SEARCHED_METHODS:
        raise ConfigError(f"{where}: method={method!r} is invalid: searched trials train one of "
                          f"{', '.join(SEARCHED_METHODS)} (the baselines come with the sweep: --baselines)")
    params_data = data["params"]
    if not isinstance(params_data, dict) or not params_data:
        raise ConfigError(f"{where}: params must be a non-empty mapping of parameter names to distributions")
    params: dict[str, Distribution] = {}
    for name, spec in params_data.items():
        if name not in TUNABLE:
            raise unknown_name("tunable parameter", name, TUNABLE, where)
        params[name] = _parse_distribution(name, spec, where)
        _check_domain(name, params[name], where)
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: fixed must be a mapping of TrainConfig keys to values")
    for name in fixed:
        if name in params:
            raise ConfigError(f"{where}: {name} is both searched (params) and fixed; keep one")
    space = SearchSpace(method=method, params=params, fixed=dict(fixed), description=str(data.get("description", "")),
                        source=source)
    _check_fixed(space, where)
    return space


def _check_fixed(space: SearchSpace, where: str) -> None:
    """Build the TrainConfig a searched trial would get at the space's center: bad fixed values fail now."""
    import dataclasses

    from pudm_bench.config import TrainConfig

    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in FIXED_EXCLUDED]
    check_keys(dict(space.fixed), allowed, f"{where}: fixed")
    values = {"method": space.method, "beta": 0.1, **space.fixed, **space.center()}
    try:
        TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"search space file {path} does not exist; see search_spaces/ for examples") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"search space {path}: malformed YAML{at}; fix the syntax") from None
    return parse_search_space(data, str(path))
