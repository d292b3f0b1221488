"""Where a sweep trial's time goes before and after its model compute (docs/performance.md, item 5).

Runs ``--trials`` short digits trials one after another through Tune and Ray Train the way the sweep does (a Tune
function trainable per trial, reused between trials, that calls ``TorchTrainer.fit()`` on ``orchestration.worker.train_worker``),
and stamps wall-clock times from every process involved into one file:

- trial start: Tune starts (or reuses) the trial's process;
- fit() -> train function: Ray Train's controller, placement group, worker process and torch set-up;
- train function -> first step: the worker's own imports (torch, diffusers) and the split;
- training, evaluation, final checkpoint (from the trial's own ``train_seconds`` / ``eval_seconds``);
- train function end -> fit() returns: the controller noticing the workers finished and shutting them down.

    python benchmarks/perf/trial_timeline.py [--trials 3] [--steps 60]

Not part of run_all.py (it repeats what sweep_overhead.py measures end to end, phase by phase).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402


def stamp(path: str, name: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"name": name, "t": time.time()}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()

    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pudm_bench.data.splits import get_split
    from pudm_bench.orchestration import cluster, settings, worker
    from pudm_bench.scoring.evaluate import EvalConfig
    from pudm_bench.scoring.referee import get_referee
    from pudm_bench.training.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="pudm-timeline-"))
    stamps = str(tmp / "stamps.jsonl")
    get_referee(get_split("digits_even"))  # cached before the clock matters
    cluster.start_ray(None, None, 0)
    config = TrainConfig(split="digits_even", method="pu", beta=0.1, steps=args.steps, log_every=20,
                         checkpoint_every=args.steps // 2).to_dict()
    evaluation = asdict(EvalConfig(num_samples=50, sample_steps=25, sample_batch_size=50))
    cpus = settings.cpus_per_worker(argparse.Namespace(cpus_per_worker="auto", ray_address=None, num_cpus=None,
                                                     max_concurrent=1, workers_per_trial=1))

    def train_function(loop_config: dict) -> None:
        stamp(loop_config["stamps"], "function_start")
        worker.train_worker(loop_config)
        stamp(loop_config["stamps"], "function_end")

    def trial(params: dict) -> None:
        stamp(stamps, "trial_start")
        trainer = TorchTrainer(
            train_function,
            train_loop_config={"train_config": config, "eval_config": evaluation, "stamps": stamps,
                               "trial_id": tune.get_context().get_trial_id(), "cpus_per_worker": cpus},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
            run_config=ray.train.RunConfig(name=f"trial-{params['i']}", storage_path=str(tmp / "train"),
                                           callbacks=[TuneReportCallback()],
                                           logging_config=ray.train.LoggingConfig(log_level="WARNING")))
        stamp(stamps, "fit_call")
        trainer.fit()
        stamp(stamps, "fit_return")

    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": settings.TRIAL_DRIVER_CPU}),
                       param_space={"i": tune.grid_search(list(range(args.trials)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name="tune", storage_path=str(tmp), verbose=0))
    stamp(stamps, "tune_fit")
    grid = tuner.fit()
    stamp(stamps, "tune_done")
    results = sorted((r.metrics for r in grid), key=lambda m: m.get("timestamp", 0))

    events = [json.loads(line) for line in Path(stamps).read_text().splitlines()]
    rows, previous_end = [], next(e["t"] for e in events if e["name"] == "tune_fit")
    for i in range(args.trials):
        at = {name: [e["t"] for e in events if e["name"] == name][i]
              for name in ("trial_start", "fit_call", "function_start", "function_end", "fit_return")}
        metrics = results[i] if i < len(results) else {}
        train_s, eval_s = metrics.get("train_seconds", float("nan")), metrics.get("eval_seconds", float("nan"))
        inside = at["function_end"] - at["function_start"]
        rows.append({"trial": i, "before_trial_start_s": at["trial_start"] - previous_end,
                     "fit_to_function_s": at["function_start"] - at["fit_call"],
                     "function_overhead_s": inside - train_s - eval_s, "train_s": train_s, "eval_s": eval_s,
                     "function_end_to_fit_return_s": at["fit_return"] - at["function_end"]})
        previous_end = at["fit_return"]
    print_table("One trial, phase by phase (sequential trials; function_overhead = imports, split, checkpoints, "
                "reports inside the train function)", rows, list(rows[0]))
    summary = {k: statistics.median(r[k] for r in rows[1:] or rows) for k in rows[0] if k != "trial"}
    write_json(args.out, "trial_timeline", {"args": vars(args), "rows": rows, "median_after_first": summary,
                                            "env": {k: os.environ.get(k) for k in cluster.TRAIN_ENV}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
