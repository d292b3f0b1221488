"""``python -m pudm_bench.sanity``: the command (``cli.sanity``)."""

import sys

from pudm_bench.cli.sanity import main

if __name__ == "__main__":
    sys.exit(main())
