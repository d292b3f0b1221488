"""``python -m pudm_bench.sweep``: Ray Tune + Optuna multi-objective search over PU-DM, Ray Train workers per
trial, everything recorded in MLflow. The only module that imports Ray.

Structure (Ray 2.60, Train V2 inside Tune):
- the driver (``run_sweep``) validates everything first (split, data, search space, referee, FID weights,
  tracking store), then runs a ``Tuner`` whose searcher is Optuna (two objectives: non-sensitive rate up,
  quality down) wrapped so the baselines run first with the same budget;
- each Tune trial is a function trainable (``run_trial``) that builds a ``TorchTrainer`` and calls ``fit()``;
  ``TuneReportCallback`` turns rank 0's ``ray.train.report`` calls into Tune results;
- each Train worker (``train_worker``) runs ``pudm_bench.train.train`` (DDP through ``prepare_model``), reports
  training curves and checkpoints, then rank 0 scores the model (``evaluate.evaluate_model``) and every rank reports
  the final objectives together with a checkpoint holding the samples, the scores and the trained pipeline;
- a Tune callback in the driver (``TrackingCallback``) writes MLflow child runs keyed by trial id, so a resumed
  trial never gets a second run.

Storage layout (``--storage``, default ``./pudm_runs``): ``<storage>/<sweep name>/`` holds ``sweep.json`` (the
resolved settings), ``tune/`` (Tune's experiment state, for ``--resume``), ``train/trial-<id>/`` (Ray Train
checkpoints, so a retried or resumed trial continues from its last one) and ``cache/`` (referee, FID statistics).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.tune.search import Searcher

from pudm_bench import __version__
from pudm_bench.budgets import BUDGETS, Budget, budget_for, budget_train_values
from pudm_bench.config import TrainConfig
from pudm_bench.data.splits import QUALITY_METRICS, SplitSpec, build_split, get_split, load_registry
from pudm_bench.errors import ArgumentParser, ConfigError, PudmError
from pudm_bench.evaluate import EvalConfig
from pudm_bench.pareto import (DEFAULT_CONSTRAINTS, DIVERSITY_METRICS, METRIC_DIRECTIONS, SCORE_METRICS, Constraint,
                               parse_constraint)
from pudm_bench.search_space import DEFAULT_SEARCH_SPACE, SearchSpace, load_search_space

BASELINE_METHODS = ("unsupervised", "supervised")
SAMPLERS = ("tpe", "nsga2", "gp")
DEFAULT_SPLIT_FOR_DATASET = {
    "digits": "digits_even", "mnist": "mnist_even", "cifar10": "cifar10_vehicles", "stl10": "stl10_vehicles",
    "celeba": "celeba_male",
}
OBJECTIVE_RATE = "non_sensitive_rate"


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep needs, resolved from the CLI; saved as ``sweep.json`` and compared on ``--resume``."""

    split: str
    splits_dirs: tuple[str, ...]
    search_space: str
    search_space_fingerprint: str
    quality: str
    trials: int
    max_concurrent: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float | None  # None: auto, resolved once Ray is up (1 when the cluster has GPUs)
    budget: str
    seed: int
    sampler: str
    baselines: bool
    mlflow_uri: str
    experiment: str
    storage: str
    name: str
    data_dir: str | None
    download: bool
    max_failures: int
    referee_floor: float = 0.9
    referee_epochs: int | None = None  # None: the budget's choice
    pretrained: str | None = None  # fine-tune every trial from this diffusers UNet/pipeline (folder or hub id)
    # Objectives beyond (non_sensitive_rate, quality), each with its METRIC_DIRECTIONS direction, and constraints
    # ("coverage_tv<=0.15"): trials that break one are kept, flagged and left off the front.
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # resolved: the default ones (unless turned off) and the user's
    default_constraints: bool = True
    # The model every trial trains (config.MODELS): unet, or sd (latent Stable Diffusion from --pretrained).
    model: str = "unet"
    lora_rank: int | None = None
    guidance_scale: float = 1.0
    gradient_checkpointing: bool = False

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [parse_constraint(text, METRIC_DIRECTIONS) for text in self.constraints]

    @property
    def objective_directions(self) -> list[tuple[str, str]]:
        """Every objective of the search with its direction, the two fixed ones first."""
        return [(OBJECTIVE_RATE, "max"), (self.quality, "min")] + [(m, METRIC_DIRECTIONS[m]) for m in self.objectives]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.storage) / self.name

    # Fields that may differ between a sweep and its resumption.
    # default_constraints: what it turns on is compared as the resolved ``constraints``.
    RESUMABLE = ("max_concurrent", "mlflow_uri", "data_dir", "download", "max_failures", "gpus_per_worker",
                 "default_constraints")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
        values.update({k: v for k, v in params.items() if k not in ("method", "beta", "correction", "eta") and v is not None})
    else:
        values.update(space.fixed)
        values.update({k: v for k, v in params.items() if k != "method" and v is not None})
    return TrainConfig(**values)


def uses_inception(settings: SweepSettings) -> bool:
    """Whether the sweep's objectives or constraints need Inception features (FID or precision/recall in them)."""
    used = [settings.quality, *settings.objectives, *(c.metric for c in settings.parsed_constraints)]
    return any(m == "fid" or m.endswith("_inception") for m in used)


def eval_config(settings: SweepSettings, budget: Budget) -> EvalConfig:
    return make_eval_config(budget, settings.quality, settings.seed, settings.referee_floor, settings.referee_epochs,
                            settings.sweep_dir / "cache", inception=uses_inception(settings))


def make_eval_config(budget: Budget, quality: str, seed: int, referee_floor: float, referee_epochs: int | None,
                     cache_dir: Path, inception: bool = False) -> EvalConfig:
    """How a trial is scored: the budget's sample count and sampler, samples seeded from the trial's seed;
    Inception features (FID, and precision/recall in them) only when the search uses them (``inception``, or FID
    as the quality)."""
    return EvalConfig(num_samples=budget.num_samples, sampler=budget.sampler, sample_steps=budget.sample_steps,
                      sample_seed=seed + 1234, quality_metric=quality,
                      fid="on" if quality == "fid" or inception else "off",
                      referee_floor=referee_floor, referee_epochs=referee_epochs or budget.referee_epochs,
                      cache_dir=str(cache_dir), diversity=budget.diversity)


# ----------------------------------------------------------------------------------------------------------------
# Train workers


