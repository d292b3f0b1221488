"""``python -m pudm_bench.sanity`` (console script ``pudm-sanity``): can a broken generator win the scores?"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import QUALITY_METRICS, get_split
from pudm_bench.errors import ArgumentParser, PudmError
from pudm_bench.search.pareto import DEFAULT_CONSTRAINTS
from pudm_bench.search.sanity import broken_generators, check, dropped_classes, markdown, score_sets


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pudm_bench.sanity",
        description="Score broken generators built from a split's real images (noise, blobs, blurred digits, one "
                    "image repeated, two normal classes dropped) next to real images, as sweep trials are scored, "
                    "and say whether the default constraints or the front's two axes catch each one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--split", default="digits_even", help="registered split name")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs")
    p.add_argument("--num-images", type=int, default=500, help="images per set (a sweep trial's sample count)")
    p.add_argument("--quality", default=None, choices=QUALITY_METRICS,
                   help="quality axis (default: the split's quality_metric)")
    p.add_argument("--data-dir", default=None, help="folder holding downloaded datasets")
    p.add_argument("--cache-dir", default=None, help="referee cache (default $PUDM_BENCH_CACHE or ~/.cache/pudm_bench)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pudm_bench.scoring.evaluate import EvalConfig
    from pudm_bench.scoring.referee import check_referee, get_class_referee, get_referee

    args = build_parser().parse_args(argv)
    try:
        spec = get_split(args.split, args.splits_dir)
        config = EvalConfig(num_samples=args.num_images, fid="on" if args.quality == "fid" else "off",
                            quality_metric=args.quality,
                            cache_dir=args.cache_dir)
        split = build_split(spec, data_dir=args.data_dir)
        referee = get_referee(spec, data_dir=args.data_dir, cache_dir=args.cache_dir)
        check_referee(referee, config.referee_floor)
        class_referee = get_class_referee(spec, data_dir=args.data_dir, cache_dir=args.cache_dir)
        scores = score_sets(split, broken_generators(split, args.num_images), referee, class_referee, config)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quality = args.quality or spec.quality_metric
    verdicts = check(scores, quality)
    if args.json:
        print(json.dumps({"scores": {k: {m: v for m, v in s.items() if m != "coverage_per_class"}
                                     for k, s in scores.items()}, "verdicts": verdicts}, indent=2, default=str))
    else:
        print(f"{spec.name}: {args.num_images} images per set; quality axis {quality}; default constraints "
              f"{', '.join(DEFAULT_CONSTRAINTS)}; 'two classes dropped' leaves out {', '.join(dropped_classes(split))}")
        print(markdown(scores, verdicts))
    return 0 if all(v["caught"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
