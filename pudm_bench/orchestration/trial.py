"""One Tune trial: its TrainConfig and EvalConfig, and a ``TorchTrainer`` over its workers (``worker.train_worker``).

Two trainables share ``fit_trial``: ``run_trial`` (a sweep's searched or baseline trial: parameters from the
searcher) and ``run_cell_trial`` (a benchmark's fixed cell, possibly warm-started from another cell's model).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray.train
from ray import tune

from pudm_bench.data.splits import SplitSpec, get_split
from pudm_bench.orchestration.settings import SweepSettings
from pudm_bench.orchestration.worker import failed_result, train_worker
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.search.budgets import Budget, budget_for, budget_train_values, make_eval_config, rung_eval_config
from pudm_bench.search.rungs import rung_steps
from pudm_bench.search.space import BASELINE_METHODS, SearchSpace, load_search_space
from pudm_bench.training.config import TrainConfig

PLACEMENT_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train V2's worker-group start-up timeout


def trial_train_config(settings: SweepSettings, split: SplitSpec, space: SearchSpace, budget: Budget,
                       params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: budget defaults, then the search space's fixed values, then the trial's."""
    method = params.get("method") or space.method
    values: dict[str, Any] = dict(
        budget_train_values(budget), split=split.name, method=method, seed=settings.seed, data_dir=settings.data_dir,
        download=settings.download, splits_dirs=settings.splits_dirs, pretrained=settings.pretrained,
    )
    if settings.model != "unet":
        # A latent model's architecture is the pipeline's: the budget's pixel UNet preset does not apply.
        values.update(model=settings.model, model_preset=None, lora_rank=settings.lora_rank,
                      guidance_scale=settings.guidance_scale, gradient_checkpointing=settings.gradient_checkpointing)
    if method in BASELINE_METHODS:
        values.update({k: v for k, v in params.items()
                       if k not in ("method", "beta", "correction", "eta") and v is not None})
    else:
        values.update(space.fixed)
        values.update({k: v for k, v in params.items() if k != "method" and v is not None})
    return TrainConfig(**values)


