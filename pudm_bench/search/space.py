"""Search spaces: one YAML file in ``search_spaces/`` -> typed, frozen distributions, checked at load time.

A file names the method the searched trials train, the parameters to search and, optionally, TrainConfig values
every searched trial uses::

    description: "PU-DM: class prior, correction and learning rate"
    method: pu
    params:
      beta: {kind: uniform, low: 0.05, high: 0.3}
      correction: {kind: choice, values: [abs, max]}
      lr: {kind: loguniform, low: 2.0e-4, high: 3.0e-3}
    fixed:
      warmup_steps: 100

The class prior's bounds may be multiples of its estimate (``search_spaces/beta_auto.yaml``)::

      beta: {kind: loguniform, low: auto*0.5, high: auto*2.0}

the sweep estimates beta from U and S (``pudm_bench.prior``) before any trial and resolves the bounds with it.

Only the kinds in ``KINDS`` are accepted (no code or class paths in YAML) and only the parameters in ``TUNABLE``.
Every mistake raises a one-line ``ConfigError`` naming the file, the key, the value and the fix, before Ray starts.
This module does not import Ray: each distribution turns into Optuna's own (``Distribution.to_optuna``), which
``orchestration.searchers`` asks the study for; value ranges are TrainConfig's to check (``_check_value``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pudm_bench.errors import ConfigError, check_keys, read_yaml, unknown_name
from pudm_bench.search.distributions import (
    DISTRIBUTIONS,
    EXAMPLES,
    NOMINAL_PRIOR,
    Choice,
    Distribution,
    IntRange,
    RelativeToPrior,
    auto_factor,
    number_value,
)
from pudm_bench.training.config import TrainConfig
from pudm_bench.training.losses import CORRECTIONS

DEFAULT_SEARCH_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"
KINDS = ("uniform", "loguniform", "int", "choice")
# Baselines (unsupervised, supervised) have nothing to search; the sweep adds them next to the searched trials.
SEARCHED_METHODS = ("pu", "pnu")
# What every sweep trains beside its searched trials, with the same budget and nothing searched.
BASELINE_METHODS = ("unsupervised", "supervised")
TOP_LEVEL_KEYS = ("description", "method", "params", "fixed")
# TrainConfig fields a search space must not set, and who sets them instead.
_SET_ELSEWHERE = {
    "method": "the top-level method key",
    "split": "the sweep's --split / --dataset",
    "seed": "the sweep's --seed",
    "split_seed": "the sweep's --seed",
    "data_dir": "the sweep's --data-dir",
    "download": "the sweep's --download",
    "splits_dirs": "the sweep's --splits-dir",
}


# ----------------------------------------------------------------------------------------------------------------
# Values: numbers as PyYAML reads them


# ----------------------------------------------------------------------------------------------------------------
# Distributions (validated when built; the parser prefixes the file and parameter to their messages)


# ----------------------------------------------------------------------------------------------------------------
# Tunable parameters and the values each accepts


@dataclass(frozen=True)
class _Domain:
    """What kind of value one TrainConfig field takes: ``real`` numbers, ``whole`` numbers or ``names``; its range is
    TrainConfig's to check (``_check_value``), so a search space accepts exactly what a trial's config will."""

    value_type: str
    names: tuple[str, ...] = ()
    nullable: bool = False
    # The method a config needs for TrainConfig to accept the field at all (beta: pu; eta: pnu only).
    method: str = "pu"


DOMAINS: dict[str, _Domain] = {
    "beta": _Domain("real"),
    "correction": _Domain("names", names=CORRECTIONS),
    "lr": _Domain("real"),
    "weight_decay": _Domain("real"),
    "warmup_steps": _Domain("whole"),
    "ema_decay": _Domain("real", nullable=True),
    "batch_size": _Domain("whole"),
    "steps": _Domain("whole"),
    "eta": _Domain("real", method="pnu"),
    "grad_clip": _Domain("real"),
}
TUNABLE = tuple(DOMAINS)


def _check_value(name: str, key: str, value: Any) -> Any:
    """``value`` checked (and normalised) as a value of TrainConfig field ``name``; ``key`` names it in errors. The
    kind of value is checked here (for the YAML-specific hints); the range by TrainConfig itself."""
    domain = DOMAINS[name]
    if value is None:
        if domain.nullable:
            return None
        raise ConfigError(f"{key}=null is invalid: {name} needs a value")
    if domain.value_type == "names":
        if value not in domain.names:
            raise unknown_name(name, value, domain.names, key)
        return value
    number = number_value(key, value, whole=domain.value_type == "whole")
    try:
        TrainConfig(method=domain.method, **({"beta": NOMINAL_PRIOR} if name != "beta" else {}), **{name: number})
    except ConfigError as exc:
        # TrainConfig's own words after "<field>=<value> is invalid", under this file's key. An error about another
        # field (a default this single-value check does not choose) is left to the check of the combination.
        head, found, reason = str(exc).partition(" is invalid")
        if found and head.startswith(f"{name}="):
            raise ConfigError(f"{key}={value!r} is invalid{reason}") from None
    return number


def _check_distribution(name: str, dist: Distribution, where: str) -> Distribution:
    """Reject a kind that cannot hold ``name``'s values and any bound or choice outside its domain."""
    domain = DOMAINS[name]
    if domain.value_type == "names" and not isinstance(dist, Choice):
        raise ConfigError(f"{where}: kind={dist.kind!r} is invalid for {name}, which takes names: use "
                          f"{{kind: choice, values: [{', '.join(domain.names)}]}}")
    if domain.value_type == "whole" and not isinstance(dist, (IntRange, Choice)):
        raise ConfigError(f"{where}: kind={dist.kind!r} is invalid for {name}, which takes whole numbers: use "
                          f"{EXAMPLES['int']} or a choice of integers")
    if isinstance(dist, Choice):
        return Choice(tuple(_check_value(name, f"{where}: values[{i}]", v) for i, v in enumerate(dist.values)))
    for bound in ("low", "high"):
        _check_value(name, f"{where}: {bound}", getattr(dist, bound))
    return dist


