"""Every measurement of the performance harness with its default arguments, one after the other (about 10 minutes
on 2 CPU cores); each script prints its table and writes ``benchmarks/perf/results/<name>.json``.

    python benchmarks/perf/run_all.py [--gpu]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [["train_step.py"], ["eval_cost.py"], ["ddp_scaling.py"], ["sweep_overhead.py"]]


def main() -> int:
    gpu = "--gpu" in sys.argv[1:]
    failed = []
    start = time.perf_counter()
    for script in SCRIPTS:
        args = script + (["--gpu"] if gpu and script[0] == "ddp_scaling.py" else [])
        print(f"\n=== {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]]).returncode != 0:
            failed.append(args[0])
        print(f"=== {args[0]}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nall: {time.perf_counter() - start:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
