"""The distributions a search space draws from (``uniform``, ``loguniform``, ``int``, ``choice``, and bounds relative to the
estimated class prior), typed and frozen, checked when built, each convertible to Optuna's own distribution."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import yaml
from optuna import distributions as od

from pudm_bench.errors import ConfigError
from pudm_bench.prior.estimate import PRIOR_BOUNDS  # resolved auto bounds stay inside it


def yaml_float_spelling(text: str) -> str | None:
    """A spelling of ``text`` that PyYAML reads as a float (``1e-5`` -> ``1.0e-5``, ``1.0e5`` -> ``1.0e+5``).

    PyYAML follows YAML 1.1: a float needs a decimal point and, with an exponent, a signed exponent; anything else
    that Python's float() would accept stays a string.
    """
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    mantissa, has_exponent, exponent = text.strip().lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if has_exponent and exponent[:1] not in ("+", "-"):
        exponent = "+" + exponent
    spelling = mantissa + (f"e{exponent}" if has_exponent else "")
    return spelling if isinstance(yaml.safe_load(spelling), float) else None


def number_value(key: str, value: Any, whole: bool = False) -> int | float:
    """``value`` as an int (``whole``) or a float, or a ConfigError naming ``key`` and how to write it."""
    expected = "a whole number, e.g. 64" if whole else "a number, e.g. 1.0e-4"
    if isinstance(value, str):
        spelling = yaml_float_spelling(value)
        if spelling is not None:
            if whole and float(spelling).is_integer():
                spelling = str(int(float(spelling)))
            raise ConfigError(f"{key}={value!r} is text, not a number (PyYAML reads a float only with a decimal point "
                              f"and a signed exponent); write {spelling}")
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is invalid: expected a finite number")
    if not whole:
        return float(value)
    if isinstance(value, float):
        fix = f"write {int(value)}" if value.is_integer() else "use kind uniform for fractional values"
        raise ConfigError(f"{key}={value!r} is invalid: expected a whole number; {fix}")
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def check_bounds(low: float, high: float) -> None:
    if low >= high:
        raise ConfigError(f"low={low!r} >= high={high!r}: low must be below high (swap them, or move a single "
                          f"value to fixed)")


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    kind: ClassVar[str] = "uniform"
    low: float
    high: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", number_value("low", self.low))
        object.__setattr__(self, "high", number_value("high", self.high))
        check_bounds(self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def center(self) -> float:
        return (self.low + self.high) / 2

    def to_optuna(self) -> od.FloatDistribution:
        return od.FloatDistribution(self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform:
    """A float whose logarithm is drawn uniformly from [log low, log high]; for scales like learning rates."""

    kind: ClassVar[str] = "loguniform"
    low: float
    high: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", number_value("low", self.low))
        object.__setattr__(self, "high", number_value("high", self.high))
        check_bounds(self.low, self.high)
        if self.low <= 0:
            raise ConfigError(f"low={self.low!r} is invalid: loguniform takes the log of its bounds, so low must be "
                              f"> 0 (e.g. 1.0e-5); use kind uniform to include 0")

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def center(self) -> float:
        return math.sqrt(self.low * self.high)

    def to_optuna(self) -> od.FloatDistribution:
        return od.FloatDistribution(self.low, self.high, log=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class IntRange:
    """An integer from low to high inclusive, in steps of ``step``.

    With step > 1, low and high must be multiples of step: the values are low + k * step (Optuna's
    IntDistribution), and a grid of multiples of step is what a user writing ``step: 32`` means.
    """

    kind: ClassVar[str] = "int"
    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", number_value("low", self.low, whole=True))
        object.__setattr__(self, "high", number_value("high", self.high, whole=True))
        object.__setattr__(self, "step", number_value("step", self.step, whole=True))
        if self.step < 1:
            raise ConfigError(f"step={self.step!r} is invalid: expected a whole number >= 1")
        check_bounds(self.low, self.high)
        if self.step > 1 and (self.low % self.step or self.high % self.step):
            raise ConfigError(f"low={self.low}, high={self.high} with step={self.step}: both bounds must be multiples "
                              f"of step (e.g. low: {self.step * -(-self.low // self.step)}, "
                              f"high: {self.step * (self.high // self.step)})")

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def center(self) -> int:
        """The grid value at or just below the midpoint."""
        return self.low + self.step * ((self.high - self.low) // self.step // 2)

    def to_optuna(self) -> od.IntDistribution:
        return od.IntDistribution(self.low, self.high, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "step": self.step}


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (strings, numbers, booleans or null); the first one is the center."""

    kind: ClassVar[str] = "choice"
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.values, (list, tuple)) or not self.values:
            raise ConfigError(f"values={self.values!r} is invalid: expected a non-empty list, e.g. values: [abs, max]")
        for value in self.values:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"values lists {value!r}: each value must be a string, number, boolean or null")
        for i, value in enumerate(self.values):
            if any(same_value(value, other) for other in self.values[:i]):
                raise ConfigError(f"values={list(self.values)!r} lists {value!r} twice; list each value once")
        object.__setattr__(self, "values", tuple(self.values))

    def contains(self, value: Any) -> bool:
        return any(same_value(value, v) for v in self.values)

    def center(self) -> Any:
        return self.values[0]

    def to_optuna(self) -> od.CategoricalDistribution:
        return od.CategoricalDistribution(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}