def _quiet_train_reports() -> None:
    """Ray 2.60's Train worker logs every ``report`` at INFO ("Reporting training result N: ...") through a logger
    named after its source file, which ``LoggingConfig(log_level=...)`` does not reach; one line per training log
    step would flood the sweep's output."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: restore the latest checkpoint, train, evaluate on rank 0, report (every rank)."""
    import torch

    from pudm_bench.evaluate import evaluate_model
    from pudm_bench.train import Callback, save_pipeline, train

    _quiet_train_reports()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, round(loop_config["cpus_per_worker"])))
    config = TrainConfig.from_dict(loop_config["train_config"])
    evaluation = EvalConfig(**loop_config["eval_config"])
    split = build_split(get_split(config.split, config.splits_dirs, config.unlabeled_sensitive_share), seed=config.split_seed,
                        data_dir=config.data_dir, download=config.download)
    run_dir = Path(tempfile.mkdtemp(prefix=f"pudm-{loop_config['trial_id']}-r{rank}-"))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            state = json.loads((Path(restored) / "state.json").read_text())
            target = run_dir / "checkpoints" / f"step_{int(state['step']):08d}"
            shutil.copytree(restored, target, ignore=shutil.ignore_patterns("pipeline", "*.png", "eval.json"))

    class Reporter(Callback):
        """Training curves on log steps; the same metrics plus the checkpoint on checkpoint steps."""

        def __init__(self) -> None:
            self.last: dict[str, float] = {}

        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            self.last = {**metrics, "phase": "train"}
            if step % config.checkpoint_every != 0 and step != config.steps:
                ray.train.report(self.last)

        def on_checkpoint(self, step: int, path: Path | None) -> None:
            ckpt = ray.train.Checkpoint.from_directory(str(path)) if path is not None else None
            ray.train.report(self.last, checkpoint=ckpt, checkpoint_dir_name=f"step_{step:08d}")

    prepare = ray.train.torch.prepare_model if context.get_world_size() > 1 else None
    try:
        result = train(config, split, run_dir, callbacks=[Reporter()], prepare_model=prepare)
    except PudmError as exc:
        # Not an infrastructure failure (a non-finite loss, bad data or config): retrying the same config would
        # fail the same way. Report it as the trial's final result (NaN objectives make Optuna record the trial as
        # failed) instead of raising, which Ray Train would retry.
        ray.train.report(failed_result(f"{type(exc).__name__}: {exc}"))
        return
    final: dict[str, Any] = {"phase": "final"}
    final_dir = run_dir / "final"
    final_dir.mkdir()
    if rank == 0:
        start = time.perf_counter()
        metrics = evaluate_model(result.generator, split, evaluation, data_dir=config.data_dir,
                                 download=config.download, grid_path=final_dir / "samples.png")
        final.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
        final.update({"train_seconds": result.train_seconds, "eval_seconds": time.perf_counter() - start,
                      "steps": result.step, "resumed_from_step": result.resumed_from})
        final.update(result.prior_metrics)  # beta auto / filter: the estimate and what the filter removed
        # The final checkpoint: the last training state (so a re-run resumes with nothing left to train) plus what
        # the driver logs to MLflow.
        last = run_dir / "checkpoints" / f"step_{result.step:08d}"
        shutil.copytree(last, final_dir, dirs_exist_ok=True)
        save_pipeline(result, final_dir)
        (final_dir / "eval.json").write_text(json.dumps(metrics, indent=2, default=str))
        (final_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    ckpt = ray.train.Checkpoint.from_directory(str(final_dir)) if rank == 0 else None
    ray.train.report(final, checkpoint=ckpt, checkpoint_dir_name="final")
    shutil.rmtree(run_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Tune trials


def failed_result(reason: str) -> dict[str, Any]:
    """The final report of a trial that failed: NaN objectives and the reason (logged to MLflow and the summary)."""
    return {OBJECTIVE_RATE: math.nan, "quality": math.nan, "phase": "final", "failed": reason}


def _failure_reason(error: BaseException) -> str:
    """One line for a failed Ray Train run: the workers' own exception ("RuntimeError: ...") when there is one."""
    failures = getattr(error, "worker_failures", None) or {}
    inner = next(iter(failures.values()), None) or getattr(error, "controller_failure", None) or error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    # Ray's wrapped exceptions carry the traceback first and "Type: message" last.
    last = lines[-1] if lines else type(inner).__name__
    return last if ":" in last else f"{type(inner).__name__}: {last}"


def fit_trial(config: TrainConfig, evaluation: EvalConfig, trial_id: str, storage_dir: Path, workers: int,
              cpus_per_worker: float, gpus_per_worker: float, max_failures: int) -> None:
    """Train and score one configuration inside a Tune trial: a ``TorchTrainer`` over ``workers`` workers, fit().

    Train checkpoints go to ``<storage_dir>/trial-<trial_id>/``, fixed per trial, so a retried or resumed trial
    finds its last one.
    """
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train_config": config.to_dict(), "eval_config": asdict(evaluation),
                           "trial_id": trial_id, "cpus_per_worker": cpus_per_worker},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"trial-{trial_id}",
            storage_path=str(storage_dir),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not one line per report
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
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
    config = trial_train_config(settings, split, space, budget, params)
    fit_trial(config, eval_config(settings, budget), tune.get_context().get_trial_id(), settings.sweep_dir / "train",
              settings.workers_per_trial, settings.cpus_per_worker,
              settings.gpus_per_worker or 0.0,  # None (auto) is resolved by run_sweep before trials start
              settings.max_failures)


class BaselinesFirst(Searcher):
    """Suggests the baselines (same budget, nothing searched) first, then delegates to Optuna. Baseline results are
    never told to Optuna, so the study holds only searched trials."""

    def __init__(self, inner: Searcher, baseline_configs: list[dict[str, Any]],
                 constraints: Sequence[Constraint] = ()) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.pending = list(baseline_configs)
        self.baseline_trials: set[str] = set()
        self.constraints = list(constraints)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.pending:
            self.baseline_trials.add(trial_id)
            return self.pending.pop(0)
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.baseline_trials:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id in self.baseline_trials:
            return
        values = [(result or {}).get(m) for m in self.inner.metric]
        if result and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            # A failed trial (NaN or missing objectives): told to Optuna as failed. Passed on, Optuna's tell() would
            # refuse the values and leave the trial RUNNING in the study.
            result, error = None, True
        if result and self.constraints:
            # Optuna's samplers read each trial's constraint values (<= 0: satisfied; Trial.set_constraint);
            # Ray's OptunaSearch passes objectives only, so they go on the study's trial here, before tell().
            ot_trial = getattr(self.inner, "_ot_trials", {}).get(trial_id)
            if ot_trial is not None:
                for constraint in self.constraints:
                    ot_trial.set_constraint(str(constraint), constraint.violation(result.get(constraint.metric)))
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    # One file holds both states: Tune syncs and restores the searcher's checkpoint file by its own name only, so a
    # companion file (Optuna's state beside ours) was missing after a driver crash and the resume started over.
    def save(self, checkpoint_path: str) -> None:
        import base64

        with tempfile.TemporaryDirectory() as tmp:
            self.inner.save(str(Path(tmp) / "optuna.pkl"))
            inner = base64.b64encode((Path(tmp) / "optuna.pkl").read_bytes()).decode()
        Path(checkpoint_path).write_text(json.dumps({"pending": self.pending, "optuna": inner,
                                                     "baseline_trials": sorted(self.baseline_trials)}))

    def restore(self, checkpoint_path: str) -> None:
        import base64

        state = json.loads(Path(checkpoint_path).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "optuna.pkl").write_bytes(base64.b64decode(state["optuna"]))
            self.inner.restore(str(Path(tmp) / "optuna.pkl"))
        self.pending, self.baseline_trials = state["pending"], set(state["baseline_trials"])


class CellSearcher(Searcher):
    """The fixed trials of ``run_cells``, in order, each once its source has finished: a cell with ``"init"`` (a
    warm start: fine-tune from another cell's final model) is suggested only when that cell's trial completed, with
    ``init_from`` = that trial's final checkpoint; until then Tune is told to wait (``None``), so no trial slot sits
    idle waiting, and the other cells run meanwhile."""

    def __init__(self, cells: dict[str, dict[str, Any]], storage_dir: Path) -> None:
        super().__init__()
        self.cells = cells
        self.storage_dir = str(storage_dir)
        self.pending = list(cells)
        self.cell_of: dict[str, str] = {}  # trial id -> cell id
        self.finished: dict[str, str | None] = {}  # cell id -> its final checkpoint (None: the trial failed)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        for cell_id in self.pending:
            source = self.cells[cell_id].get("init")
            if source is None or source in self.finished:
                self.pending.remove(cell_id)
                self.cell_of[trial_id] = cell_id
                return {"cell": cell_id, "init_from": self.finished.get(source) if source else None}
        return Searcher.FINISHED if not self.pending else None

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        cell_id = self.cell_of.get(trial_id)
        if cell_id is None:
            return
        final = Path(self.storage_dir) / f"trial-{trial_id}" / "final"
        ok = not error and result is not None and not result.get("failed") and (final / "pipeline").is_dir()
        self.finished[cell_id] = str(final) if ok else None

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"pending": self.pending, "cell_of": self.cell_of,
                                                     "finished": self.finished}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.pending, self.cell_of, self.finished = state["pending"], state["cell_of"], state["finished"]


