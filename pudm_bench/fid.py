"""``python -m pudm_bench.fid``: the command (``cli.fid``)."""

import sys

from pudm_bench.cli.fid import main

if __name__ == "__main__":
    sys.exit(main())
