"""A benchmark's plan: one cell (training run) per split x method x seed of its suite, each TrainConfig and
EvalConfig validated before Ray starts; warm starts name the cell they fine-tune from."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pudm_bench.data.splits import SplitSpec, get_split
from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.settings import BenchmarkSettings
from pudm_bench.search.budgets import budget_for, budget_train_values, make_eval_config
from pudm_bench.search.suites import Plan, Suite
from pudm_bench.training.config import TrainConfig


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
    # With unlabeled_sensitive_shares each split is run at each share: a variant per share, "<split>-share<x>".
    variants = [get_split(name, settings.splits_dirs, share) for name in suite.splits
                for share in (suite.unlabeled_sensitive_shares or (None,))]
    splits = {spec.name: spec for spec in variants}
    cells: dict[str, dict[str, Any]] = {}
    skipped = []
    seeds = range(settings.first_seed, settings.first_seed + settings.seeds)
    for seed in seeds:  # seeds outermost: the first runs to finish cover every method and split
        for split in splits.values():
            budget = budget_for(settings.budget, split)
            pretrained = pretrained_for(settings, suite, split)
            for method in suite.methods:
                if method.needs_labeled_normal and split.counts.labeled_normal == 0:
                    if seed == seeds[0]:
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
            if cell["params"]["seed"] == seeds[0]:
                skipped.append((split_name, label, f"its warm start {cell['init'].split('/')[1]} is not run there"))
    return Plan(suite, splits, cells, skipped, settings.budget)