def make_searcher(settings: SweepSettings, space: SearchSpace, budget: Budget) -> BaselinesFirst:
    """Seeded Optuna multi-objective search (non-sensitive rate up, quality down, plus ``--objective``s) behind the
    baselines; with ``--constraint``s, each trial's constraint values go to Optuna (``Trial.set_constraint``), whose
    samplers then prefer the feasible region (constrained TPE, NSGA-II's constrained domination, constrained GP)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if settings.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=settings.seed)
    elif settings.sampler == "nsga2":
        # A small population so a sweep of a few dozen trials still sees several generations.
        sampler = optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=max(4, min(20, settings.trials // 3)))
    else:
        sampler = optuna.samplers.GPSampler(seed=settings.seed)
    objectives = settings.objective_directions
    optuna_search = OptunaSearch(metric=[m for m, _ in objectives], mode=[d for _, d in objectives], sampler=sampler)
    baselines = [dict({k: None for k in space.params}, method=m, lr=budget.lr)
                 for m in (BASELINE_METHODS if settings.baselines else ())]
    return BaselinesFirst(optuna_search, baselines, settings.parsed_constraints)


def _tune_param_space(space: SearchSpace) -> dict[str, Any]:
    """Search-space distributions (pudm_bench.search_space) -> Ray Tune domains (which OptunaSearch converts)."""
    from pudm_bench import search_space as ss

    out: dict[str, Any] = {}
    for name, dist in space.params.items():
        if isinstance(dist, ss.Uniform):
            out[name] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, ss.LogUniform):
            out[name] = tune.loguniform(dist.low, dist.high)
        elif isinstance(dist, ss.IntRange):
            out[name] = tune.qrandint(dist.low, dist.high, dist.step) if dist.step > 1 else tune.randint(dist.low, dist.high + 1)
        elif isinstance(dist, ss.Choice):
            out[name] = tune.choice(list(dist.values))
        else:  # the search-space loader admits only the kinds above
            raise ConfigError(f"search space {space.source}: unsupported distribution {dist!r}")
    return out


class TrackingCallback(tune.Callback):
    """Driver-side MLflow logging: one child run per trial, keyed by trial id, so a resumed trial reuses its run.

    Tune pickles callbacks with its experiment state: the tracker (an MLflow client) is created lazily, and the
    tracking URI, which may hold a password, is left out of the pickle: a restored callback uses the URI the
    resuming driver was given (``tracking.ACTIVE_URI``, set before ``fit``).
    """

    def __init__(self, mlflow_uri: str, experiment: str, sweep_name: str, parent_run_id: str,
                 searched_method: str | None = None, cells: dict[str, dict[str, Any]] | None = None,
                 kind: str = "sweep", fixed: dict[str, Any] | None = None) -> None:
        self.uri, self.experiment, self.parent, self.kind = mlflow_uri, experiment, parent_run_id, kind
        self.sweep_name, self.searched_method = sweep_name, searched_method
        self.cells = cells or {}  # fixed trials (run_cells): config {"cell": id} -> the cell's params and tags
        self.fixed = dict(fixed or {})  # the search space's fixed values: logged with every searched trial
        self._tracker = None

    @property
    def tracker(self):
        from pudm_bench.tracking import SweepTracker

        if self._tracker is None:
            self._tracker = SweepTracker(self.tracking_uri(), self.experiment)
            self._tracker.start_sweep(self.sweep_name, tags={}, params={}, resume_run_id=self.parent, kind=self.kind)
        return self._tracker

    def tracking_uri(self) -> str:
        from pudm_bench import tracking

        uri = self.uri or tracking.ACTIVE_URI
        if uri is None:
            raise RuntimeError("TrackingCallback restored from a pickle while tracking.ACTIVE_URI is unset")
        return uri

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None, "uri": None}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if "cell" in trial.config:
            cell = self.cells[trial.config["cell"]]
            self.tracker.trial_run(trial.trial_id, params=cell["params"],
                                   tags={**cell["tags"], "pudm.cell": trial.config["cell"]})
            return
        params = _trial_params(trial.config)
        role = "baseline" if params.get("method") in BASELINE_METHODS else "search"
        if role == "search":
            params = {**self.fixed, **params}
        params.setdefault("method", self.searched_method)
        self.tracker.trial_run(trial.trial_id, params=params, tags={"pudm.role": role})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        numeric = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "training_iteration", "timestamp", "time_this_iter_s", "pid")}
        step = int(result["step"]) if result.get("phase") == "train" and "step" in result else None
        self.tracker.log_trial_metrics(trial.trial_id, numeric, step)
        if result.get("failed"):
            self.tracker.end_trial(trial.trial_id, "FAILED", result["failed"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("failed"):
            return
        path = result.get("checkpoint_path")
        if path and Path(path).is_dir():
            files = [p for p in Path(path).iterdir() if p.name in ("samples.png", "eval.json", "train_config.json")]
            self.tracker.log_trial_artifacts(trial.trial_id, files)
            scores = json.loads((Path(path) / "eval.json").read_text()) if (Path(path) / "eval.json").is_file() else {}
            if scores.get("coverage_per_class"):
                self.tracker.log_trial_coverage(trial.trial_id, scores["coverage_per_class"],
                                                f"trial {trial.trial_id}: normal classes of the samples called normal "
                                                f"(TV {scores['coverage_tv']:.3f})")
        self.tracker.end_trial(trial.trial_id, "FINISHED", None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        self.tracker.end_trial(trial.trial_id, "FAILED", f"{type(error).__name__}: {error}" if error else "error")


def set_active_tracking_uri(uri: str) -> None:
    from pudm_bench import tracking

    tracking.ACTIVE_URI = uri


def _trial_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if v is not None and not k.startswith("_")}


# ----------------------------------------------------------------------------------------------------------------
# The driver


def results_frame(trials, settings: SweepSettings, space: SearchSpace):
    """One row per trial: parameters, role, status, objectives; ``excluded`` where the objectives are missing."""
    import pandas as pd

    rows = []
    for trial in trials:
        result = trial.last_result or {}
        params = _trial_params(trial.config)
        method = params.get("method") or space.method
        if method not in BASELINE_METHODS:
            params = {**space.fixed, **params}
        rate, quality = result.get(OBJECTIVE_RATE), result.get(settings.quality)
        failed = result.get("failed") or (str(trial.get_error()) if trial.status == "ERROR" else None)
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rate, quality))
        rows.append({
            "trial_id": trial.trial_id, "role": "baseline" if method in BASELINE_METHODS else "search",
            "method": method, "beta": params.get("beta"), "correction": params.get("correction"),
            "lr": params.get("lr"), "status": "FAILED" if failed else trial.status,
            OBJECTIVE_RATE: rate if finite else math.nan,
            "non_sensitive_rate_ci_low": result.get("non_sensitive_rate_ci_low"),
            "non_sensitive_rate_ci_high": result.get("non_sensitive_rate_ci_high"),
            "quality": quality if finite else math.nan, settings.quality: quality if finite else math.nan,
            **{m: _number_or_nan(result.get(m)) if finite else math.nan
               for m in dict.fromkeys(SCORE_METRICS + settings.objectives)},
            "coverage_missing_classes": result.get("coverage_missing_classes"),
            "referee_balanced_accuracy": result.get("referee_balanced_accuracy"),
            "train_seconds": result.get("train_seconds"), "eval_seconds": result.get("eval_seconds"),
            "excluded": not finite, "error": failed,
        })
    return pd.DataFrame(rows)


def _number_or_nan(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _prepare(settings: SweepSettings) -> tuple[SplitSpec, SearchSpace, Budget]:
    """The checks that cost nothing (settings, search space, budget, tracking store), before the resume check and
    ``prepare_scoring``."""
    from pudm_bench import tracking

    split = get_split(settings.split, settings.splits_dirs)
    space = load_search_space(settings.search_space)
    budget = budget_for(settings.budget, split)
    for params in [space.center()] + [{"method": m} for m in (BASELINE_METHODS if settings.baselines else ())]:
        trial_train_config(settings, split, space, budget, params)  # raises ConfigError on a bad combination
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
        from pudm_bench import latent

        latent.check_pipeline(settings.pretrained, split.image_size)  # configs only: no weights loaded here
    tracking.check_tracking_reachable(settings.mlflow_uri)
    return split, space, budget


def say(message: str) -> None:
    """One line of the driver's preparation (before Ray starts): what it is doing and what it found."""
    print(f"[prepare] {message}", flush=True)


