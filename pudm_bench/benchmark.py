"""``python -m pudm_bench.benchmark --suite NAME --seeds K``: the paper's comparison tables.

A suite (one YAML file in ``benchmarks/suites/``, or a user folder given with ``--suites-dir``) names splits and
methods; the runner trains every method on every split K times (training seeds 0..K-1; the split itself is fixed by
``split_seed`` 0), scores each run like a sweep trial (non-sensitive rate and the split's quality metric), and
writes a table in the form of the paper's Table 2 (arXiv:2503.03789): mean +- sample standard deviation (ddof 1)
over seeds, one row per method, one column pair per split. Runs go through the sweep's Ray machinery
(``sweep.run_cells``: one Tune trial per run, Ray Train workers inside, several at once) and MLflow (one parent run
of kind "benchmark", one child run per training run, the table on the parent).

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

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pudm_bench.budgets import BUDGETS, budget_for, budget_train_values
from pudm_bench.config import TrainConfig
from pudm_bench.data.splits import SplitSpec, get_split
from pudm_bench.errors import ArgumentParser, ConfigError, PudmError, check_keys, read_yaml, unknown_name

BUILTIN_SUITES_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"
SUITE_KEYS = ("name", "description", "splits", "seeds", "budget", "methods", "train", "pretrained",
              "unlabeled_sensitive_shares")
METHOD_KEYS = ("method", "correction", "beta", "eta", "paper_weighting", "init")
# TrainConfig fields a suite's ``train:`` may not set: the runner owns them.
RUNNER_OWNED = ("split", "method", "beta", "correction", "eta", "seed", "pretrained", "init_from", "data_dir", "download",
                "splits_dirs", "sample", "device", "unlabeled_sensitive_share")
RATE = "non_sensitive_rate"
# Reported by runs that estimate beta (beta: auto) or filter U (method filter); "prior_true" is the split's truth.
PRIOR_COLUMNS = ("prior_true", "prior_estimate", "prior_std", "beta_used", "filter_sensitive_removed_share",
                 "filter_normal_removed_share")
# What the diversity table shows per split and method (diversity.py): normal-class coverage and precision/recall,
# and whether the samples look real at all (evaluate.realism_metrics).
DIVERSITY_COLUMNS = ("coverage_tv", "coverage_missing", "precision", "recall", "realistic_share",
                     "realistic_non_sensitive_rate")


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


# ----------------------------------------------------------------------------------------------------------------
# Planning: one cell (training run) per split x method x seed


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything a benchmark run needs, resolved from the CLI; saved as ``benchmark.json``."""

    suite: str
    suite_file: str
    seeds: int
    budget: str
    splits_dirs: tuple[str, ...]
    pretrained: tuple[tuple[str, str], ...]  # (dataset or split or "*", model) pairs
    max_concurrent: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float | None
    mlflow_uri: str
    experiment: str
    storage: str
    name: str
    data_dir: str | None
    download: bool
    max_failures: int
    referee_floor: float = 0.9
    referee_epochs: int | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.storage) / self.name


@dataclass(frozen=True)
class Plan:
    suite: Suite
    splits: dict[str, SplitSpec]
    cells: dict[str, dict[str, Any]]
    skipped: list[tuple[str, str, str]]  # (split, method label, reason)
    budget: str = "cpu"


def pretrained_for(settings: BenchmarkSettings, suite: Suite, split: SplitSpec) -> str | None:
    """The model a split's runs start from: --pretrained (by split, dataset or for all), else the suite's mapping."""
    given = dict(settings.pretrained)
    for key in (split.name, split.dataset, "*"):
        if key in given:
            return given[key]
    if isinstance(suite.pretrained, dict):
        for key in (split.name, split.dataset):
            if key in suite.pretrained:
                return suite.pretrained[key]
    if suite.pretrained is not None:
        raise ConfigError(f"suite {suite.name!r} fine-tunes a pretrained model but none is given for split "
                          f"{split.name!r}; pass --pretrained DIR_OR_HUB_ID (or {split.dataset}=DIR_OR_HUB_ID)")
    return None


