"""``python -m pudm_bench.sweep`` (``pudm-sweep``): parse and check the options, print a dry run or run the sweep
(``orchestration.sweep.run_sweep``) and print its summary."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pudm_bench.cli.common import add_execution_arguments, run_command
from pudm_bench.data.splits import QUALITY_METRICS, get_split, load_registry
from pudm_bench.errors import ArgumentParser, ConfigError, unknown_name
from pudm_bench.orchestration.placement import ClusterShape, cluster_shape, plan_placement
from pudm_bench.orchestration.settings import (SweepSettings, at_least, pretrained_source, resolve_budget,
                                                 resolve_execution)
from pudm_bench.search.budgets import BUDGET_CHOICES, budget_for, default_constraints, describe
from pudm_bench.search.pareto import DEFAULT_CONSTRAINTS, METRIC_DIRECTIONS, RATE, parse_constraint
from pudm_bench.search.rungs import DEFAULT_REDUCTION_FACTOR, DEFAULT_RUNGS, SCHEDULERS, parse_rungs
from pudm_bench.search.space import BASELINE_METHODS, DEFAULT_SEARCH_SPACE, load_search_space

OPTUNA_SAMPLERS = ("tpe", "nsga2", "gp")
WARM_STARTS = ("baseline",)  # orchestration.searchers.BaselinesFirst  # orchestration.searchers.make_searcher; not config.SAMPLERS (ddim, ddpm)
DEFAULT_SPLIT_FOR_DATASET = {
    "digits": "digits_even", "mnist": "mnist_even", "cifar10": "cifar10_vehicles", "stl10": "stl10_vehicles",
    "celeba": "celeba_male",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pudm_bench.sweep",
        description="Multi-objective hyperparameter search over PU-DM (Ray Tune + Optuna, Ray Train workers, "
                    "MLflow tracking). Without --dataset/--split: the embedded digits benchmark (minutes on a CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dataset", default=None, choices=sorted(DEFAULT_SPLIT_FOR_DATASET),
                        help="run this dataset's default split (e.g. stl10 -> stl10_vehicles)")
    target.add_argument("--split", default=None, help="any registered split (python -m pudm_bench.splits list)")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs (repeatable)")
    p.add_argument("--search-space", default=None, metavar="FILE",
                   help="search-space YAML (default: search_spaces/default.yaml of this checkout)")
    p.add_argument("--quality", default=None, choices=QUALITY_METRICS, help="quality objective (default: the split's)")
    p.add_argument("--objective", action="append", default=[], metavar="METRIC",
                   help="a further objective (repeatable), with its own direction: "
                        + ", ".join(f"{m} ({d})" for m, d in METRIC_DIRECTIONS.items()
                                    if m not in (RATE, *QUALITY_METRICS)))
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="METRIC<=X or METRIC>=X (repeatable), e.g. coverage_tv<=0.15: trials that break one are kept, "
                        "flagged and left off the Pareto front")
    p.add_argument("--no-default-constraints", dest="default_constraints", action="store_false",
                   help="do not keep trials off the front that drop a normal class or whose samples are mostly off "
                        "the real-image manifold (" + ", ".join(DEFAULT_CONSTRAINTS) + "; docs/metrics.md)")
    p.add_argument("--trials", type=int, default=6, help="searched trials (baselines come on top)")
    p.add_argument("--budget", default="auto", choices=BUDGET_CHOICES,
                   help="training length and evaluation size; auto: cpu on a cluster without GPUs, paper (the "
                        "paper's model and schedule) on one with GPUs")
    p.add_argument("--seed", type=int, default=0, help="seeds the Optuna sampler and every trial")
    p.add_argument("--sampler", default="tpe", choices=OPTUNA_SAMPLERS, help="Optuna sampler")
    p.add_argument("--scheduler", default="fifo", choices=SCHEDULERS,
                   help="fifo: every trial trains its whole budget; moasha: multi-objective successive halving, "
                        "trials scored at --rungs and stopped there unless in the top 1/--reduction-factor by "
                        "non-dominated sorting (docs/concepts.md)")
    p.add_argument("--reduction-factor", type=int, default=DEFAULT_REDUCTION_FACTOR,
                   help="moasha: the share 1/eta of a rung's trials that go on")
    p.add_argument("--rungs", default=None, metavar="F,F",
                   help=f"fractions of a trial's steps where it is scored on a small sample set (moasha default: "
                        f"{DEFAULT_RUNGS}; with fifo: scored there, never stopped)")
    p.add_argument("--rung-samples", type=int, default=None,
                   help="samples per rung score (default: a third of the budget's, at least 16)")
    p.add_argument("--warm-start", default=None, choices=WARM_STARTS,
                   help="baseline: the searched trials fine-tune the sweep's own unsupervised baseline, which runs "
                        "first (the paper's fine-tuning mode; docs/concepts.md)")
    p.add_argument("--warm-start-fraction", type=float, default=1 / 3, metavar="F",
                   help="with --warm-start: a searched trial trains this fraction of the budget's steps")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the unsupervised and supervised baselines with the same budget")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: pudm-<split>)")
    p.add_argument("--name", default=None, help="sweep name (default: <split>-<search space>-<budget>-s<seed>)")
    add_execution_arguments(p)
    p.add_argument("--model", default="unet", choices=["unet", "sd"],
                   help="unet: pixel UNet2DModel (class-conditional on conditional splits); sd: fine-tune the Stable "
                        "Diffusion pipeline given by --pretrained in latent space with the split's prompts "
                        "(pip install 'pudm_bench[sd]'; docs/large-models.md)")
    p.add_argument("--lora-rank", type=int, default=None, help="model sd: train LoRA adapters of this rank only")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="model sd: classifier-free guidance when sampling (1 = none, SD commonly 7.5)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="model sd: less GPU memory, slower steps")
    p.add_argument("--resume", action="store_true", help="continue the sweep of the same --name in --storage")
    p.add_argument("--dry-run", action="store_true", help="print the resolved sweep, trial resources and result locations, then exit")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    return p


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    registry = load_registry(args.splits_dir)
    split_name = args.split or DEFAULT_SPLIT_FOR_DATASET[args.dataset or "digits"]
    if split_name not in registry:
        get_split(split_name, args.splits_dir)  # raises with "did you mean"
    split = registry[split_name]
    search_space = Path(args.search_space or DEFAULT_SEARCH_SPACE)
    space = load_search_space(search_space)
    at_least("--trials", args.trials)
    quality = args.quality or split.quality_metric
    objectives = tuple(dict.fromkeys(check_objective(m, quality) for m in args.objective))
    budget, budget_choice = resolve_budget(args.budget, args)
    constraints = list(default_constraints(split, budget_for(budget, split))) if args.default_constraints else []
    for text in args.constraint:
        try:
            constraints.append(str(parse_constraint(text, METRIC_DIRECTIONS)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    name = args.name or f"{split.name}-{search_space.stem}-{budget}-s{args.seed}"
    execution = resolve_execution(args, name=name, experiment=args.experiment or f"pudm-{split.name}",
                                  budget=budget, budget_choice=budget_choice)
    return SweepSettings(
        **execution, split=split.name, search_space=str(search_space.resolve()),
        search_space_fingerprint=space.fingerprint(), quality=quality, trials=args.trials, seed=args.seed,
        sampler=args.sampler, baselines=args.baselines, pretrained=pretrained_source(args.pretrained),
        objectives=objectives, constraints=tuple(dict.fromkeys(constraints)),
        default_constraints=args.default_constraints, model=args.model, lora_rank=args.lora_rank,
        guidance_scale=args.guidance_scale, gradient_checkpointing=args.gradient_checkpointing,
        **scheduler_settings(args),
    )


def scheduler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--scheduler, --reduction-factor, --rungs, --rung-samples and --warm-start(-fraction), checked (one-line
    errors naming the flag)."""
    rungs = args.rungs if args.rungs is not None else (DEFAULT_RUNGS if args.scheduler == "moasha" else None)
    if args.reduction_factor < 2:
        raise ConfigError(f"--reduction-factor={args.reduction_factor} is invalid: expected an integer >= 2")
    if args.rung_samples is not None:
        at_least("--rung-samples", args.rung_samples, 4)
    if args.warm_start and not args.baselines:
        raise ConfigError("--warm-start baseline fine-tunes the sweep's unsupervised baseline: drop --no-baselines")
    if not 0 < args.warm_start_fraction <= 1:
        raise ConfigError(f"--warm-start-fraction={args.warm_start_fraction} is invalid: expected a number in (0, 1]")
    return dict(scheduler=args.scheduler, reduction_factor=args.reduction_factor,
                rungs=parse_rungs(rungs) if rungs is not None else (), rung_samples=args.rung_samples,
                warm_start=args.warm_start, warm_start_fraction=args.warm_start_fraction)