def prepare_scoring(split: SplitSpec, evaluation: EvalConfig, data_dir: str | None, download: bool) -> str:
    """What every trial's scoring needs, made once in the driver before Ray starts, one line per step: the split
    (data present, counts), the referee (refused below the floor), the per-class referee, the FID weights and
    reference statistics when Inception is used. Returns the split's fingerprint."""
    from pudm_bench.referee import check_referee, get_class_referee, get_referee

    built = build_split(split, data_dir=data_dir, download=download)
    say(f"split {split.name}: U {len(built.unlabeled):,} images ({int(built.unlabeled_is_sensitive.sum()):,} "
        f"sensitive), S {len(built.labeled_sensitive):,}, normal test {len(built.normal_test):,}, fingerprint "
        f"{built.fingerprint}")
    inception = evaluation.fid == "on" or evaluation.quality_metric == "fid"
    if inception:  # missing weights: refused before a referee is trained (and cached)
        from pudm_bench.fid import resolve_fid_weights, statistics_cached

        weights, provenance = resolve_fid_weights(evaluation.fid_weights)
    referee = get_referee(split, data_dir=data_dir, download=download, cache_dir=evaluation.cache_dir,
                          path=evaluation.referee_path, epochs=evaluation.referee_epochs,
                          log=lambda line: say(f"{split.name} referee (normal vs sensitive): {line}"))
    check_referee(referee, evaluation.referee_floor)
    if evaluation.diversity != "off":
        get_class_referee(split, data_dir=data_dir, download=download, cache_dir=evaluation.cache_dir,
                          epochs=evaluation.referee_epochs,
                          log=lambda line: say(f"{split.name} per-class referee: {line}"))
    if inception:
        key = f"{split.name}-{built.fingerprint}-normal_test"
        cached = statistics_cached(key, weights, evaluation.fid_dims, evaluation.cache_dir)
        say(f"{split.name} FID: Inception weights {provenance}; reference statistics "
            + ("cached" if cached else f"computed by the first trial over {len(built.normal_test):,} normal test "
                                       "images, then cached"))
    return built.fingerprint


