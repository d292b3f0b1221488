"""``python -m pudm_bench.splits``: the command (``cli.splits``)."""

import sys

from pudm_bench.cli.splits import main

if __name__ == "__main__":
    sys.exit(main())