def plan(settings: BenchmarkSettings, suite: Suite) -> Plan:
    """Every training run of the benchmark, each config validated (a bad combination fails here, before Ray)."""
    from pudm_bench.sweep import make_eval_config

    # With unlabeled_sensitive_shares each split is run at each share: a variant per share, "<split>-share<x>".
    variants = [get_split(name, settings.splits_dirs, share) for name in suite.splits
                for share in (suite.unlabeled_sensitive_shares or (None,))]
    splits = {spec.name: spec for spec in variants}
    cells: dict[str, dict[str, Any]] = {}
    skipped = []
    for seed in range(settings.seeds):  # seeds outermost: the first runs to finish cover every method and split
        for split in splits.values():
            budget = budget_for(settings.budget, split)
            pretrained = pretrained_for(settings, suite, split)
            for method in suite.methods:
                if method.needs_labeled_normal and split.counts.labeled_normal == 0:
                    if seed == 0:
                        skipped.append((split.name, method.label, "the split has no labeled normal data"))
                    continue
                values = dict(budget_train_values(budget), split=split.registry_name, seed=seed,
                              data_dir=settings.data_dir, download=settings.download,
                              splits_dirs=settings.splits_dirs, pretrained=pretrained,
                              unlabeled_sensitive_share=split.unlabeled_sensitive_share)
                values.update(suite.train)
                values.update(method=method.method, **method.params)
                if method.init is not None:
                    # A warm start's weights are its source's (which started from --pretrained, if any); the stand-in
                    # is validated here and CellSearcher sets the real path when the source has finished.
                    values.update(init_from=f"<{method.init}>", pretrained=None)
                if values.get("model", "unet") != "unet":
                    values["model_preset"] = None  # a latent model's architecture is its pipeline's
                    values.setdefault("pretrained", pretrained)
                try:
                    config = TrainConfig(**values).replace(init_from=None)
                except ConfigError as exc:
                    raise ConfigError(f"suite {suite.name!r}, split {split.name}, method {method.label}: {exc}") from None
                evaluation = make_eval_config(budget, split.quality_metric, seed, settings.referee_floor,
                                              settings.referee_epochs, settings.run_dir / "cache")
                cell_id = f"{split.name}/{method.label}/seed{seed}"
                init = {} if method.init is None else {"init": f"{split.name}/{method.init}/seed{seed}"}
                cells[cell_id] = {
                    **init,
                    "train_config": config.to_dict(), "eval_config": asdict(evaluation),
                    "params": {"split": split.name, "label": method.label, "method": method.method, "seed": seed,
                               "lr": config.lr, "steps": config.steps, "batch_size": config.batch_size,
                               **method.params, **({"pretrained": pretrained} if pretrained and not init else {}),
                               **({"init_from": init["init"]} if init else {})},
                    "tags": {"pudm.role": "benchmark", "pudm.split": split.name, "pudm.method": method.label,
                             "pudm.seed": seed},
                }
    # A warm start whose source is not run on that split (e.g. pnu without labeled normal data) is not run either.
    for cell_id, cell in list(cells.items()):
        if cell.get("init") and cell["init"] not in cells:
            del cells[cell_id]
            split_name, label = cell["params"]["split"], cell["params"]["label"]
            if cell["params"]["seed"] == 0:
                skipped.append((split_name, label, f"its warm start {cell['init'].split('/')[1]} is not run there"))
    return Plan(suite, splits, cells, skipped, settings.budget)


# ----------------------------------------------------------------------------------------------------------------
# Tables