def sweep_prior(settings: SweepSettings, split: SplitSpec, budget: Budget) -> dict[str, Any]:
    """The class prior estimated from the split's U and S (``prior.estimate_prior``, seeded by --seed), once per
    sweep: kept in ``<sweep>/prior.json`` so a resumed sweep searches the same range."""
    import torch

    from pudm_bench import prior as prior_module

    path = settings.sweep_dir / "prior.json"
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


# Ray Train's controller takes each worker's reports, and sees that the workers finished, only when it polls them:
# every 2 s by default, so every trial ended ~4 s after its last report (two polls: the final result, then "done").
# Polling every 0.5 s costs the controller one small RPC per poll. Measured in docs/performance.md.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def start_ray(ray_address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Join ``ray_address`` ('auto': a running cluster) or start a local cluster; True when it has a GPU."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Intermediate reports carry training curves only; the objectives come with the final evaluation report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune snapshots its experiment state (trials, searcher) every 10 s or more by default; a trial started after
    # the last snapshot is unknown to a resumed sweep, which then runs its config again under a new trial id. Every
    # 2 s narrows that window at the cost of writing a few kB more often.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    for name, value in TRAIN_ENV.items():  # a local cluster's processes inherit these; a joined one gets them below
        os.environ.setdefault(name, value)
    if not ray.is_initialized():
        ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None
        if ray_address is None:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of our own: no token prompts
        local = ray_address is None
        # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner asks its state API
        # whether a stopped trial's controller is gone; without it, early-stopped trials keep their CPUs.
        local_options = ({"num_cpus": num_cpus, "dashboard_host": "127.0.0.1"} if local
                         else {"runtime_env": {"env_vars": {name: os.environ[name] for name in TRAIN_ENV}}})
        # Without --ray-address (or RAY_ADDRESS), "local": a cluster of our own, even when another one on this machine
        # recorded itself in /tmp/ray (ray.init() with no address would join that one).
        ray.init(address=ray_address or "local", log_to_driver=verbose > 0, **local_options)
    return ray.cluster_resources().get("GPU", 0) >= 1


def run_sweep(settings: SweepSettings, resume: bool, ray_address: str | None, num_cpus: int | None = None,
              verbose: int = 1) -> dict[str, Any]:
    split, space, budget = _prepare(settings)
    sweep_dir = settings.sweep_dir
    sweep_json = sweep_dir / "sweep.json"
    _check_resume(settings, sweep_json, resume)
    # Data, referees (refused below the floor), FID statistics: once, here, before Ray starts.
    fingerprint = prepare_scoring(split, eval_config(settings, budget), settings.data_dir, settings.download)

    from pudm_bench.pareto import apply_constraints, default_reference, hypervolume_2d, pareto_front
    from pudm_bench.referee import get_referee
    from pudm_bench.tracking import SweepTracker, redact

    evaluation = eval_config(settings, budget)
    referee = get_referee(split, data_dir=settings.data_dir, cache_dir=evaluation.cache_dir,
                          epochs=evaluation.referee_epochs)  # trained and checked by prepare_scoring: from the cache
    prior = sweep_prior(settings, split, budget) if space.needs_prior else None
    if prior is not None:
        space = space.resolve_prior(prior["prior_estimate"])

    has_gpus = start_ray(ray_address, num_cpus, verbose)
    if settings.gpus_per_worker is None:
        settings = replace(settings, gpus_per_worker=1.0 if has_gpus else 0.0)

    tracker = SweepTracker(settings.mlflow_uri, settings.experiment)
    previous = json.loads(sweep_json.read_text()) if sweep_json.is_file() else {}
    parent_id = tracker.start_sweep(
        settings.name,
        tags={"pudm.split": split.name, "pudm.dataset": split.dataset,
              "pudm.split_fingerprint": fingerprint,
              "pudm.search_space": Path(settings.search_space).name, "pudm.git_commit": _git_commit(),
              "pudm.version": __version__, "pudm.quality": settings.quality, "pudm.budget": settings.budget,
              "pudm.model": settings.model + (f"+lora{settings.lora_rank}" if settings.lora_rank else ""),
              **({"pudm.objectives": ",".join(settings.objectives)} if settings.objectives else {}),
              **({"pudm.constraints": ";".join(settings.constraints)} if settings.constraints else {})},
        params={k: v for k, v in asdict(settings).items() if k not in ("mlflow_uri",)},
        resume_run_id=previous.get("parent_run_id"),
    )
    if prior is not None:  # the estimate, its uncertainty and the range it gave the search
        tracker.log_sweep_metrics({k: v for k, v in prior.items() if isinstance(v, float)})
        tracker.log_sweep_params({"beta_range": repr(space.params["beta"])})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # The tracking URI is written redacted: --resume takes it from the command line, never from this file.
    redacted = write_sweep_state(sweep_json, settings, parent_run_id=parent_id,
                                 referee_balanced_accuracy=referee.balanced_accuracy)

    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=redacted), {"cpu": TRIAL_DRIVER_CPU})
    tune_path = sweep_dir / "tune"
    start = time.perf_counter()
    if resume and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_errored=True,
                                   param_space=_tune_param_space(space))
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_param_space(space),
            tune_config=tune.TuneConfig(
                # metric/mode stay unset here: setting them would silently make the study single-objective.
                search_alg=make_searcher(settings, space, budget),
                num_samples=settings.trials + (len(BASELINE_METHODS) if settings.baselines else 0),
                max_concurrent_trials=settings.max_concurrent,
                reuse_actors=True,  # a new trial reuses a finished one's process: ~4 s less start-up each
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=verbose,
                                      callbacks=[TrackingCallback(settings.mlflow_uri, settings.experiment, settings.name,
                                                                 parent_id, space.method, fixed=space.fixed)],
                                      # A trial whose own process died (a lost node) runs again and resumes from
                                      # its last Train checkpoint.
                                      failure_config=tune.FailureConfig(max_failures=settings.max_failures)),
        )
    set_active_tracking_uri(settings.mlflow_uri)
    grid = tuner.fit()
    wall = time.perf_counter() - start

    frame = results_frame(grid._experiment_analysis.trials, settings, space)
    # The reference point before constraints: a sweep's hypervolume does not move with the constraints it used.
    reference = default_reference(frame)
    frame = apply_constraints(frame, settings.parsed_constraints)
    # The front is that of the searched trials; baselines are shown beside it, not part of it.
    is_search = frame.role == "search"
    frame["on_front"] = False
    frame.loc[is_search, "on_front"] = pareto_front(frame[is_search], maximize=OBJECTIVE_RATE, minimize="quality",
                                                    extra=settings.objective_directions[2:])
    front_points = frame[frame.on_front]
    hv = hypervolume_2d(front_points[[OBJECTIVE_RATE, "quality"]].to_numpy(), reference)
    tracker.close_stale_trials(active_trial_ids=set())
    tracker.log_pareto(frame, settings.quality, reference, extra=settings.objective_directions[2:])
    failed = int((frame.status == "FAILED").sum())
    tracker.end_sweep("FINISHED" if failed < len(frame) else "FAILED")
    return {"frame": frame, "hypervolume": hv, "reference": reference, "wall_seconds": wall,
            "parent_run_id": parent_id, "tracking_uri": redact(settings.mlflow_uri), "experiment": settings.experiment}


