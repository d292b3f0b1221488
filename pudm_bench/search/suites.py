"""Benchmark suites: which methods (with their fixed hyperparameters) run on which splits, how many seeds, on
which budget. One YAML file per suite in ``benchmarks/suites/`` (or a user folder given with ``--suites-dir``),
validated at load time with errors that name the file, the key and the allowed values.

Suite file::

    name: digits
    description: "..."
    splits: [digits_even, digits_odd]
    seeds: 3                        # default for --seeds
    budget: cpu                     # smoke | cpu | paper (default for --budget)
    methods:                        # label -> method and its hyperparameters (TrainConfig fields)
      unsupervised: {method: unsupervised}
      pu-abs: {method: pu, correction: abs, beta: 0.15}
      pnu: {method: pnu, correction: abs, beta: 0.15}   # only on splits with labeled normal data
      pu-abs-warm: {method: pu, beta: 0.15, init: unsupervised, steps: 600}   # fine-tunes that label's run
    unlabeled_sensitive_shares: [0.05, 0.1, 0.2]   # optional split option: each split at each sensitive share of U
    train: {lr: 1.0e-3}             # optional: TrainConfig overrides for every run
    pretrained: required            # optional: fine-tune; "required" (needs --pretrained) or dataset -> model
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pudm_bench.data.splits import SplitSpec
from pudm_bench.errors import ConfigError, check_keys, read_yaml, unknown_name
from pudm_bench.search.budgets import BUDGETS
from pudm_bench.training.config import TrainConfig

BUILTIN_SUITES_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"
SUITE_KEYS = ("name", "description", "splits", "seeds", "budget", "methods", "train", "pretrained",
              "unlabeled_sensitive_shares")
METHOD_KEYS = ("method", "correction", "beta", "eta", "paper_weighting", "init")
# TrainConfig fields a suite's ``train:`` may not set: the runner owns them.
RUNNER_OWNED = ("split", "method", "beta", "correction", "eta", "seed", "pretrained", "init_from", "data_dir", "download",
                "splits_dirs", "sample", "device", "unlabeled_sensitive_share")
@dataclass(frozen=True)
class MethodSpec:
    """One row of the table: a training method and its fixed hyperparameters."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)  # correction, beta, eta, paper_weighting
    # Warm start: the label of another method of the suite whose run (same split and seed) this one fine-tunes from.
    init: str | None = None

    @property
    def needs_labeled_normal(self) -> bool:
        return self.method == "pnu"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    splits: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    seeds: int = 3
    budget: str = "cpu"
    train: dict[str, Any] = field(default_factory=dict)
    pretrained: str | dict[str, str] | None = None  # None, "required", or dataset/split name -> model
    source: str = "<memory>"
    unlabeled_sensitive_shares: tuple[float, ...] = ()  # empty: the splits as registered


