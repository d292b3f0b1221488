"""``python -m pudm_bench.evaluate``: the command (``cli.evaluate``)."""

import sys

from pudm_bench.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