def check_objective(metric: str, quality: str) -> str:
    """An ``--objective``: a known metric that is not already one of the two fixed objectives."""
    if metric not in METRIC_DIRECTIONS:
        raise unknown_name("--objective", metric, list(METRIC_DIRECTIONS))
    if metric in (RATE, quality):
        raise ConfigError(f"--objective {metric}: it is already an objective of every sweep (non_sensitive_rate and "
                          f"the quality, here {quality}); name another metric")
    return metric


def print_summary(outcome: dict[str, Any], settings: SweepSettings) -> None:
    summary = outcome["summary"]
    frame = summary.trials
    cols = ["trial_id", "role", "method", "beta", "correction", "lr", "status", RATE,
            "non_sensitive_rate_ci_low", "non_sensitive_rate_ci_high", settings.quality]
    # Diversity columns that this split has (coverage needs two normal classes), then any further objective.
    cols += [c for c in dict.fromkeys(("realistic_non_sensitive_rate", "realistic_share", "coverage_tv",
                                       "coverage_missing_classes", "precision", "recall") + settings.objectives)
             if c in frame.columns and frame[c].notna().any() and c not in cols]
    if settings.constraints:
        cols.append("violations")
    front = summary.front
    baselines = frame[frame.role == "baseline"]
    failed = frame[frame.status == "FAILED"]

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        directions = ", ".join(f"{m} {'up' if d == 'max' else 'down'}" for m, d in settings.objective_directions)
        print(f"\nPareto front ({directions}) of {len(frame[frame.role == 'search'])} searched trials"
              + (f", constraints {', '.join(settings.constraints)}:" if settings.constraints else ":"))
        print(front[cols].to_string(index=False) if len(front) else "  (empty: no searched trial finished)")
        if len(baselines):
            print("\nBaselines (same budget):")
            print(baselines[cols].to_string(index=False))
        infeasible = (frame[~frame["feasible"] & ~frame.status.isin(("FAILED", "STOPPED"))]
                      if "feasible" in frame.columns else frame[:0])
        if len(infeasible):
            print("\nTrials that break a constraint (kept, not on the front):")
            print(infeasible[cols].to_string(index=False))
        stopped = frame[frame.status == "STOPPED"]
        if len(stopped):
            print(f"\nStopped at a rung by --scheduler {settings.scheduler} (rung scores in MLflow as rung_*):")
            print(stopped[["trial_id", "method", "beta", "correction", "lr"]].to_string(index=False))
        if len(failed):
            print("\nFailed trials:")
            print(failed[["trial_id", "method", "beta", "lr", "error"]].to_string(index=False))
    ref = summary.reference
    print(f"\nHypervolume of the searched front: {summary.hypervolume:.4g} (reference: {RATE}="
          f"{ref[0]:.3g}, {settings.quality}={ref[1]:.4g})")
    print(f"Wall time: {outcome['wall_seconds']:.1f} s")
    print(f"MLflow: {outcome['tracking_uri']}  experiment {outcome['experiment']!r}  parent run {outcome['parent_run_id']}")
    print(f"  open it: mlflow ui --backend-store-uri {outcome['tracking_uri']} --host 127.0.0.1")
    print(f"Sweep storage: {settings.run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.dry_run:
        print(json.dumps(dry_run(settings, cluster_shape(args.ray_address, args.num_cpus)), indent=2, default=str))
        return 0
    from pudm_bench.orchestration.sweep import run_sweep  # imports Ray: not for --help, a dry run or bad input

    outcome = run_sweep(settings, resume=args.resume, ray_address=args.ray_address, num_cpus=args.num_cpus,
                        verbose=0 if args.quiet else 1)
    print_summary(outcome, settings)
    return 0


def dry_run(settings: SweepSettings, shape: ClusterShape) -> dict[str, Any]:
    """The resolved sweep, its trials' resources and where results go (``--dry-run``; nothing is written). A trial
    that could never be placed on ``shape`` is refused here too."""
    from pudm_bench.tracking import redact

    placement = plan_placement(settings, shape)
    split = get_split(settings.split, settings.splits_dirs)
    space = load_search_space(settings.search_space)
    budget = budget_for(settings.budget, split)
    runs = settings.trials + (len(BASELINE_METHODS) if settings.baselines else 0)
    return {
        "settings": {**asdict(settings), "mlflow_uri": redact(settings.mlflow_uri)},
        "budget": asdict(budget),
        "plan": describe(budget, split, runs, settings.budget_choice, gpus=placement.gpus_per_worker),
        "search_space": {k: repr(v) for k, v in space.params.items()},
        "trials": {"searched": settings.trials, "baselines": list(BASELINE_METHODS) if settings.baselines else []},
        "resources_per_trial": {"train_workers": settings.workers_per_trial,
                                "cpus_per_worker": settings.cpus_per_worker,
                                "gpus_per_worker": placement.gpus_per_worker,
                                "placement_timeout_s": placement.timeout_s},
        "cluster": shape.describe(),
        "placement_warning": placement.warning,
        "results": {"sweep_dir": str(settings.run_dir), "mlflow_uri": redact(settings.mlflow_uri),
                    "experiment": settings.experiment},
    }
