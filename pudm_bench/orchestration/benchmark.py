"""The benchmark driver: a suite's cells (``plan.plan``) run through the sweep's machinery (``runner.run_cells``:
one Tune trial per run, Ray Train workers inside, several at once), then the paper-style tables (``tables``) and
one MLflow parent run of kind "benchmark" with a child run per training run."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pudm_bench.orchestration.cluster import start_ray
from pudm_bench.orchestration.placement import check_batch, cluster_shape, plan_placement
from pudm_bench.orchestration.plan import plan
from pudm_bench.orchestration.preflight import preflight, prepare_scoring, say
from pudm_bench.orchestration.runner import run_cells, start_parent_run
from pudm_bench.orchestration.settings import BenchmarkSettings
from pudm_bench.results.tables import markdown_table, runs_frame, summary_table, table_metrics, write_sample_grids
from pudm_bench.scoring.evaluate import EvalConfig
from pudm_bench.search.budgets import budget_for, describe
from pudm_bench.search.pareto import RATE
from pudm_bench.search.suites import load_suite
from pudm_bench.tracking import redact


def run_benchmark(settings: BenchmarkSettings, resume: bool = False, ray_address: str | None = None,
                  num_cpus: int | None = None, verbose: int = 1) -> dict[str, Any]:
    suite = load_suite(settings.suite_file)
    the_plan = plan(settings, suite)
    # Everything that can fail on bad input, before Ray starts: the resume check, storage and tracking store, then
    # data present with the right counts, referees strong enough, FID weights where a split scores with FID.
    preflight(settings, resume)
    for cell_id, cell in the_plan.cells.items():
        check_batch(cell["train_config"]["batch_size"], settings.workers_per_trial, cell_id)
    placement = plan_placement(settings, cluster_shape(ray_address, num_cpus))  # refused here if it can never run
    for split in the_plan.splits.values():
        runs = sum(1 for c in the_plan.cells.values() if c["params"]["split"] == split.name)
        say(f"{split.name}: " + describe(budget_for(settings.budget, split), split, runs, settings.budget_choice,
                                         placement.gpus_per_worker))
    if placement.warning:
        say(f"warning: {placement.warning}")
    settings = replace(settings, gpus_per_worker=placement.gpus_per_worker, placement_timeout=placement.timeout_s)
    fingerprints = {}
    for split in the_plan.splits.values():
        evaluation = EvalConfig(**next(c["eval_config"] for c in the_plan.cells.values()
                                       if c["params"]["split"] == split.name))
        fingerprints[split.name] = prepare_scoring(split, evaluation, settings)

    start_ray(ray_address, num_cpus, verbose)
    gpus = placement.gpus_per_worker
    tracker, parent_id, _ = start_parent_run(
        settings,
        tags={"pudm.suite": suite.name, "pudm.splits": ",".join(suite.splits),
              "pudm.methods": ",".join(m.label for m in suite.methods), "pudm.seeds": settings.seeds,
              "pudm.budget": settings.budget, **{f"pudm.split_fingerprint.{k}": v for k, v in fingerprints.items()}})

    start = time.perf_counter()
    outcomes = run_cells(the_plan.cells, settings, parent_run_id=parent_id, gpus_per_worker=gpus, resume=resume,
                         verbose=verbose)
    wall = time.perf_counter() - start

    run_dir = settings.run_dir
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
            "parent_run_id": parent_id, "tracking_uri": redact(settings.mlflow_uri),
            "experiment": settings.experiment, "run_dir": run_dir, "grids": grids}