def parse_suite(data: Any, source: str = "<memory>") -> Suite:
    """Validate one suite mapping (as read from YAML); errors name the file, the key and the allowed values."""
    where = f"suite file {source}"
    check_keys(data, SUITE_KEYS, where, required=("name", "splits", "methods"))
    name = data["name"]
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise ConfigError(f"{where}: name={name!r} is invalid: use letters, digits, '_' and '-'")
    splits = data["splits"]
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise ConfigError(f"{where}: splits must be a non-empty list of split names, got {splits!r}")
    if len(set(splits)) != len(splits):
        raise ConfigError(f"{where}: splits lists a split twice: {splits}")
    methods_raw = data["methods"]
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise ConfigError(f"{where}: methods must be a mapping label -> {{method: ..., beta: ...}}, got {methods_raw!r}")
    methods = []
    for label, spec in methods_raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: methods.{label} must be a mapping such as {{method: pu, beta: 0.15}}")
        # A method may also set training fields (e.g. its own lr): they override the suite's train: for its runs.
        train_fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNNER_OWNED]
        check_keys(spec, METHOD_KEYS + tuple(train_fields), f"{where}: methods.{label}", required=("method",))
        params = {k: v for k, v in spec.items() if k not in ("method", "init")}
        try:  # the method's own checks (known method, prior in (0, 1), eta only for pnu) at load time
            TrainConfig(method=spec["method"], **params)
        except ConfigError as exc:
            raise ConfigError(f"{where}: methods.{label}: {exc}") from None
        methods.append(MethodSpec(str(label), spec["method"], params, spec.get("init")))
    sources = {m.label: m for m in methods}
    for m in methods:
        if m.init is None:
            continue
        if m.init not in sources or m.init == m.label:
            others = [label for label in sources if label != m.label]
            raise ConfigError(f"{where}: methods.{m.label}: init={m.init!r} is not another method of this suite; "
                              f"expected one of {', '.join(others)}")
        if sources[m.init].init is not None:
            raise ConfigError(f"{where}: methods.{m.label}: init={m.init!r} is itself warm-started (init="
                              f"{sources[m.init].init!r}); warm-start from a method trained from scratch")
    seeds = data.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"{where}: seeds={seeds!r} is invalid: expected an integer >= 1")
    budget = data.get("budget", "cpu")
    if budget not in BUDGETS:
        raise ConfigError(f"{where}: {unknown_name('budget', budget, BUDGETS)}")
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: train must be a mapping of TrainConfig fields, got {train!r}")
    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNNER_OWNED]
    check_keys(train, allowed, f"{where}: train")
    pretrained = data.get("pretrained")
    if not (pretrained is None or pretrained == "required" or
            (isinstance(pretrained, dict) and all(isinstance(v, str) for v in pretrained.values()))):
        raise ConfigError(f"{where}: pretrained={pretrained!r} is invalid: expected 'required' or a mapping "
                          "dataset (or split) -> pretrained model folder or hub id")
    shares = data.get("unlabeled_sensitive_shares") or []
    if not isinstance(shares, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in shares) \
            or len(set(shares)) != len(shares):
        raise ConfigError(f"{where}: unlabeled_sensitive_shares={shares!r} is invalid: expected a list of distinct "
                          "shares in (0, 1), e.g. [0.05, 0.1, 0.2]")
    return Suite(name=name, description=str(data.get("description", "")), splits=tuple(splits),
                 methods=tuple(methods), seeds=seeds, budget=budget, train=dict(train), pretrained=pretrained,
                 source=source, unlabeled_sensitive_shares=tuple(float(x) for x in shares))


def suite_files(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Suite name (file stem) -> file, over the shipped suites and ``extra_dirs``; a name defined twice is an error."""
    found: dict[str, Path] = {}
    for directory in [BUILTIN_SUITES_DIR, *map(Path, extra_dirs)]:
        if not directory.is_dir():
            if directory != BUILTIN_SUITES_DIR:
                raise ConfigError(f"suites directory {directory} does not exist; check --suites-dir")
            continue
        for path in sorted(directory.glob("*.yaml")):
            if path.stem in found:
                raise ConfigError(f"suite {path.stem!r} is defined twice: {found[path.stem]} and {path}; rename one")
            found[path.stem] = path
    return found


def load_suite(name_or_path: str, extra_dirs: Iterable[str | Path] = ()) -> Suite:
    """A suite by name (``benchmarks/suites/<name>.yaml`` or a ``--suites-dir`` folder) or by YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        source = path
    else:
        files = suite_files(extra_dirs)
        if name_or_path not in files:
            raise unknown_name("suite", name_or_path, files)
        source = files[name_or_path]
    suite = parse_suite(read_yaml(source, "suite file"), str(source))
    if suite.name != source.stem:
        raise ConfigError(f"suite file {source}: name={suite.name!r} differs from the file name {source.stem!r}; "
                          "make them equal so --suite finds it")
    return suite


@dataclass(frozen=True)
class Plan:
    suite: Suite
    splits: dict[str, SplitSpec]
    cells: dict[str, dict[str, Any]]
    skipped: list[tuple[str, str, str]]  # (split, method label, reason)
    budget: str = "cpu"
