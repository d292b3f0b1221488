"""``python -m pudm_bench.latent``: the command (``cli.latent``)."""

import sys

from pudm_bench.cli.latent import main

if __name__ == "__main__":
    sys.exit(main())
