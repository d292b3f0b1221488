"""What every command line shares: the execution options of the sweep and the benchmark (trial resources,
cluster, storage, data, tracking) and the error wrapper (a ``PudmError`` is one line on stderr and exit code 2,
never a traceback)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body; a ``PudmError`` (bad input, a refused run) becomes ``error: <one line>`` and exit 2."""
    from pudm_bench.errors import PudmError

    try:
        return body()
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


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
    p.add_argument("--placement-timeout", type=float, default=None, metavar="SECONDS",
                   help="longest wait for a trial's Train workers to be placed; default: a trial that could never "
                        "be placed is refused before any work on a fixed cluster (the local one, or one without an "
                        "autoscaler), and waits up to 600 s on one that can grow. Given: the cluster is taken to "
                        "grow (a warning instead of a refusal)")
    p.add_argument("--storage", default="pudm_runs", metavar="PATH",
                   help="run storage: checkpoints, Tune state, caches (a shared filesystem path on clusters)")
    p.add_argument("--max-failures", type=int, default=1, help="restarts of a trial whose workers failed or died, from its last checkpoint "
                   "(not for a diverged loss or bad input); see docs/reliability.md")
    p.add_argument("--referee-floor", type=float, default=0.9,
                   help="refuse to score (before any training) when the referee's held-out balanced accuracy is lower")
    p.add_argument("--referee-epochs", type=int, default=None, help="epochs to train the referee (default: the budget's)")
    p.add_argument("--data-dir", default=None, help="folder holding downloaded datasets")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")
