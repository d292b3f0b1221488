"""Multi-threaded torch beside other busy processes: OpenMP's default (idle threads spin) against
``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep) and a short spin (docs/performance.md, item 8).

The workload is what a sweep driver runs while trials may already be training: the digits per-class referee
(small CNN, 300 steps), with torch's default thread count (the machine's cores). Each measurement is a fresh
process (libgomp reads the variable once, when torch loads it), beside ``--busy`` processes that spin on a core
each, for 0..busy of them.

    python benchmarks/perf/omp_wait.py [--busy 2] [--out benchmarks/perf/results]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, print_table, write_json  # noqa: E402

# libgomp's choices: spin about 300,000 iterations before sleeping (the default), never spin (PASSIVE), or spin less.
POLICIES = {"unset": "default (spin)", "PASSIVE": "PASSIVE", "spin10000": "GOMP_SPINCOUNT=10000"}

WORKLOAD = """
import os, sys, time
os.environ.pop("OMP_WAIT_POLICY", None)
if sys.argv[1].startswith("spin"):  # spin this many iterations, then sleep (libgomp's GOMP_SPINCOUNT)
    os.environ["GOMP_SPINCOUNT"] = sys.argv[1][4:]
elif sys.argv[1] != "unset":
    os.environ["OMP_WAIT_POLICY"] = sys.argv[1]
import torch  # before pudm_bench: the policy above is the one libgomp reads
from pudm_bench.data.splits import get_split
from pudm_bench.scoring.referee import RefereeSpec, train_referee
spec = RefereeSpec.per_class(get_split("digits_even"), epochs=1)  # 300 steps (the referee's minimum)
start = time.perf_counter()
train_referee(spec, None)
print(time.perf_counter() - start, torch.get_num_threads())
"""


def spin() -> None:
    while True:
        pass


def measure(policy: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", WORKLOAD, policy], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="at most this many spinning processes beside it")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each, interleaved; the median")
    parser.add_argument("--out", default=None, help="folder for omp_wait.json")
    args = parser.parse_args()
    rows = []
    for busy in range(args.busy + 1):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        time.sleep(0.5)
        try:
            times = interleaved({name: (lambda name=name: measure(name)[0]) for name in POLICIES}, args.repeats)
        finally:
            for p in spinners:
                p.terminate()
        rows.append({"busy processes": busy, **{f"{label} s": round(times[name], 1)
                                                 for name, label in POLICIES.items()},
                     "default / PASSIVE": round(times["unset"] / times["PASSIVE"], 2)})
    print_table(f"per-class digits referee, 300 steps, on {os.cpu_count()} CPUs", rows, list(rows[0]))
    if args.out:
        write_json(args.out, "omp_wait", {"rows": rows, "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
