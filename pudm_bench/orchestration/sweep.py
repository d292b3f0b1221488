"""The sweep driver (Ray 2.60, Train V2 inside Tune).

- ``run_sweep`` checks everything first (``preflight``: resume, storage, tracking store; ``check_sweep``: split,
  search space, budget, objectives; ``prepare_scoring``: data, referee, FID weights), then runs a ``Tuner`` whose
  searcher is Optuna (non-sensitive rate up, quality down, plus ``--objective``s) behind the baselines;
- each Tune trial is ``trial.run_trial``: a ``TorchTrainer`` over ``worker.train_worker`` workers;
- ``callbacks.TrackingCallback`` writes one MLflow child run per trial, keyed by trial id;
- the results: one row per trial (``results_frame``), then ``pareto.summarize`` (front, hypervolume, reference),
  which the print-out, MLflow and the report all use.

Storage (``--storage``, default ``./pudm_runs``): ``<storage>/<sweep name>/`` holds ``sweep.json`` (the resolved
settings), ``tune/`` (Tune's experiment state, for ``--resume``), ``train/trial-<id>/`` (Ray Train checkpoints, so
a retried or resumed trial continues from its last one), ``prior.json`` and ``cache/`` (referees, FID statistics).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import SplitSpec, get_split
from pudm_bench.errors import ConfigError
from pudm_bench.orchestration.callbacks import TrackingCallback, trial_params
from pudm_bench.orchestration.cluster import start_ray
from pudm_bench.orchestration.placement import check_batch, cluster_shape, plan_placement
from pudm_bench.orchestration.preflight import preflight, prepare_scoring, say
from pudm_bench.orchestration.runner import fit_tuner, start_parent_run
from pudm_bench.orchestration.scheduler import make_scheduler
from pudm_bench.orchestration.searchers import make_searcher
from pudm_bench.orchestration.settings import TRIAL_DRIVER_CPU, SweepSettings
from pudm_bench.orchestration.trial import eval_config, run_trial, trial_train_config, warm_start_config
from pudm_bench.search.budgets import Budget, budget_for, describe
from pudm_bench.search.pareto import DIVERSITY_METRICS, QUALITY, RATE, SCORE_METRICS, FrontSummary, summarize
from pudm_bench.search.space import BASELINE_METHODS, SearchSpace, load_search_space
from pudm_bench.tracking import redact


def check_sweep(settings: SweepSettings) -> tuple[SplitSpec, SearchSpace, Budget]:
    """The sweep's own checks that cost nothing: the split, search space and budget, every trial's TrainConfig
    (the search space's centre and the baselines), and that the objectives and constraints can be scored."""
    split = get_split(settings.split, settings.splits_dirs)
    space = load_search_space(settings.search_space)
    budget = budget_for(settings.budget, split)
    for params in [space.center()] + [{"method": m} for m in (BASELINE_METHODS if settings.baselines else ())]:
        config = trial_train_config(settings, split, space, budget, params)  # ConfigError on a bad combination
        if settings.warm_start and params is not None and "method" not in params:
            warm_start_config(config, budget, settings.warm_start_fraction, "<baseline>")  # its steps and intervals
        check_batch(config.batch_size, settings.workers_per_trial, f"the {budget.name} budget on {split.name}")
    used = list(settings.objectives) + [c.metric for c in settings.parsed_constraints]
    unscored = [m for m in used if m in DIVERSITY_METRICS and budget.diversity == "off"]
    if unscored:
        raise ConfigError(f"{', '.join(unscored)}: the {budget.name} budget does not score coverage or "
                          f"precision/recall on split {split.name!r}; use --budget cpu or paper")
    coverage = [m for m in used if m.startswith("coverage_")]
    if coverage and len(split.normal_classes) < 2:
        raise ConfigError(f"{', '.join(coverage)}: split {split.name!r} has one normal class "
                          f"({split.normal_classes[0]}), so there is no normal-class coverage to measure; use precision "
                          "or recall instead")
    if settings.model == "sd":
        from pudm_bench.training import latent

        latent.check_pipeline(settings.pretrained, split.image_size)  # configs only: no weights loaded here
    return split, space, budget


def sweep_prior(settings: SweepSettings, split: SplitSpec, budget: Budget) -> dict[str, Any]:
    """The class prior estimated from the split's U and S (``prior.estimate_prior``, seeded by --seed), once per
    sweep: kept in ``<sweep>/prior.json`` so a resumed sweep searches the same range."""
    import torch

    from pudm_bench.prior import estimate as prior_module

    path = settings.run_dir / "prior.json"
    key = {"split": split.name, "seed": settings.seed}
    if path.is_file():
        saved = json.loads(path.read_text())
        if all(saved.get(k) == v for k, v in key.items()):
            say(f"class prior: beta estimate {saved['prior_estimate']:.4f} (cached in {path})")
            return saved
    say(f"class prior of split {split.name!r}: estimating from U and S (search space bounds auto*F) ...")
    built = build_split(split, data_dir=settings.data_dir, download=settings.download)
    scorer = replace(prior_module.DEFAULT_SCORER, steps=budget.prior_steps)
    estimate = prior_module.estimate_prior(built, seed=settings.seed, config=scorer,
                                           device="cuda" if torch.cuda.is_available() else "cpu")
    result = {**key, **estimate.metrics(), "prior_seconds": estimate.seconds,
              "prior_true": float(split.counts.true_prior)}
    say(f"class prior: beta estimate {estimate.estimate:.4f} (bootstrap std {estimate.std:.4f}, 90% interval "
        f"[{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]) in {estimate.seconds:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def results_frame(records: list[dict[str, Any]], settings: SweepSettings, space: SearchSpace) -> pd.DataFrame:
    """One row per trial (``runner.trial_records``): parameters, role, status, objectives, scores; ``excluded``
    where the objectives are missing."""
    rows = []
    for record in records:
        result = record["result"]
        params = trial_params(record["config"])
        method = params.get("method") or space.method
        if method not in BASELINE_METHODS:
            params = {**space.fixed, **params}
        rate, quality = result.get(RATE), result.get(settings.quality)
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rate, quality))
        rows.append({
            "trial_id": record["trial_id"], "role": "baseline" if method in BASELINE_METHODS else "search",
            "method": method, "beta": params.get("beta"), "correction": params.get("correction"),
            "lr": params.get("lr"), "status": record["status"] if record["status"] != "ERROR" else "FAILED",
            RATE: rate if finite else math.nan,
            "non_sensitive_rate_ci_low": result.get("non_sensitive_rate_ci_low"),
            "non_sensitive_rate_ci_high": result.get("non_sensitive_rate_ci_high"),
            QUALITY: quality if finite else math.nan, settings.quality: quality if finite else math.nan,
            **{m: _number_or_nan(result.get(m)) if finite else math.nan
               for m in dict.fromkeys(SCORE_METRICS + settings.objectives)},
            "coverage_missing_classes": result.get("coverage_missing_classes"),
            "referee_balanced_accuracy": result.get("referee_balanced_accuracy"),
            "train_seconds": result.get("train_seconds"), "eval_seconds": result.get("eval_seconds"),
            "excluded": not finite, "error": record["error"],
        })
    return pd.DataFrame(rows)


