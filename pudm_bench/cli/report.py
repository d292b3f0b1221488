"""``python -m pudm_bench.report`` (console script ``pudm-report``): read and compare sweeps in an MLflow store."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pudm_bench.errors import ArgumentParser, PudmError
from pudm_bench.tracking import resolve_tracking_uri
from pudm_bench.tracking.report import pick_sweep, report_compare, report_list, report_sweep


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pudm_bench.report",
                                description="A sweep's Pareto front and baselines, read back from MLflow.")
    p.add_argument("--mlflow-uri", default=None,
                   help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", default=None, help="only sweeps of this experiment, e.g. pudm-digits_even (default: all)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--sweep", default=None, metavar="RUN_ID_OR_NAME",
                      help="the sweep's parent run id or its name (default: latest)")
    what.add_argument("--compare", nargs=2, default=None, metavar=("SWEEP_A", "SWEEP_B"),
                      help="two sweeps' fronts side by side, hypervolumes against one reference")
    what.add_argument("--list", action="store_true", help="list the sweeps, newest first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        uri = resolve_tracking_uri(args.mlflow_uri)
        if args.list:
            text = report_list(uri, args.experiment)
        elif args.compare:
            text = report_compare(uri, *(pick_sweep(uri, args.experiment, ref) for ref in args.compare))
        else:
            text = report_sweep(uri, pick_sweep(uri, args.experiment, args.sweep))
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
