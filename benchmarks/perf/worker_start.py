"""How long a new Ray worker process takes to start, on the cluster the sweep starts and on a plain local one
(docs/performance.md, item 5: the placement-group cleaner's fix).

Each run starts a local cluster in a child process, creates ``--actors`` actors one after another (each a new
worker process: created, called once, killed) and prints the seconds each took; ``sweep`` uses
``orchestration.cluster.start_ray`` (what the sweep and benchmark do), ``plain`` a bare ``ray.init``. The two
alternate ``--repeats`` times.

    python benchmarks/perf/worker_start.py [--actors 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402


def child(kind: str, actors: int) -> None:
    import os

    import ray

    from pudm_bench.orchestration import cluster

    if kind == "sweep":
        cluster.start_ray(None, 2, 0)
    else:
        ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", dashboard_port=cluster.dashboard_port(),
                 log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    seconds = []
    for _ in range(actors):
        start = time.perf_counter()
        probe = Probe.remote()
        ray.get(probe.pid.remote())
        seconds.append(time.perf_counter() - start)
        ray.kill(probe)
    ray.shutdown()
    print(json.dumps(seconds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--actors", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--child", choices=["sweep", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.actors)
        return 0
    rows = []
    for repeat in range(args.repeats):
        for kind in ("sweep", "plain"):
            done = subprocess.run([sys.executable, __file__, "--child", kind, "--actors", str(args.actors)],
                                  capture_output=True, text=True, check=True)
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"cluster": kind, "repeat": repeat, "min_s": min(seconds),
                         "median_s": statistics.median(seconds), "max_s": max(seconds)})
    print_table("A new Ray worker process (actor created and called once), seconds", rows, list(rows[0]))
    write_json(args.out, "worker_start", {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