def _parse_distribution(name: str, spec: Any, where: str) -> Distribution:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r} is not a distribution: write e.g. {EXAMPLES['uniform']}, or move "
                          f"{name} to fixed to use one value in every trial")
    if "kind" not in spec:
        raise ConfigError(f"{where}: missing kind; use one of {', '.join(KINDS)}, e.g. {EXAMPLES['uniform']}")
    kind = spec["kind"]
    if kind not in DISTRIBUTIONS:
        raise unknown_name("distribution kind", kind, KINDS, where)
    cls = DISTRIBUTIONS[kind]
    if name == "beta" and kind in ("uniform", "loguniform") and any(
            isinstance(spec.get(b), str) and spec.get(b).strip().startswith("auto") for b in ("low", "high")):
        check_keys(spec, ["kind", "low", "high"], where, required=("low", "high"))
        factors = [auto_factor(spec[b]) for b in ("low", "high")]
        if None in factors:
            raise ConfigError(f"{where}: low={spec['low']!r}, high={spec['high']!r} is invalid: relative to the "
                              "estimated prior, write both bounds as auto*FACTOR, e.g. low: auto*0.5, high: auto*2.0")
        try:
            return RelativeToPrior(kind, *factors)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    fields = [f.name for f in dataclasses.fields(cls)]
    check_keys(spec, ["kind", *fields], where)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in spec]
    if missing:
        raise ConfigError(f"{where}: kind {kind} needs {' and '.join(missing)}, e.g. {EXAMPLES[kind]}")
    try:
        dist = cls(**{k: v for k, v in spec.items() if k != "kind"})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return _check_distribution(name, dist, where)


def _not_tunable(name: str, where: str) -> ConfigError:
    if name in _SET_ELSEWHERE:
        return ConfigError(f"{where}: {name} is not tunable in a search space: it is set by {_SET_ELSEWHERE[name]}")
    return unknown_name("parameter", name, TUNABLE, where)


