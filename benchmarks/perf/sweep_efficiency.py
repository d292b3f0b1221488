"""Cheaper sweeps, measured side by side (docs/performance.md, "Sweep efficiency"): FIFO against multi-objective
successive halving (``--scheduler moasha``), warm-started trials (``--warm-start baseline``) and both, several
sweep seeds each, with every arm's total trial-steps, wall time and hypervolume against ONE reference point for all.

Arms (``--trials N``, default 6; the two baselines run in every arm):

- ``fifo``: N trials, each trains its whole budget; scored at ``--rungs`` too (never stopped there), so the rank
  correlation of rung scores with final scores can be measured on unselected trials (the rung scoring is part of
  its wall time: two small evaluations per trial);
- ``moasha``: N trials with successive halving; ``moasha-2x``: 2N trials with successive halving;
- ``warm``: N trials fine-tuning the unsupervised baseline for a third of the budget;
- ``moasha-warm``: 2N trials, both.

Every (arm, seed) is a separate sweep in its own storage and MLflow store under ``--out``; a finished one is kept
in ``<out>/parts/<arm>-s<seed>.json``, so ``--resume`` (the default when the part exists) goes on where a stopped run
left off. Trial-steps: the steps each trial trained (a stopped trial's rung step).

    python benchmarks/perf/sweep_efficiency.py [--split digits_even] [--seeds 3] [--trials 6] [--out DIR]
        [--arms fifo,moasha-2x,...] [-- extra sweep args, e.g. --data-dir ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from pudm_bench.search.pareto import RATE, default_reference, hypervolume_2d  # noqa: E402

RUNGS = "1/9,1/3"
ARMS = {
    "fifo": lambda n: ["--trials", str(n), "--rungs", RUNGS],
    "moasha": lambda n: ["--trials", str(n), "--scheduler", "moasha", "--rungs", RUNGS],
    "moasha-2x": lambda n: ["--trials", str(2 * n), "--scheduler", "moasha", "--rungs", RUNGS],
    "warm": lambda n: ["--trials", str(n), "--warm-start", "baseline"],
    "moasha-warm": lambda n: ["--trials", str(2 * n), "--scheduler", "moasha", "--rungs", RUNGS,
                              "--warm-start", "baseline"],
}


def run_part(arm: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """One sweep of ``arm`` with ``seed``; returns its trials (steps trained, objectives, rung scores) and wall."""
    out = Path(args.out).resolve()
    part = out / "parts" / f"{arm}-s{seed}.json"
    if part.is_file():
        return json.loads(part.read_text())
    name, uri = f"{arm}-s{seed}", f"sqlite:///{out / 'mlflow' / f'{arm}-s{seed}.db'}"
    (out / "mlflow").mkdir(parents=True, exist_ok=True)
    storage = out / "runs"
    resume = ["--resume"] if (storage / name / "sweep.json").is_file() else []
    command = [sys.executable, "-m", "pudm_bench.sweep", "--split", args.split, "--seed", str(seed), "--name", name,
               "--storage", str(storage), "--mlflow-uri", uri, "--quiet", *ARMS[arm](args.trials), *extra, *resume]
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: {' '.join(command[3:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
    result = {"arm": arm, "seed": seed, "wall_s": wall, "resumed": bool(resume), "trials": read_trials(uri, name, out)}
    # A sweep stopped with Ctrl+C ends gracefully (exit status 0) with fewer trials: not a finished part.
    flags = ARMS[arm](args.trials)
    wanted = int(flags[flags.index("--trials") + 1])
    searched = sum(t["role"] == "search" and t["status"] in ("TERMINATED", "STOPPED") for t in result["trials"])
    if searched < wanted:
        raise SystemExit(f"{arm} seed {seed}: {searched} of {wanted} searched trials finished (stopped?); "
                         "run again to resume it")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(json.dumps(result, indent=1, default=str))
    return result


def read_trials(uri: str, sweep: str, out: Path) -> list[dict]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`pudm.kind` = 'sweep' and tags.`pudm.sweep_name` = '{sweep}'")[0]
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "all_trials.csv", str(out / "tmp")))
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_id = {c.data.tags["pudm.trial_id"]: c for c in children}
    rows = []
    for row in table.to_dict("records"):
        child = by_id[row["trial_id"]]
        stopped = child.data.tags.get("pudm.stopped_at_step")
        steps = int(stopped) if stopped else max((int(m.step) for m in client.get_metric_history(child.info.run_id, "loss")),
                                                 default=0)
        rungs = {}
        for key in child.data.metrics:
            if key.startswith("rung_"):
                rungs[key] = {int(m.step): m.value for m in client.get_metric_history(child.info.run_id, key)}
        rows.append({**{k: row.get(k) for k in ("trial_id", "role", "status", RATE, "quality", "feasible", "excluded")},
                     "steps": steps, "stopped_at_step": int(stopped) if stopped else None, "rungs": rungs,
                     "final": {k: v for k, v in child.data.metrics.items() if not k.startswith("rung_")}})
    return rows


def summarize_parts(parts: list[dict]) -> tuple[list[dict], tuple[float, float]]:
    """Per arm: mean (and min..max) over seeds of trials, trial-steps, wall and hypervolume against one reference,
    computed over every finished trial of every part (``pareto.default_reference``)."""
    frames = [pd.DataFrame(p["trials"]) for p in parts]
    everything = pd.concat(frames, ignore_index=True)
    everything["excluded"] = everything["excluded"].fillna(True).astype(bool)
    reference = default_reference(everything)
    per_part = []
    for part, frame in zip(parts, frames):
        usable = frame[(frame.role == "search") & ~frame.excluded.fillna(True).astype(bool)
                       & frame.feasible.fillna(False).astype(bool)]
        per_part.append({"arm": part["arm"], "seed": part["seed"], "wall_s": part["wall_s"],
                         "trials": int((frame.role == "search").sum()),
                         "stopped": int((frame.status == "STOPPED").sum()),
                         "trial_steps": int(frame.steps.sum()),
                         "searched_steps": int(frame[frame.role == "search"].steps.sum()),
                         "hypervolume": hypervolume_2d(usable[[RATE, "quality"]].to_numpy(dtype=float), reference)})
    table = pd.DataFrame(per_part)
    rows = []
    for arm, group in table.groupby("arm", sort=False):
        rows.append({"arm": arm, "seeds": len(group), "trials": group.trials.mean(), "stopped": group.stopped.mean(),
                     "trial_steps": group.trial_steps.mean(), "searched_steps": group.searched_steps.mean(),
                     "wall_min": group.wall_s.mean() / 60, "hypervolume": group.hypervolume.mean(),
                     "hv_min": group.hypervolume.min(), "hv_max": group.hypervolume.max()})
    return rows, reference


def rung_correlations(parts: list[dict]) -> list[dict]:
    """Spearman rank correlation, over the FIFO arm's searched trials (all seeds), of each objective's score at each
    rung with its final score: does an early rung order trials as the end does?"""
    from scipy.stats import spearmanr

    trials = [t for p in parts if p["arm"] == "fifo" for t in p["trials"] if t["role"] == "search" and t["rungs"]]
    out = []
    metrics = sorted({k[len("rung_"):] for t in trials for k in t["rungs"]} & {RATE, "fd_per_class", "fid",
                                                                             "fd_classifier", "recall"})
    for metric in metrics:
        # By step as a number: a part read back from JSON has its steps as strings ("200" sorts before "67").
        curves = [{int(s): v for s, v in t["rungs"].get(f"rung_{metric}", {}).items()} for t in trials]
        steps = sorted({s for curve in curves for s in curve})
        for rung, step in enumerate(steps):
            pairs = [(curve[step], t["final"].get(metric)) for t, curve in zip(trials, curves)
                     if step in curve and t["final"].get(metric) is not None]
            pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            if len(pairs) >= 3:
                rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
                out.append({"metric": metric, "rung": rung, "step": step, "trials": len(pairs), "spearman": rho})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="digits_even")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=6, help="N: searched trials of fifo, moasha and warm (2N for *-2x)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sweep_efficiency"))
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; allowed: {', '.join(ARMS)}")
    # Seed-major: a run stopped part-way has measured every arm on the first seeds, not one arm on all of them.
    parts = [run_part(arm, seed, args, extra) for seed in range(args.seeds) for arm in arms]
    rows, reference = summarize_parts(parts)
    print_table(f"Sweep efficiency on {args.split} ({args.seeds} seeds; hypervolume reference rate={reference[0]:.3g}, "
                f"quality={reference[1]:.4g})", rows, list(rows[0]))
    correlations = rung_correlations(parts)
    if correlations:
        print_table("Rank correlation of rung scores with final scores (fifo arm)", correlations, list(correlations[0]))
    write_json(args.out, "sweep_efficiency", {"split": args.split, "reference": reference, "arms": rows,
                                              "rung_correlations": correlations, "extra_args": extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
