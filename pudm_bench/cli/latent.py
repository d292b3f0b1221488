"""``python -m pudm_bench.latent`` (console script ``pudm-latent``): helpers for the latent (Stable Diffusion) path."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pudm_bench.errors import ArgumentParser, PudmError
from pudm_bench.training.latent import tiny_pipeline


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pudm_bench.latent",
                       description="Helpers for the latent (Stable Diffusion) path.")
    sub = p.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a tiny randomly initialised SD pipeline (smoke runs, no download)")
    tiny.add_argument("path", help="folder to write (vae/, text_encoder/, tokenizer/, unet/, scheduler/)")
    tiny.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = tiny_pipeline(args.path, seed=args.seed)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path.resolve()}: train on it with --model sd --pretrained {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