# ``low: auto*0.5``: a bound relative to the estimated class prior (beta only).
AUTO_BOUND = re.compile(r"^auto\s*\*\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)$")


# Load-time checks use this stand-in for the estimate (the combination must be valid before the data is read).
NOMINAL_PRIOR = 0.1


@dataclass(frozen=True)
class RelativeToPrior:
    """beta drawn from [low_factor, high_factor] x the estimated prior, uniform or log-uniform; ``resolve`` turns it
    into a ``Uniform``/``LogUniform`` once the sweep has the estimate."""

    kind: str
    low_factor: float
    high_factor: float

    def __post_init__(self) -> None:
        if not 0 < self.low_factor < self.high_factor:
            raise ConfigError(f"low=auto*{self.low_factor:g}, high=auto*{self.high_factor:g} is invalid: expected "
                              "0 < low factor < high factor, e.g. low: auto*0.5, high: auto*2.0")

    def resolve(self, prior: float) -> "Uniform | LogUniform":
        low, high = (min(max(prior * f, PRIOR_BOUNDS[0]), PRIOR_BOUNDS[1]) for f in (self.low_factor, self.high_factor))
        if low >= high:  # both clamped to the same edge: an estimate at 0 or 1
            low, high = (PRIOR_BOUNDS[0], 2 * PRIOR_BOUNDS[0]) if low <= PRIOR_BOUNDS[0] else (0.99, PRIOR_BOUNDS[1])
        return DISTRIBUTIONS[self.kind](round(low, 6), round(high, 6))

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1

    def center(self) -> float:
        return self.resolve(NOMINAL_PRIOR).center()

    def to_optuna(self) -> od.BaseDistribution:
        raise ConfigError(f"beta {self.to_dict()} is relative to the estimated prior: resolve it first "
                          "(SearchSpace.resolve_prior)")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": f"auto*{self.low_factor:g}", "high": f"auto*{self.high_factor:g}"}


def auto_factor(value: Any) -> float | None:
    match = AUTO_BOUND.match(value.strip()) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


Distribution = Union[Uniform, LogUniform, IntRange, Choice, RelativeToPrior]


DISTRIBUTIONS: dict[str, type] = {cls.kind: cls for cls in (Uniform, LogUniform, IntRange, Choice)}


EXAMPLES = {
    "uniform": "{kind: uniform, low: 0.05, high: 0.3}",
    "loguniform": "{kind: loguniform, low: 2.0e-4, high: 3.0e-3}",
    "int": "{kind: int, low: 32, high: 128, step: 32}",
    "choice": "{kind: choice, values: [abs, max]}",
}
