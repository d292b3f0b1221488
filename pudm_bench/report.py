"""``python -m pudm_bench.report``: the command (``cli.report``)."""

import sys

from pudm_bench.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
