"""``python -m pudm_bench.benchmark`` (``pudm-benchmark``): the paper's comparison tables.

A suite (``pudm_bench.suites``: one YAML file in ``benchmarks/suites/``, or a user folder given with
``--suites-dir``) names splits and methods; the runner trains every method on every split K times (training seeds
0..K-1; the split itself is fixed by ``split_seed`` 0), scores each run like a sweep trial (non-sensitive rate and
the split's quality metric), and writes a table in the form of the paper's Table 2 (arXiv:2503.03789): mean +-
sample standard deviation (ddof 1) over seeds, one row per method, one column pair per split
(``orchestration.benchmark.run_benchmark``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from pudm_bench.cli.common import add_execution_arguments, run_command
from pudm_bench.errors import ArgumentParser, ConfigError
from pudm_bench.orchestration.plan import plan
from pudm_bench.orchestration.settings import BenchmarkSettings, pretrained_source, resolve_budget, resolve_execution
from pudm_bench.results.tables import markdown_table, read_runs, summary_table
from pudm_bench.search.budgets import BUDGET_CHOICES
from pudm_bench.search.pareto import RATE
from pudm_bench.search.suites import Plan, Suite, load_suite, suite_files


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pudm_bench.benchmark",
        description="Train every method of a suite on every split of it, K seeds each (Ray Tune trials with Ray "
                    "Train workers), and write the paper-style table (mean ± std over seeds) as Markdown and CSV, "
                    "also logged to MLflow under one parent run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="digits", help="suite name (benchmarks/suites/*.yaml or --suites-dir) or a YAML path")
    p.add_argument("--suites-dir", action="append", default=[], metavar="DIR", help="extra folder of suite YAMLs (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per split and method (default: the suite's)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds FIRST..FIRST+SEEDS-1: a long benchmark in parts (e.g. --seeds 1 --first-seed 2), "
                        "combined with --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="RUNS_CSV",
                   help="no training: the table of the suite from these parts' benchmark_runs.csv files (written "
                        "with --seeds covering every part, e.g. --seeds 3), into <storage>/<name>/")
    p.add_argument("--budget", default=None, choices=BUDGET_CHOICES,
                   help="training length and evaluation size (default: the suite's); auto: cpu on a cluster "
                        "without GPUs, paper on one with GPUs")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs (repeatable)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: pudm-benchmark-<suite>)")
    p.add_argument("--name", default=None, help="benchmark name (default: <suite>-<budget>-x<seeds>)")
    add_execution_arguments(p, pretrained_per_dataset=True)
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--resume", action="store_true", help="continue the benchmark of the same --name in --storage")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs, resources and locations, then exit")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    return p


def _pretrained_pairs(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, sep, model = value.partition("=")
        if not sep:
            key, model = "*", value
        if not key or not model:
            raise ConfigError(f"--pretrained={value!r} is invalid: expected MODEL or DATASET_OR_SPLIT=MODEL")
        pairs.append((key, pretrained_source(model)))
    return tuple(pairs)


def settings_from_args(args: argparse.Namespace, suite: Suite) -> BenchmarkSettings:
    seeds = args.seeds if args.seeds is not None else suite.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} is invalid: expected an integer >= 1")
    budget, budget_choice = resolve_budget(args.budget or suite.budget, args)
    if args.first_seed < 0:
        raise ConfigError(f"--first-seed={args.first_seed} is invalid: expected an integer >= 0")
    part = f"-from{args.first_seed}" if args.first_seed else ""
    execution = resolve_execution(args, name=args.name or f"{suite.name}-{budget}-x{seeds}{part}",
                                  experiment=args.experiment or f"pudm-benchmark-{suite.name}", budget=budget,
                                  budget_choice=budget_choice)
    return BenchmarkSettings(**execution, suite=suite.name, suite_file=str(Path(suite.source).resolve()), seeds=seeds,
                             pretrained=_pretrained_pairs(args.pretrained), first_seed=args.first_seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.list:
        for name, path in suite_files(args.suites_dir).items():
            suite = load_suite(str(path))
            print(f"{name:16s} {len(suite.splits)} split(s) x {len(suite.methods)} method(s), {suite.seeds} seeds, "
                  f"budget {suite.budget}: {suite.description}")
        return 0
    suite = load_suite(args.suite, args.suites_dir)
    settings = settings_from_args(args, suite)
    the_plan = plan(settings, suite)
    if args.merge:
        return merge_parts(args.merge, settings, the_plan)
    if args.dry_run:
        from pudm_bench.tracking import redact

        print(json.dumps({
            "settings": {**asdict(settings), "mlflow_uri": redact(settings.mlflow_uri)},
            "runs": len(the_plan.cells), "cells": list(the_plan.cells),
            "skipped": [f"{m} on {s}: {why}" for s, m, why in the_plan.skipped],
            "resources_per_run": {"train_workers": settings.workers_per_trial,
                                  "cpus_per_worker": settings.cpus_per_worker,
                                  "gpus_per_worker": settings.gpus_per_worker},
            "results": {"run_dir": str(settings.run_dir), "experiment": settings.experiment},
        }, indent=2, default=str))
        return 0
    from pudm_bench.orchestration.benchmark import run_benchmark  # imports Ray: not for --list, a dry run or bad input

    outcome = run_benchmark(settings, resume=args.resume, ray_address=args.ray_address, num_cpus=args.num_cpus,
                            verbose=0 if args.quiet else 1)
    print("\n" + outcome["markdown"])
    failed = outcome["runs"][outcome["runs"][RATE].isna()]
    if len(failed):
        print("Runs without a result:")
        print(failed[["split", "method", "seed", "status", "error"]].to_string(index=False))
    print(f"Wall time: {outcome['wall_seconds']:.1f} s")
    print(f"Table: {outcome['run_dir'] / 'benchmark_table.md'} (and .csv; per run: benchmark_runs.csv)")
    print(f"MLflow: {outcome['tracking_uri']}  experiment {outcome['experiment']!r}  parent run {outcome['parent_run_id']}")
    print(f"  open it: mlflow ui --backend-store-uri {outcome['tracking_uri']} --host 127.0.0.1")
    return 0


def merge_parts(paths: Sequence[str], settings: BenchmarkSettings, the_plan: Plan) -> int:
    """The suite's tables from the ``benchmark_runs.csv`` of benchmarks run in parts (``--first-seed``): a run that
    appears in two parts counts once (the later file's), a run of the plan in no part counts as not finished."""
    runs = read_runs(paths, the_plan)
    table = summary_table(runs, the_plan)
    suite = the_plan.suite
    title = f"# {suite.name}: {suite.description}" if suite.description else f"# {suite.name}"
    markdown = f"{title}\n\nMerged from {len(paths)} part(s): {', '.join(map(str, paths))}\n\n" + \
        markdown_table(table, the_plan)
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "benchmark_table.md").write_text(markdown)
    table.to_csv(run_dir / "benchmark_table.csv", index=False)
    runs.to_csv(run_dir / "benchmark_runs.csv", index=False)
    print(markdown)
    print(f"Table: {run_dir / 'benchmark_table.md'} (and .csv; per run: benchmark_runs.csv)")
    return 0
