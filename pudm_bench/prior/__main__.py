"""``python -m pudm_bench.prior``: the command (``cli.prior``)."""

import sys

from pudm_bench.cli.prior import main

if __name__ == "__main__":
    sys.exit(main())