def warm_start_config(config: TrainConfig, budget: Budget, fraction: float, init_from: str) -> TrainConfig:
    """A searched trial of ``--warm-start baseline``: fine-tune ``init_from`` (the sweep's unsupervised baseline's
    final checkpoint) for ``fraction`` of the budget's steps, warm-up, log and checkpoint intervals scaled alike
    (fresh optimizer and schedule: ``TrainConfig.init_from``)."""
    steps = max(1, round(fraction * budget.steps))
    return config.replace(init_from=init_from, steps=steps,
                          warmup_steps=max(0, min(round(fraction * budget.warmup_steps), steps - 1)),
                          log_every=max(1, min(config.log_every, steps // 2)),  # a curve of two points at least
                          checkpoint_every=max(1, min(config.checkpoint_every, steps)))


def uses_inception(settings: SweepSettings) -> bool:
    """Whether the sweep's objectives or constraints need Inception features (FID or precision/recall in them)."""
    used = [settings.quality, *settings.objectives, *(c.metric for c in settings.parsed_constraints)]
    return any(m == "fid" or m.endswith("_inception") for m in used)


def eval_config(settings: SweepSettings, budget: Budget) -> EvalConfig:
    return make_eval_config(budget, settings.quality, settings.seed, settings.referee_floor, settings.referee_epochs,
                            settings.run_dir / "cache", inception=uses_inception(settings))


def _failure_reason(error: BaseException) -> str:
    """One line for a failed Ray Train run: the workers' own exception ("RuntimeError: ...") when there is one."""
    failures = getattr(error, "worker_failures", None) or {}
    inner = next(iter(failures.values()), None) or getattr(error, "controller_failure", None) or error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    # Ray's wrapped exceptions carry the traceback first and "Type: message" last.
    last = lines[-1] if lines else type(inner).__name__
    return last if ":" in last else f"{type(inner).__name__}: {last}"


def probe_config(settings: SweepSettings, evaluation: EvalConfig, steps: int) -> dict[str, Any] | None:
    """The rungs of a trial of ``steps`` steps (``--rungs``) and how it is scored there (``rung_eval_config``), for
    the Train worker (``worker.train_worker``); None without rungs."""
    at = rung_steps(settings.rungs, steps)
    if not at:
        return None
    return {"steps": list(at), "eval_config": asdict(rung_eval_config(evaluation, settings.rung_samples))}


def fit_trial(config: TrainConfig, evaluation: EvalConfig, trial_id: str, storage_dir: Path, workers: int,
              cpus_per_worker: float, gpus_per_worker: float, max_failures: int,
              placement_timeout: float | None = None, probe: dict[str, Any] | None = None) -> None:
    """Train and score one configuration inside a Tune trial: a ``TorchTrainer`` over ``workers`` workers, fit().

    Train checkpoints go to ``<storage_dir>/trial-<trial_id>/``, fixed per trial, so a retried or resumed trial
    finds its last one. ``placement_timeout``: the trial fails (with that reason) when its workers are not placed
    within that many seconds, instead of Ray Train's default of retrying the start-up forever (an autoscaling
    cluster that never grows); None on a fixed cluster, where every trial was checked to fit.
    """
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = gpus_per_worker > 0
    controller_failures = -1  # Ray Train's default: retry a worker group that did not start, without limit
    if placement_timeout is not None:
        # Read by Ray Train's controller, which gets it from this process (Train V2's propagated variables).
        os.environ[PLACEMENT_TIMEOUT_ENV] = str(placement_timeout)
        controller_failures = 0
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train_config": config.to_dict(), "eval_config": asdict(evaluation),
                           "trial_id": trial_id, "cpus_per_worker": cpus_per_worker, "probe": probe},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"trial-{trial_id}",
            storage_path=str(storage_dir),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=controller_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not one line per report
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        if placement_timeout is not None and "WorkerGroupStartupTimeoutError" in repr(getattr(exc, "controller_failure", "")):
            tune.report(failed_result(f"PlacementTimeout: the {workers} Train worker(s) of this trial were not placed "
                                      f"within {placement_timeout:g} s (--placement-timeout); the cluster did not "
                                      "provide the requested resources"))
            return
        # The workers failed max_failures + 1 times (each retry restarted from the last checkpoint): the trial is
        # recorded as failed with the workers' reason, and the sweep goes on. Tune itself retries a trial only when
        # this process dies (a lost node), so a failing config is not retried twice over.
        tune.report(failed_result(f"{_failure_reason(exc)} (after {max_failures + 1} attempt"
                                  f"{'s' if max_failures else ''})"))


def run_trial(params: dict[str, Any], settings: SweepSettings) -> None:
    """One sweep trial (a Tune function trainable): the searched parameters -> TrainConfig -> ``fit_trial``."""
    split = get_split(settings.split, settings.splits_dirs)
    space = load_search_space(settings.search_space)
    budget = budget_for(settings.budget, split)
    params = dict(params)
    warm_start, init_from = params.pop("warm_start", None), params.pop("init_from", None)
    config = trial_train_config(settings, split, space, budget, params)
    if warm_start:
        if not init_from:
            tune.report(failed_result(f"warm start: the sweep's {warm_start} baseline did not finish"))
            return
        config = warm_start_config(config, budget, settings.warm_start_fraction, init_from)
    evaluation = eval_config(settings, budget)
    fit_trial(config, evaluation, tune.get_context().get_trial_id(), settings.run_dir / "train",
              settings.workers_per_trial, settings.cpus_per_worker,
              settings.gpus_per_worker or 0.0,  # None (auto) is resolved by run_sweep before trials start
              settings.max_failures, settings.placement_timeout, probe=probe_config(settings, evaluation, config.steps))


def run_cell_trial(params: dict[str, Any], cells: dict[str, dict[str, Any]], storage_dir: str, workers: int,
                   cpus_per_worker: float, gpus_per_worker: float, max_failures: int,
                   placement_timeout: float | None = None) -> None:
    """One fixed trial of ``runner.run_cells`` (a Tune function trainable): the cell's TrainConfig ->
    ``fit_trial``; a warm start takes ``init_from`` from ``CellSearcher``."""
    cell = cells[params["cell"]]
    config = TrainConfig.from_dict(cell["train_config"])
    if cell.get("init"):
        if not params.get("init_from"):
            tune.report(failed_result(f"warm start from {cell['init']}: that run did not finish"))
            return
        config = config.replace(init_from=params["init_from"])
    fit_trial(config, EvalConfig(**cell["eval_config"]),
              tune.get_context().get_trial_id(), Path(storage_dir), workers, cpus_per_worker, gpus_per_worker,
              max_failures, placement_timeout)