def run_cell_trial(params: dict[str, Any], cells: dict[str, dict[str, Any]], storage_dir: str, workers: int,
                   cpus_per_worker: float, gpus_per_worker: float, max_failures: int) -> None:
    """One fixed trial of ``run_cells`` (a Tune function trainable): the cell's TrainConfig -> ``fit_trial``; a warm
    start takes ``init_from`` from ``CellSearcher``."""
    cell = cells[params["cell"]]
    config = TrainConfig.from_dict(cell["train_config"])
    if cell.get("init"):
        if not params.get("init_from"):
            tune.report(failed_result(f"warm start from {cell['init']}: that run did not finish"))
            return
        config = config.replace(init_from=params["init_from"])
    fit_trial(config, EvalConfig(**cell["eval_config"]),
              tune.get_context().get_trial_id(), Path(storage_dir), workers, cpus_per_worker, gpus_per_worker,
              max_failures)


def run_cells(cells: dict[str, dict[str, Any]], run_dir: Path, *, mlflow_uri: str, experiment: str, run_name: str,
              parent_run_id: str, workers_per_trial: int, cpus_per_worker: float, gpus_per_worker: float,
              max_concurrent: int, max_failures: int, resume: bool = False, verbose: int = 1) -> list[dict[str, Any]]:
    """Run a fixed set of trials (no search) through the sweep's machinery: one Tune trial per cell, each a
    ``TorchTrainer`` of ``workers_per_trial`` workers, ``max_concurrent`` at once, one MLflow child run per trial.

    ``cells``: id -> {"train_config": TrainConfig.to_dict(), "eval_config": asdict(EvalConfig), "params": what the
    child run logs as params, "tags": its tags}. Ray must be started (``start_ray``). Returns one dict per cell:
    cell, trial_id, status (TERMINATED / FAILED / ERROR), the last result and the error text.
    """
    trainable = tune.with_resources(
        tune.with_parameters(run_cell_trial, cells=cells, storage_dir=str(run_dir / "train"), workers=workers_per_trial,
                             cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                             max_failures=max_failures),
        {"cpu": TRIAL_DRIVER_CPU})
    tune_path = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=CellSearcher(cells, run_dir / "train"), num_samples=len(cells),
                                        max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=verbose,
                                      callbacks=[TrackingCallback(mlflow_uri, experiment, run_name, parent_run_id,
                                                                  cells=cells, kind="benchmark")],
                                      failure_config=tune.FailureConfig(max_failures=max_failures)))
    set_active_tracking_uri(mlflow_uri)
    grid = tuner.fit()
    out = []
    for trial in grid._experiment_analysis.trials:
        result = trial.last_result or {}
        error = result.get("failed") or (str(trial.get_error()) if trial.status == "ERROR" else None)
        out.append({"cell": trial.config["cell"], "trial_id": trial.trial_id,
                    "status": "FAILED" if result.get("failed") else trial.status, "result": result, "error": error})
    return out


def write_sweep_state(path: Path, settings: SweepSettings, **extra: Any) -> SweepSettings:
    """``sweep.json``: the settings ``--resume`` compares, plus ``extra``. The tracking URI is written redacted
    (``--resume`` takes it from the command line, never from this file); returns the settings as written, which is
    also what trials receive (they never log to MLflow themselves)."""
    from pudm_bench.tracking import redact

    redacted = replace(settings, mlflow_uri=redact(settings.mlflow_uri))
    path.write_text(json.dumps({**asdict(redacted), **extra}, indent=2))
    return redacted


def _check_resume(settings: SweepSettings, sweep_json: Path, resume: bool) -> None:
    if resume:
        if not sweep_json.is_file():
            raise ConfigError(f"--resume: no earlier sweep named {settings.name!r} in {settings.storage}; "
                              "run without --resume, or pass the --name and --storage of the sweep to resume")
        # A setting added after the sweep was started is missing from its file: it had that setting's default.
        defaults = {f.name: f.default for f in fields(SweepSettings) if f.default is not MISSING}
        saved = {**defaults, **json.loads(sweep_json.read_text())}
        current = asdict(settings)
        changed = [k for k in current if k not in SweepSettings.RESUMABLE and saved.get(k) != current[k]
                   and not (isinstance(current[k], tuple) and list(current[k]) == saved.get(k))]
        if changed:
            label = {"search_space_fingerprint": "search space content"}
            diffs = "; ".join(f"{label.get(k, k)}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise ConfigError(f"--resume: sweep {settings.name!r} was started with different settings ({diffs}); "
                              "resume with the original ones, or start a new sweep with another --name")
    elif sweep_json.is_file():
        raise ConfigError(f"a sweep named {settings.name!r} already exists in {settings.storage}; pass --resume to "
                          "continue it, or --name NEW for a new one")