def _number_or_nan(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def sweep_tune_config(settings: SweepSettings, space: SearchSpace, budget: Budget) -> tune.TuneConfig:
    """Tune's settings for the sweep: the Optuna searcher, the scheduler (None: FIFO; moasha: stops trials at rungs,
    scheduler.py), the trial count with the baselines, and whether a new trial may reuse a finished one's process."""
    scheduler = make_scheduler(settings)
    return tune.TuneConfig(
        # metric/mode stay unset here: setting them would silently make the study single-objective.
        search_alg=make_searcher(settings, space, budget),
        scheduler=scheduler,
        num_samples=settings.trials + (len(BASELINE_METHODS) if settings.baselines else 0),
        max_concurrent_trials=settings.max_concurrent,
        # A new trial reuses a finished one's process (~4 s less start-up each), but only when no trial is ever
        # stopped: Tune 2.60 hands a stopped trial's process to the next trial while the stopped trial's Ray Train
        # run still blocks it (its controller waits to report into it), the next trial fails with "Trainable runner
        # reuse requires reset_config()", and the stopped run holds its CPUs until Ray Train's 10-minute worker
        # health timeout (seen with --scheduler moasha: docs/performance.md, "Sweep efficiency").
        reuse_actors=scheduler is None)


def run_sweep(settings: SweepSettings, resume: bool, ray_address: str | None, num_cpus: int | None = None,
              verbose: int = 1) -> dict[str, Any]:
    """Run (or resume) one sweep; returns the ``FrontSummary`` as "summary", the wall time and where it was
    tracked."""
    split, space, budget = check_sweep(settings)
    preflight(settings, resume)
    # Where trials run, before any work: a trial that could never be placed is refused here (placement.py).
    placement = plan_placement(settings, cluster_shape(ray_address, num_cpus))
    runs = settings.trials + (len(BASELINE_METHODS) if settings.baselines else 0)
    say(describe(budget, split, runs, settings.budget_choice, placement.gpus_per_worker))
    if settings.warm_start:
        say(f"warm start: each searched trial fine-tunes the unsupervised baseline for "
            f"{max(1, round(settings.warm_start_fraction * budget.steps)):,} steps, once that has finished")
    if settings.scheduler == "moasha":
        say(f"successive halving: searched trials scored at {', '.join(f'{f:.3g}' for f in settings.rungs)} of their "
            f"steps and stopped there unless in the top 1/{settings.reduction_factor} (moasha.json)")
    if placement.warning:
        say(f"warning: {placement.warning}")
    settings = replace(settings, gpus_per_worker=placement.gpus_per_worker, placement_timeout=placement.timeout_s)
    evaluation = eval_config(settings, budget)
    # Data, referees (refused below the floor), FID statistics: once, here, before Ray starts.
    fingerprint = prepare_scoring(split, evaluation, settings)
    from pudm_bench.scoring.referee import get_referee

    referee = get_referee(split, data_dir=settings.data_dir, cache_dir=evaluation.cache_dir,
                          epochs=evaluation.referee_epochs)  # trained and checked by prepare_scoring: from the cache
    prior = sweep_prior(settings, split, budget) if space.needs_prior else None
    if prior is not None:
        space = space.resolve_prior(prior["prior_estimate"])

    start_ray(ray_address, num_cpus, verbose)
    tracker, parent_id, redacted = start_parent_run(
        settings,
        tags={"pudm.split": split.name, "pudm.dataset": split.dataset, "pudm.split_fingerprint": fingerprint,
              "pudm.search_space": Path(settings.search_space).name, "pudm.quality": settings.quality, "pudm.budget": settings.budget,
              "pudm.model": settings.model + (f"+lora{settings.lora_rank}" if settings.lora_rank else ""),
              **({"pudm.objectives": ",".join(settings.objectives)} if settings.objectives else {}),
              **({"pudm.constraints": ";".join(settings.constraints)} if settings.constraints else {})},
        referee_balanced_accuracy=referee.balanced_accuracy)
    if prior is not None:  # the estimate, its uncertainty and the range it gave the search
        tracker.log_sweep_metrics({k: v for k, v in prior.items() if isinstance(v, float)})
        tracker.log_sweep_params({"beta_range": repr(space.params["beta"])})

    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=redacted), {"cpu": TRIAL_DRIVER_CPU})
    start = time.perf_counter()
    records = fit_tuner(
        trainable, settings.run_dir, resume=resume,
        tune_config=lambda: sweep_tune_config(settings, space, budget),
        callback=TrackingCallback(settings.mlflow_uri, settings.experiment, settings.name, parent_id, space.method,
                                  fixed=space.fixed),
        mlflow_uri=settings.mlflow_uri, max_failures=settings.max_failures, verbose=verbose)
    wall = time.perf_counter() - start

    summary: FrontSummary = summarize(results_frame(records, settings, space), settings.parsed_constraints,
                                      extra=settings.objective_directions[2:])
    tracker.close_stale_trials(active_trial_ids=set())
    tracker.log_pareto(summary, settings.quality, extra=settings.objective_directions[2:])
    failed = int((summary.trials.status == "FAILED").sum())
    tracker.end_sweep("FINISHED" if failed < len(summary.trials) else "FAILED")
    return {"summary": summary, "wall_seconds": wall, "parent_run_id": parent_id,
            "tracking_uri": redact(settings.mlflow_uri), "experiment": settings.experiment}

