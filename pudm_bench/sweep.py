"""``python -m pudm_bench.sweep``: the command (``cli.sweep``); the sweep itself is ``orchestration.sweep``."""

import sys

from pudm_bench.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