# ----------------------------------------------------------------------------------------------------------------
# CLI


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
                                    if m not in (OBJECTIVE_RATE, *QUALITY_METRICS)))
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="METRIC<=X or METRIC>=X (repeatable), e.g. coverage_tv<=0.15: trials that break one are kept, "
                        "flagged and left off the Pareto front")
    p.add_argument("--no-default-constraints", dest="default_constraints", action="store_false",
                   help="do not keep trials off the front that drop a normal class or whose samples are mostly off "
                        "the real-image manifold (" + ", ".join(DEFAULT_CONSTRAINTS) + "; docs/metrics.md)")
    p.add_argument("--trials", type=int, default=6, help="searched trials (baselines come on top)")
    p.add_argument("--budget", default="cpu", choices=BUDGETS, help="training length and evaluation size")
    p.add_argument("--seed", type=int, default=0, help="seeds the Optuna sampler and every trial")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna sampler")
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


def add_execution_arguments(p: argparse.ArgumentParser, pretrained_per_dataset: bool = False) -> None:
    """Options shared by the sweep and the benchmark runner: trial resources, cluster, storage, data, tracking.

    ``pretrained_per_dataset``: --pretrained is repeatable and takes DATASET_OR_SPLIT=MODEL pairs (a benchmark
    spans datasets whose models differ, e.g. 32 px CIFAR10 and 256 px CelebA)."""
    if pretrained_per_dataset:
        p.add_argument("--pretrained", action="append", default=[], metavar="[DATASET_OR_SPLIT=]MODEL",
                       help="fine-tune from this diffusers UNet or pipeline (save_pretrained folder or hub id): MODEL "
                            "for every split, or DATASET_OR_SPLIT=MODEL (repeatable)")
    else:
        p.add_argument("--pretrained", default=None, metavar="DIR_OR_HUB_ID",
                       help="fine-tune every trial from this diffusers UNet or pipeline (save_pretrained folder or hub id)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials running at once (when resources allow)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP ranks) per trial")
    p.add_argument("--cpus-per-worker", default="auto",
                   help="CPUs reserved per Train worker; auto = 1 on a cluster, and on the local cluster the CPUs "
                        "shared out so that --max-concurrent trials fit at once")
    p.add_argument("--gpus-per-worker", default="auto", help="GPUs per Train worker; auto = 1 when the Ray cluster has GPUs, else 0")
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--ray-address", default=None, help="'auto' joins a running cluster; default starts a local one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--storage", default="pudm_runs", metavar="PATH",
                   help="run storage: checkpoints, Tune state, caches (a shared filesystem path on clusters)")
    p.add_argument("--max-failures", type=int, default=1, help="restarts of a trial whose workers failed or died, from its last checkpoint "
                   "(not for a diverged loss or bad input); see docs/reliability.md")
    p.add_argument("--referee-floor", type=float, default=0.9,
                   help="refuse to score (before any training) when the referee's held-out balanced accuracy is lower")
    p.add_argument("--referee-epochs", type=int, default=None, help="epochs to train the referee (default: the budget's)")
    p.add_argument("--data-dir", default=None, help="folder holding downloaded datasets")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")


def _positive(name: str, value: float, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name}={value} is invalid: expected a number >= {minimum}")


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    from pudm_bench.tracking import check_experiment_name, resolve_tracking_uri

    registry = load_registry(args.splits_dir)
    split_name = args.split or DEFAULT_SPLIT_FOR_DATASET[args.dataset or "digits"]
    if split_name not in registry:
        get_split(split_name, args.splits_dir)  # raises with "did you mean"
    split = registry[split_name]
    search_space = Path(args.search_space or DEFAULT_SEARCH_SPACE)
    space = load_search_space(search_space)
    _positive("--trials", args.trials)
    check_execution_arguments(args)
    cpus, gpus = _cpus_per_worker(args), _gpus_per_worker(args)
    quality = args.quality or split.quality_metric
    objectives = tuple(dict.fromkeys(check_objective(m, quality) for m in args.objective))
    constraints = list(default_constraints(split, budget_for(args.budget, split))) if args.default_constraints else []
    for text in args.constraint:
        try:
            constraints.append(str(parse_constraint(text, METRIC_DIRECTIONS)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    name = args.name or f"{split.name}-{search_space.stem}-{args.budget}-s{args.seed}"
    return SweepSettings(
        split=split.name, splits_dirs=tuple(str(Path(d).resolve()) for d in args.splits_dir),
        search_space=str(search_space.resolve()), search_space_fingerprint=space.fingerprint(),
        quality=quality, trials=args.trials, max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial, cpus_per_worker=cpus, gpus_per_worker=gpus,
        budget=args.budget, seed=args.seed, sampler=args.sampler, baselines=args.baselines,
        mlflow_uri=resolve_tracking_uri(args.mlflow_uri),
        experiment=check_experiment_name(args.experiment or f"pudm-{split.name}"),
        storage=_storage_path(args.storage),
        name=_safe_name(name), data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        download=args.download, max_failures=args.max_failures, referee_floor=args.referee_floor,
        referee_epochs=args.referee_epochs, pretrained=pretrained_source(args.pretrained),
        objectives=objectives, constraints=tuple(dict.fromkeys(constraints)), default_constraints=args.default_constraints,
        model=args.model, lora_rank=args.lora_rank,
        guidance_scale=args.guidance_scale, gradient_checkpointing=args.gradient_checkpointing,
    )


def default_constraints(split: SplitSpec, budget: Budget) -> tuple[str, ...]:
    """``pareto.DEFAULT_CONSTRAINTS`` that this split and budget can measure: normal-class coverage needs two or more
    normal classes and a budget that scores diversity; realism is scored on every budget."""
    measured = []
    for text in DEFAULT_CONSTRAINTS:
        metric = parse_constraint(text, METRIC_DIRECTIONS).metric
        if metric.startswith("coverage_") and (len(split.normal_classes) < 2 or budget.diversity == "off"):
            continue
        measured.append(text)
    return tuple(measured)


def check_objective(metric: str, quality: str) -> str:
    """An ``--objective``: a known metric that is not already one of the two fixed objectives."""
    from pudm_bench.errors import unknown_name

    if metric not in METRIC_DIRECTIONS:
        raise unknown_name("--objective", metric, list(METRIC_DIRECTIONS))
    if metric in (OBJECTIVE_RATE, quality):
        raise ConfigError(f"--objective {metric}: it is already an objective of every sweep (non_sensitive_rate and "
                          f"the quality, here {quality}); name another metric")
    return metric


def check_execution_arguments(args: argparse.Namespace) -> None:
    """Range checks of the options ``add_execution_arguments`` adds (one line naming the bad option)."""
    for name, minimum in (("max_concurrent", 1), ("workers_per_trial", 1), ("max_failures", 0)):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name), minimum)
    if args.referee_epochs is not None:
        _positive("--referee-epochs", args.referee_epochs)
    if not 0.0 <= args.referee_floor <= 1.0:
        raise ConfigError(f"--referee-floor={args.referee_floor} is invalid: expected a number in [0, 1]")


