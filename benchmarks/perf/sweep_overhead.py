"""Sweep overhead (docs/performance.md, item 5): a sweep's wall time against its trials' model compute.

Runs ``python -m pudm_bench.sweep`` (by default a short one: 2 searched trials, no baselines, the cpu budget, 2 at
a time) in a fresh storage and tracking store, then reads every trial's ``train_seconds`` and ``eval_seconds``
and its MLflow child run's start and end back from the store:

- ideal wall = sum over trials of (train + eval) / max concurrent trials (perfect packing, zero overhead);
- overhead share = 1 - ideal / measured wall (the command's, from start to exit: Python start-up, Ray start-up,
  referee, trial launch, checkpoints, MLflow I/O);
- per trial: child-run duration - train - eval (Ray Train controller and worker start-up, reporting, checkpoints);
- slot time per trial: parent-run wall x max concurrent / trials, and the same minus train + eval (what a trial
  costs beyond its compute, including the gap before the next trial starts).

    python benchmarks/perf/sweep_overhead.py [-- extra sweep args, e.g. --trials 6 --baselines]
    python benchmarks/perf/sweep_overhead.py --mlflow-uri sqlite:///$PWD/mlflow.db --sweep NAME --wall SECONDS
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

DEFAULT_SWEEP = ["--trials", "2", "--no-baselines", "--budget", "cpu", "--max-concurrent", "2"]


def analyse(uri: str, sweep: str, wall: float, max_concurrent: int) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 f"tags.`pudm.kind` = 'sweep' and tags.`pudm.sweep_name` = '{sweep}'")
    if not parents:
        raise SystemExit(f"no sweep {sweep!r} in {uri}")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = []
    for child in children:
        m = child.data.metrics
        duration = (child.info.end_time - child.info.start_time) / 1e3
        train, evaluation = m.get("train_seconds", 0.0), m.get("eval_seconds", 0.0)
        trials.append({"trial": child.data.tags.get("pudm.trial_id"), "run_s": duration, "train_s": train,
                       "eval_s": evaluation, "trial_overhead_s": duration - train - evaluation})
    compute = sum(t["train_s"] + t["eval_s"] for t in trials)
    ideal = compute / max_concurrent
    parent_wall = (parent.info.end_time - parent.info.start_time) / 1e3
    return {"sweep": sweep, "trials": trials, "n_trials": len(trials), "command_wall_s": wall,
            "parent_run_wall_s": parent_wall, "sum_train_eval_s": compute, "ideal_wall_s": ideal,
            "overhead_share": 1 - ideal / wall if wall else None,
            "median_trial_overhead_s": statistics.median(t["trial_overhead_s"] for t in trials) if trials else None,
            # Slot time per trial: how long each of the max_concurrent slots was held per trial it ran, from the
            # parent run's start (Ray up) to its end; minus mean train+eval, what a trial costs beyond its compute.
            "slot_s_per_trial": parent_wall * max_concurrent / len(trials) if trials else None,
            "slot_overhead_s_per_trial": (parent_wall * max_concurrent - compute) / len(trials) if trials else None,
            "before_first_trial_s": wall - parent_wall if wall else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mlflow-uri", default=None, help="analyse an existing sweep in this store (with --sweep, --wall)")
    p.add_argument("--sweep", default=None)
    p.add_argument("--wall", type=float, default=0.0, help="the existing sweep's measured wall time (seconds)")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]

    if args.mlflow_uri:
        result = analyse(args.mlflow_uri, args.sweep, args.wall, args.max_concurrent)
    else:
        with tempfile.TemporaryDirectory(prefix="pudm-perf-sweep-") as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            sweep_args = (extra or DEFAULT_SWEEP) + ["--name", "perf", "--storage", f"{tmp}/runs", "--mlflow-uri", uri,
                                                     "--quiet"]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pudm_bench.sweep", *sweep_args], cwd=tmp,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            concurrent = int(sweep_args[sweep_args.index("--max-concurrent") + 1]) if "--max-concurrent" in sweep_args else 2
            result = analyse(uri, "perf", wall, concurrent)
            result["sweep_args"] = sweep_args[:-6]
    print_table("Trials", result["trials"], ["trial", "run_s", "train_s", "eval_s", "trial_overhead_s"])
    summary = {k: v for k, v in result.items() if k not in ("trials", "sweep_args")}
    print_table("Sweep overhead (target: overhead_share <= 0.15 on 2 cores)", [summary], list(summary))
    write_json(args.out, "sweep_overhead", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
