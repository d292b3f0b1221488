"""``python -m pudm_bench.train``: the command (``cli.train``)."""

import sys

from pudm_bench.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