def pretrained_source(value: str | None) -> str | None:
    """A local --pretrained folder as an absolute path (trials run elsewhere); a hub id unchanged."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return str(path.resolve())
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        raise ConfigError(f"--pretrained={value!r}: no such folder; give a folder written by save_pretrained "
                          "(a UNet, a DDPMPipeline or a StableDiffusionPipeline) or a hub id such as google/ddpm-cifar10-32")
    return value


def _gpus_per_worker(args: argparse.Namespace) -> float | None:
    if args.gpus_per_worker == "auto":
        return None
    try:
        gpus = float(args.gpus_per_worker)
    except ValueError:
        raise ConfigError(f"--gpus-per-worker={args.gpus_per_worker!r} is invalid: expected auto or a number >= 0") from None
    if gpus < 0:
        raise ConfigError(f"--gpus-per-worker={gpus} is invalid: expected auto or a number >= 0")
    return gpus


def _storage_path(storage: str) -> str:
    """An absolute filesystem path (Tune and Train change the working directory). Object-store URIs are refused:
    the driver reads each trial's final artifacts from this folder to log them to MLflow."""
    if "://" in storage:
        raise ConfigError(f"--storage={storage!r}: URIs are not supported; give a filesystem path (on a cluster, a "
                          "shared mount every node sees at the same path)")
    return str(Path(storage).expanduser().resolve())


TRIAL_DRIVER_CPU = 0.01  # the Tune trial function only waits on its TorchTrainer (0 CPUs is refused by Tune)


def _cpus_per_worker(args: argparse.Namespace) -> float:
    """auto: on the local cluster share the CPUs so that --max-concurrent trials fit at once next to their trial
    functions' token CPU (with 1 CPU per worker on 2 cores, 2 x (1 + 0.01) > 2 and trials would run one by one);
    on a cluster, 1."""
    if args.cpus_per_worker != "auto":
        try:
            value = float(args.cpus_per_worker)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(f"--cpus-per-worker={args.cpus_per_worker!r} is invalid: expected auto or a number > 0")
        return value
    if args.ray_address is not None:
        return 1.0
    total = args.num_cpus or os.cpu_count() or 1
    share = (total - TRIAL_DRIVER_CPU * args.max_concurrent) / (args.max_concurrent * args.workers_per_trial)
    return max(0.01, min(1.0, math.floor(share * 100) / 100))


def _safe_name(name: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", name) or ".." in name:
        raise ConfigError(f"--name={name!r} is invalid: use letters, digits, '_', '-' or '.', no path separators")
    return name


def print_summary(outcome: dict[str, Any], settings: SweepSettings) -> None:
    frame = outcome["frame"]
    cols = ["trial_id", "role", "method", "beta", "correction", "lr", "status", OBJECTIVE_RATE,
            "non_sensitive_rate_ci_low", "non_sensitive_rate_ci_high", settings.quality]
    # Diversity columns that this split has (coverage needs two normal classes), then any further objective.
    cols += [c for c in dict.fromkeys(("realistic_non_sensitive_rate", "realistic_share", "coverage_tv",
                                       "coverage_missing_classes", "precision", "recall") + settings.objectives)
             if c in frame.columns and frame[c].notna().any() and c not in cols]
    if settings.constraints:
        cols.append("violations")
    front = frame[frame.on_front & (frame.role == "search")].sort_values(OBJECTIVE_RATE, ascending=False)
    baselines = frame[frame.role == "baseline"]
    failed = frame[frame.status == "FAILED"]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        directions = ", ".join(f"{m} {'up' if d == 'max' else 'down'}" for m, d in settings.objective_directions)
        print(f"\nPareto front ({directions}) of {len(frame[frame.role == 'search'])} searched trials"
              + (f", constraints {', '.join(settings.constraints)}:" if settings.constraints else ":"))
        print(front[cols].to_string(index=False) if len(front) else "  (empty: no searched trial finished)")
        if len(baselines):
            print("\nBaselines (same budget):")
            print(baselines[cols].to_string(index=False))
        infeasible = frame[~frame["feasible"] & (frame.status != "FAILED")] if "feasible" in frame.columns else frame[:0]
        if len(infeasible):
            print("\nTrials that break a constraint (kept, not on the front):")
            print(infeasible[cols].to_string(index=False))
        if len(failed):
            print("\nFailed trials:")
            print(failed[["trial_id", "method", "beta", "lr", "error"]].to_string(index=False))
    ref = outcome["reference"]
    print(f"\nHypervolume of the searched front: {outcome['hypervolume']:.4g} (reference: {OBJECTIVE_RATE}="
          f"{ref[0]:.3g}, {settings.quality}={ref[1]:.4g})")
    print(f"Wall time: {outcome['wall_seconds']:.1f} s")
    print(f"MLflow: {outcome['tracking_uri']}  experiment {outcome['experiment']!r}  parent run {outcome['parent_run_id']}")
    print(f"  open it: mlflow ui --backend-store-uri {outcome['tracking_uri']} --host 127.0.0.1")
    print(f"Sweep storage: {settings.sweep_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.dry_run:
            split = get_split(settings.split, settings.splits_dirs)
            budget = budget_for(settings.budget, split)
            space = load_search_space(settings.search_space)
            from pudm_bench.tracking import redact

            print(json.dumps({
                "settings": {**asdict(settings), "mlflow_uri": redact(settings.mlflow_uri)},
                "budget": asdict(budget),
                "search_space": {k: repr(v) for k, v in space.params.items()},
                "trials": {"searched": settings.trials,
                           "baselines": list(BASELINE_METHODS) if settings.baselines else []},
                "resources_per_trial": {"train_workers": settings.workers_per_trial,
                                        "cpus_per_worker": settings.cpus_per_worker,
                                        "gpus_per_worker": settings.gpus_per_worker},
                "results": {"sweep_dir": str(settings.sweep_dir), "mlflow_uri": redact(settings.mlflow_uri),
                            "experiment": settings.experiment},
            }, indent=2, default=str))
            return 0
        outcome = run_sweep(settings, resume=args.resume, ray_address=args.ray_address, num_cpus=args.num_cpus,
                            verbose=0 if args.quiet else 1)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(outcome, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