def runs_frame(outcomes: list[dict[str, Any]], the_plan: Plan):
    """One row per training run: split, method label, seed, status, the two objectives and timings."""
    import pandas as pd

    from pudm_bench.pareto import METRIC_DIRECTIONS, parse_constraint
    from pudm_bench.sweep import default_constraints

    rows = []
    for outcome in outcomes:
        cell = the_plan.cells[outcome["cell"]]
        split = the_plan.splits[cell["params"]["split"]]
        result = outcome["result"]
        # The sweep's default constraints, applied to every run: a run that breaks one is flagged in the tables.
        constraints = [parse_constraint(text, METRIC_DIRECTIONS)
                       for text in default_constraints(split, budget_for(the_plan.budget, split))]
        rate, quality = result.get(RATE), result.get(split.quality_metric)
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rate, quality))
        ok = finite and outcome["status"] == "TERMINATED"
        rows.append({
            "split": split.name, "method": cell["params"]["label"], "seed": cell["params"]["seed"],
            "trial_id": outcome["trial_id"], "status": outcome["status"] if ok or outcome["error"] else "NO_RESULT",
            RATE: rate if ok else math.nan,
            "non_sensitive_rate_ci_low": result.get("non_sensitive_rate_ci_low"),
            "non_sensitive_rate_ci_high": result.get("non_sensitive_rate_ci_high"),
            "quality_metric": split.quality_metric, "quality": quality if ok else math.nan,
            "train_seconds": result.get("train_seconds"), "eval_seconds": result.get("eval_seconds"),
            "error": outcome["error"],
            **{key: result.get(key, math.nan) for key in PRIOR_COLUMNS},
            **{key: result.get(key, math.nan) if ok else math.nan for key in DIVERSITY_COLUMNS},
            "coverage_missing_classes": result.get("coverage_missing_classes") if ok else None,
            "coverage_tv_real_normal": result.get("coverage_tv_real_normal", math.nan) if ok else math.nan,
            "realistic_share_real": result.get("realistic_share_real", math.nan) if ok else math.nan,
            "fd_per_class": result.get("fd_per_class", math.nan) if ok else math.nan,
            "violations": ", ".join(str(c) for c in constraints if not c.holds(result.get(c.metric))) if ok else "",
        })
    order = {cell_id: i for i, cell_id in enumerate(the_plan.cells)}
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["_order"] = [order[f"{r.split}/{r.method}/seed{r.seed}"] for r in frame.itertuples()]
        frame = frame.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    return frame


def summary_table(runs, the_plan: Plan):
    """Long form: one row per (split, method) with n (finished runs), planned runs, mean and std of both objectives."""
    import pandas as pd

    rows = []
    for split in the_plan.splits.values():
        for method in the_plan.suite.methods:
            if any(s == split.name and m == method.label for s, m, _ in the_plan.skipped):
                continue
            mine = runs[(runs.split == split.name) & (runs.method == method.label)] if len(runs) else runs
            done = mine[mine[RATE].notna()] if len(mine) else mine
            rows.append({
                "split": split.name, "method": method.label, "n": len(done), "planned": len(mine),
                "rate_mean": done[RATE].mean() if len(done) else math.nan,
                "rate_std": done[RATE].std(ddof=1) if len(done) > 1 else math.nan,
                "quality_metric": split.quality_metric,
                "quality_mean": done["quality"].mean() if len(done) else math.nan,
                "quality_std": done["quality"].std(ddof=1) if len(done) > 1 else math.nan,
                # Mean over finished runs of what the prior estimator and the filter did (NaN for other methods).
                **{f"{key}_mean": done[key].mean() if len(done) and key in done else math.nan
                   for key in PRIOR_COLUMNS},
                **{f"{key}_{stat}": (getattr(done[key], stat)(**({"ddof": 1} if stat == "std" else {}))
                                     if len(done) > (stat == "std") and key in done else math.nan)
                   for key in DIVERSITY_COLUMNS for stat in ("mean", "std")},
                # Which normal classes were under half their share, in how many of the runs: "four (2/3), six (1/3)".
                "coverage_missing_classes": _missing_counts(done),
                "coverage_tv_real_normal": done["coverage_tv_real_normal"].mean()
                if len(done) and "coverage_tv_real_normal" in done else math.nan,
                "realistic_share_real": done["realistic_share_real"].mean()
                if len(done) and "realistic_share_real" in done else math.nan,
                # Runs that break a default constraint (a dropped normal class, samples mostly unrealistic).
                "flagged": int((done["violations"] != "").sum()) if len(done) and "violations" in done else 0,
            })
    return pd.DataFrame(rows)


