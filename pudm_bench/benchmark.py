"""``python -m pudm_bench.benchmark``: the command (``cli.benchmark``); the runner is ``orchestration.benchmark``."""

import sys

from pudm_bench.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