# ----------------------------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class SearchSpace:
    """The parameters searched for ``method`` (pu or pnu) and the TrainConfig values fixed for every trial.

    ``params`` keeps the file's order. Build one with ``load_search_space`` / ``parse_search_space``, which validate.
    """

    method: str
    params: dict[str, Distribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<memory>"

    @property
    def needs_prior(self) -> bool:
        """Whether a bound is relative to the estimated prior (``auto*F``): the sweep must estimate it first."""
        return any(isinstance(d, RelativeToPrior) for d in self.params.values())

    def resolve_prior(self, prior: float) -> "SearchSpace":
        """This space with every ``auto*F`` bound computed from ``prior``."""
        params = {name: d.resolve(prior) if isinstance(d, RelativeToPrior) else d for name, d in self.params.items()}
        return dataclasses.replace(self, params=params)

    def center(self) -> dict[str, Any]:
        """A representative trial: each parameter's midpoint (geometric for loguniform) or first choice."""
        return {name: dist.center() for name, dist in self.params.items()}

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` gives every searched parameter a value its distribution can draw."""
        return all(name in config and dist.contains(config[name]) for name, dist in self.params.items())

    def to_dict(self) -> dict[str, Any]:
        """The file's content (what ``parse_search_space`` reads back into an equal SearchSpace)."""
        return {"description": self.description, "method": self.method,
                "params": {name: dist.to_dict() for name, dist in self.params.items()}, "fixed": dict(self.fixed)}

    def fingerprint(self) -> str:
        """sha256 prefix of what decides the trials (method, params, fixed), not of the description or file name:
        ``--resume`` compares it to refuse continuing a sweep whose search space has changed."""
        content = {k: v for k, v in self.to_dict().items() if k != "description"}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_search_space(data: Any, source: str = "<memory>") -> SearchSpace:
    """Validate the content of a search-space file (as ``yaml.safe_load`` returns it) into a SearchSpace."""
    where = f"search space {source}"
    if data is None:
        raise ConfigError(f"{where} is empty: it needs method and params, e.g. as in {DEFAULT_SEARCH_SPACE.name}")
    check_keys(data, TOP_LEVEL_KEYS, where)

    method = data.get("method")
    if method is None:
        raise ConfigError(f"{where}: missing method; add `method: pu` (or pnu)")
    if method not in SEARCHED_METHODS:
        if method in ("unsupervised", "supervised"):
            raise ConfigError(f"{where}: method={method!r} is invalid: a baseline has nothing to search and the sweep "
                              f"trains the baselines itself (--baselines); use method: pu or pnu")
        raise unknown_name("method", method, SEARCHED_METHODS, where)
    # With the method pu or pnu, beta and correction always apply; eta only to pnu (checked below).

    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description={description!r} is invalid: expected text (quote it)")

    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{where}: params={raw_params!r} is invalid: expected a non-empty mapping of parameter to "
                          f"distribution, e.g. params: {{lr: {EXAMPLES['loguniform']}}}")
    params: dict[str, Distribution] = {}
    for name, spec in raw_params.items():
        if name not in DOMAINS:
            raise _not_tunable(name, f"{where}: params")
        params[name] = _parse_distribution(name, spec, f"{where}: params.{name}")

    raw_fixed = data.get("fixed") or {}
    if not isinstance(raw_fixed, dict):
        raise ConfigError(f"{where}: fixed={raw_fixed!r} is invalid: expected a mapping such as "
                          f"fixed: {{warmup_steps: 100}}")
    fixed: dict[str, Any] = {}
    for name, value in raw_fixed.items():
        if name not in DOMAINS:
            raise _not_tunable(name, f"{where}: fixed")
        if name in params:
            raise ConfigError(f"{where}: {name} is both in params and in fixed; keep it in one of them")
        fixed[name] = _check_value(name, f"{where}: fixed.{name}", value)

    chosen = {**params, **fixed}
    if "beta" not in chosen:
        raise ConfigError(f"{where}: method {method} needs the class prior beta: add it to params (e.g. beta: "
                          f"{EXAMPLES['uniform']}) or to fixed")
    if "eta" in chosen and method != "pnu":
        raise ConfigError(f"{where}: eta weights the labeled-normal term of pnu and method {method} does not use it; "
                          f"remove eta or set method: pnu")

    space = SearchSpace(method=method, params=params, fixed=fixed, description=description, source=str(source))
    try:  # the combination, as every trial will build it (TrainConfig checks what single values cannot show)
        TrainConfig(method=method, **space.center(), **fixed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: fixed values with the center of params are invalid: {exc}") from None
    return space


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"search space {path} is a folder; pass one YAML file in it to --search-space")
    shipped = f"; pass a YAML file to --search-space (shipped: {DEFAULT_SEARCH_SPACE.parent})"
    data = read_yaml(path, "search space", shipped)
    return parse_search_space(data, str(path))