def _missing_counts(done) -> str:
    if not len(done) or "coverage_missing_classes" not in done:
        return ""
    counts: dict[str, int] = {}
    for text in done["coverage_missing_classes"].dropna():
        for name in filter(None, (part.strip() for part in str(text).split(","))):
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({n}/{len(done)})" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _mean_std(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "failed"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def markdown_table(table, the_plan: Plan) -> str:
    """The paper's layout: one row per method, per split a column pair (non-sensitive rate up, quality down)."""
    splits = list(the_plan.splits.values())
    realistic = "realistic_non_sensitive_rate_mean" in table and table["realistic_non_sensitive_rate_mean"].notna().any()
    header = ["method"]
    for split in splits:
        header += [f"{split.name} non-sensitive ↑"] + ([f"{split.name} realistic non-sensitive ↑"] if realistic else [])
        header += [f"{split.name} {split.quality_metric} ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in the_plan.suite.methods:
        cells = [method.label]
        for split in splits:
            row = table[(table.split == split.name) & (table.method == method.label)]
            if not len(row):
                cells += ["—"] * (3 if realistic else 2)
                continue
            r = row.iloc[0]
            note = f" ({int(r.n)}/{int(r.planned)})" if r.n != r.planned else ""
            flag = f" ⚑{int(r.flagged)}/{int(r.n)}" if getattr(r, "flagged", 0) else ""
            cells.append(_mean_std(r.rate_mean, r.rate_std, 3) + note + flag)
            if realistic:
                cells.append(_mean_std(r.realistic_non_sensitive_rate_mean, r.realistic_non_sensitive_rate_std, 3))
            cells.append(_mean_std(r.quality_mean, r.quality_std, 3) + note)
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max((int(n) for n in table.planned), default=0) if len(table) else 0
    notes = [f"Mean ± sample standard deviation over {seeds} training seed(s); (k/n): only k of n runs finished."]
    if len(table) and table["flagged"].sum():
        notes.append("⚑k/n: k of the n runs break a default constraint of the sweep (a normal class under half its "
                     "share, or samples mostly off the real-image manifold: docs/metrics.md); a sweep keeps such "
                     "trials off its Pareto front.")
    if realistic:
        notes.append("Realistic non-sensitive: the share of samples that are both called normal and inside the k-NN "
                     "manifold of real test images (per-class referee features).")
    if the_plan.skipped:
        notes.append("—: not run (" + "; ".join(sorted({f"{m} on {s}: {why}" for s, m, why in the_plan.skipped})) + ").")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + diversity_table(table, the_plan)


def diversity_table(table, the_plan: Plan) -> str:
    """Per split: one row per method with the normal-class coverage (TV, classes under half their share) and
    precision/recall, so that a rate won by dropping normal classes shows, and the TV that real normal test images
    get (the floor). Empty when no run measured them."""
    if not len(table) or "precision_mean" not in table or table["precision_mean"].isna().all():
        return ""
    out = ["", "Normal-class coverage (TV ↓, classes under half their share: in how many runs) and precision ↑ / "
               "recall ↑ (Kynkäänniemi et al., 2019; per-class referee features):", ""]
    for split in the_plan.splits.values():
        rows = table[table.split == split.name]
        if not len(rows) or rows["precision_mean"].isna().all():
            continue
        out += [f"**{split.name}**", "", "| method | coverage TV ↓ | under half their share | precision ↑ | recall ↑ | "
                                         "realistic share ↑ |", "|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            tv = _mean_std(r.coverage_tv_mean, r.coverage_tv_std, 3) if math.isfinite(r.coverage_tv_mean) else "—"
            out.append(f"| {r.method} | {tv} | {r.coverage_missing_classes or 'none'} | "
                       f"{_mean_std(r.precision_mean, r.precision_std, 3)} | {_mean_std(r.recall_mean, r.recall_std, 3)} | "
                       f"{_mean_std(r.realistic_share_mean, r.realistic_share_std, 3)} |")
        floor = rows["coverage_tv_real_normal"].dropna()
        real = rows["realistic_share_real"].dropna() if "realistic_share_real" in rows else floor[:0]
        if len(floor) or len(real):
            out += ["", "Real held-out images, scored the same way: "
                    + (f"coverage TV {floor.iloc[0]:.3f} (the floor; the reference is the class mix of U's normal "
                       "images)" if len(floor) else "")
                    + ("; " if len(floor) and len(real) else "")
                    + (f"realistic share {real.iloc[0]:.3f} (U's images; the ceiling)" if len(real) else "") + "."]
        out.append("")
    return "\n".join(out)



def write_sample_grids(runs, run_dir: Path) -> list[Path]:
    """One figure per split, one panel per method: the samples of its lowest finished seed (the first 64 of the
    images that were scored), titled with that run's scores. Read from each run's final checkpoint
    (``<run_dir>/train/trial-<id>/final/samples.png``); written to ``<run_dir>/grids/<split>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    written = []
    done = runs[runs[RATE].notna()] if len(runs) else runs
    for split, rows in done.groupby("split", sort=False):
        chosen = rows.sort_values("seed").groupby("method", sort=False).head(1)
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.6), squeeze=False)
        for ax, row in zip(axes[0], chosen.itertuples()):
            grid = run_dir / "train" / f"trial-{row.trial_id}" / "final" / "samples.png"
            if grid.is_file():
                ax.imshow(Image.open(grid), cmap="gray")
            ax.set_title(f"{row.method} (seed {row.seed})\nrate {getattr(row, RATE):.3f}, "
                         f"{row.quality_metric} {row.quality:.3g}", fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{split}: samples per method", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the suptitle above the panel titles
        path = run_dir / "grids" / f"{split}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def table_metrics(table) -> dict[str, float]:
    """Summary metrics for MLflow's compare view: ``<split>/<method>/<objective>_mean|_std``."""
    out = {}
    for r in table.itertuples():
        for name, value in (("non_sensitive_rate_mean", r.rate_mean), ("non_sensitive_rate_std", r.rate_std),
                            (f"{r.quality_metric}_mean", r.quality_mean), (f"{r.quality_metric}_std", r.quality_std),
                            *((f"{k}_{stat}", getattr(r, f"{k}_{stat}", math.nan))
                              for k in DIVERSITY_COLUMNS for stat in ("mean", "std"))):
            out[f"{r.split}/{r.method}/{name}"] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# The driver


def run_benchmark(settings: BenchmarkSettings, resume: bool = False, ray_address: str | None = None,
                  num_cpus: int | None = None, verbose: int = 1) -> dict[str, Any]:
    from pudm_bench import sweep, tracking
    from pudm_bench.evaluate import EvalConfig

    suite = load_suite(settings.suite_file)
    the_plan = plan(settings, suite)
    run_dir = settings.run_dir
    state_file = run_dir / "benchmark.json"
    if state_file.is_file() and not resume:
        raise ConfigError(f"a benchmark named {settings.name!r} already exists in {settings.storage}; pass --resume "
                          "to continue it, or --name NEW for a new one")
    if resume and not state_file.is_file():
        raise ConfigError(f"--resume: no benchmark named {settings.name!r} in {settings.storage}")

    # Everything that can fail on bad input, before Ray starts: data present with the right counts, referees
    # strong enough, FID weights where a split scores with FID, the tracking store reachable.
    tracking.check_tracking_reachable(settings.mlflow_uri)
    fingerprints = {}
    for split in the_plan.splits.values():
        evaluation = EvalConfig(**next(c["eval_config"] for c in the_plan.cells.values()
                                       if c["params"]["split"] == split.name))
        fingerprints[split.name] = sweep.prepare_scoring(split, evaluation, settings.data_dir, settings.download)

    has_gpus = sweep.start_ray(ray_address, num_cpus, verbose)
    gpus = settings.gpus_per_worker if settings.gpus_per_worker is not None else (1.0 if has_gpus else 0.0)
    tracker = tracking.SweepTracker(settings.mlflow_uri, settings.experiment)
    previous = json.loads(state_file.read_text()) if state_file.is_file() else {}
    parent_id = tracker.start_sweep(
        settings.name, kind="benchmark",
        tags={"pudm.suite": suite.name, "pudm.splits": ",".join(suite.splits),
              "pudm.methods": ",".join(m.label for m in suite.methods), "pudm.seeds": settings.seeds,
              "pudm.budget": settings.budget, "pudm.git_commit": sweep._git_commit(),
              **{f"pudm.split_fingerprint.{k}": v for k, v in fingerprints.items()}},
        params={k: v for k, v in asdict(settings).items() if k != "mlflow_uri"},
        resume_run_id=previous.get("parent_run_id"))
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({**asdict(settings), "mlflow_uri": tracking.redact(settings.mlflow_uri),
                                      "parent_run_id": parent_id}, indent=2))

    start = time.perf_counter()
    outcomes = sweep.run_cells(
        the_plan.cells, run_dir, mlflow_uri=settings.mlflow_uri, experiment=settings.experiment,
        run_name=settings.name, parent_run_id=parent_id, workers_per_trial=settings.workers_per_trial,
        cpus_per_worker=settings.cpus_per_worker, gpus_per_worker=gpus, max_concurrent=settings.max_concurrent,
        max_failures=settings.max_failures, resume=resume, verbose=verbose)
    wall = time.perf_counter() - start

    runs = runs_frame(outcomes, the_plan)
    table = summary_table(runs, the_plan)
    title = f"# {suite.name}: {suite.description}" if suite.description else f"# {suite.name}"
    markdown = f"{title}\n\n" + markdown_table(table, the_plan)
    (run_dir / "benchmark_table.md").write_text(markdown)
    table.to_csv(run_dir / "benchmark_table.csv", index=False)
    runs.to_csv(run_dir / "benchmark_runs.csv", index=False)
    grids = write_sample_grids(runs, run_dir)
    tracker.close_stale_trials(active_trial_ids=set())
    tracker.log_benchmark(table, runs, markdown, {**table_metrics(table), "wall_seconds": wall}, grids)
    failed = int(runs[RATE].isna().sum()) if len(runs) else 0
    tracker.end_sweep("FINISHED" if failed < len(runs) else "FAILED")
    return {"plan": the_plan, "runs": runs, "table": table, "markdown": markdown, "wall_seconds": wall,
            "parent_run_id": parent_id, "tracking_uri": tracking.redact(settings.mlflow_uri),
            "experiment": settings.experiment, "run_dir": run_dir, "grids": grids}


# ----------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from pudm_bench.sweep import add_execution_arguments

    p = ArgumentParser(
        prog="python -m pudm_bench.benchmark",
        description="Train every method of a suite on every split of it, K seeds each (Ray Tune trials with Ray "
                    "Train workers), and write the paper-style table (mean ± std over seeds) as Markdown and CSV, "
                    "also logged to MLflow under one parent run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="digits", help="suite name (benchmarks/suites/*.yaml or --suites-dir) or a YAML path")
    p.add_argument("--suites-dir", action="append", default=[], metavar="DIR", help="extra folder of suite YAMLs (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per split and method (default: the suite's)")
    p.add_argument("--budget", default=None, choices=BUDGETS, help="training length and evaluation size (default: the suite's)")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs (repeatable)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: pudm-benchmark-<suite>)")
    p.add_argument("--name", default=None, help="benchmark name (default: <suite>-<budget>-x<seeds>)")
    add_execution_arguments(p, pretrained_per_dataset=True)
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--resume", action="store_true", help="continue the benchmark of the same --name in --storage")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs, resources and locations, then exit")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    return p


def _pretrained_pairs(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    from pudm_bench.sweep import pretrained_source

    pairs = []
    for value in values:
        key, sep, model = value.partition("=")
        if not sep:
            key, model = "*", value
        if not key or not model:
            raise ConfigError(f"--pretrained={value!r} is invalid: expected MODEL or DATASET_OR_SPLIT=MODEL")
        pairs.append((key, pretrained_source(model)))
    return tuple(pairs)


def settings_from_args(args: argparse.Namespace, suite: Suite) -> BenchmarkSettings:
    from pudm_bench import sweep
    from pudm_bench.tracking import check_experiment_name, resolve_tracking_uri

    sweep.check_execution_arguments(args)
    seeds = args.seeds if args.seeds is not None else suite.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} is invalid: expected an integer >= 1")
    budget = args.budget or suite.budget
    name = args.name or f"{suite.name}-{budget}-x{seeds}"
    return BenchmarkSettings(
        suite=suite.name, suite_file=str(Path(suite.source).resolve()), seeds=seeds, budget=budget,
        splits_dirs=tuple(str(Path(d).resolve()) for d in args.splits_dir),
        pretrained=_pretrained_pairs(args.pretrained), max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial, cpus_per_worker=sweep._cpus_per_worker(args),
        gpus_per_worker=sweep._gpus_per_worker(args), mlflow_uri=resolve_tracking_uri(args.mlflow_uri),
        experiment=check_experiment_name(args.experiment or f"pudm-benchmark-{suite.name}"), storage=sweep._storage_path(args.storage),
        name=sweep._safe_name(name), data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        download=args.download, max_failures=args.max_failures, referee_floor=args.referee_floor,
        referee_epochs=args.referee_epochs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            for name, path in suite_files(args.suites_dir).items():
                suite = load_suite(str(path))
                print(f"{name:16s} {len(suite.splits)} split(s) x {len(suite.methods)} method(s), {suite.seeds} seeds, "
                      f"budget {suite.budget}: {suite.description}")
            return 0
        suite = load_suite(args.suite, args.suites_dir)
        settings = settings_from_args(args, suite)
        the_plan = plan(settings, suite)
        if args.dry_run:
            from pudm_bench.tracking import redact

            print(json.dumps({
                "settings": {**asdict(settings), "mlflow_uri": redact(settings.mlflow_uri)},
                "runs": len(the_plan.cells), "cells": list(the_plan.cells),
                "skipped": [f"{m} on {s}: {why}" for s, m, why in the_plan.skipped],
                "resources_per_run": {"train_workers": settings.workers_per_trial,
                                      "cpus_per_worker": settings.cpus_per_worker,
                                      "gpus_per_worker": settings.gpus_per_worker},
                "results": {"run_dir": str(settings.run_dir), "experiment": settings.experiment},
            }, indent=2, default=str))
            return 0
        outcome = run_benchmark(settings, resume=args.resume, ray_address=args.ray_address, num_cpus=args.num_cpus,
                                verbose=0 if args.quiet else 1)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + outcome["markdown"])
    failed = outcome["runs"][outcome["runs"][RATE].isna()]
    if len(failed):
        print("Runs without a result:")
        print(failed[["split", "method", "seed", "status", "error"]].to_string(index=False))
    print(f"Wall time: {outcome['wall_seconds']:.1f} s")
    print(f"Table: {outcome['run_dir'] / 'benchmark_table.md'} (and .csv; per run: benchmark_runs.csv)")
    print(f"MLflow: {outcome['tracking_uri']}  experiment {outcome['experiment']!r}  parent run {outcome['parent_run_id']}")
    print(f"  open it: mlflow ui --backend-store-uri {outcome['tracking_uri']} --host 127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
