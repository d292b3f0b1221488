"""One Ray Train worker of a trial: restore the latest checkpoint, train (``training``), score on rank 0
(``evaluate``), report every rank's result. Everything Ray-specific about a worker is here; the training loop and
the scoring it calls import no Ray."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.errors import PudmError
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.search.pareto import QUALITY, RATE
from pudm_bench.search.rungs import RUNG_PREFIX
from pudm_bench.training.config import TrainConfig


def failed_result(reason: str) -> dict[str, Any]:
    """The final report of a trial that failed: NaN objectives and the reason (logged to MLflow and the summary)."""
    return {RATE: math.nan, QUALITY: math.nan, "phase": "final", "failed": reason}


def _quiet_train_reports() -> None:
    """Ray 2.60's Train worker logs every ``report`` at INFO ("Reporting training result N: ...") through a logger
    named after its source file, which ``LoggingConfig(log_level=...)`` does not reach; one line per training log
    step would flood the sweep's output."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: restore the latest checkpoint, train, evaluate on rank 0, report (every rank).

    ``loop_config["probe"]`` (``--scheduler moasha``): {"steps": the rung steps, "eval_config": the rung's
    EvalConfig}; at each rung step rank 0 scores the model on that smaller sample set and reports the scores as
    ``rung_<metric>`` with ``phase: "rung"``."""
    import torch

    from pudm_bench.prior.estimate import prior_step
    from pudm_bench.scoring.evaluate import evaluate_model
    from pudm_bench.training.loop import Callback, save_pipeline, train

    _quiet_train_reports()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, round(loop_config["cpus_per_worker"])))
    config = TrainConfig.from_dict(loop_config["train_config"])
    evaluation = EvalConfig(**loop_config["eval_config"])
    split = build_split(get_split(config.split, config.splits_dirs, config.unlabeled_sensitive_share),
                        seed=config.split_seed, data_dir=config.data_dir, download=config.download)
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

        def on_probe(self, step: int, generator) -> None:
            # A rung of successive halving: rank 0 scores a small sample set as the final evaluation would (same
            # referees, metrics and sampler, fewer samples); every rank reports (a report is a barrier), and Tune
            # sees rank 0's scores, which its scheduler may answer by stopping the trial here.
            report = {"phase": "rung", "rung": rung_steps.index(step), "step": float(step)}
            if rank == 0:
                metrics = evaluate_model(generator, split, rung_eval, data_dir=config.data_dir,
                                         download=config.download)
                report.update({f"{RUNG_PREFIX}{k}": v for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})
            ray.train.report(report)

    probe = loop_config.get("probe") or {}
    rung_steps = list(probe.get("steps", ()))
    rung_eval = EvalConfig(**probe["eval_config"]) if rung_steps else None
    prepare = ray.train.torch.prepare_model if context.get_world_size() > 1 else None
    try:
        result = train(config, split, run_dir, callbacks=[Reporter()], prepare_model=prepare, prior_step=prior_step,
                       probe_steps=rung_steps)
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
