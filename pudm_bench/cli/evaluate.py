"""``python -m pudm_bench.evaluate`` (console script ``pudm-evaluate``): score a trained run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from pudm_bench.data.splits import QUALITY_METRICS
from pudm_bench.errors import ArgumentParser, PudmError
from pudm_bench.scoring.evaluate import DIVERSITY_CHOICES, FID_CHOICES, EvalConfig, evaluate_run
from pudm_bench.training.config import SAMPLERS


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = ArgumentParser(
        prog="python -m pudm_bench.evaluate",
        description="Score a trained run: non-sensitive rate (95% Wilson interval), fd_classifier, Inception FID, "
                    "normal-class coverage and precision/recall; writes RUN/eval.json, a grid of the scored samples "
                    "(RUN/eval_samples.png) and the per-class coverage plot (RUN/eval_coverage.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="DIR", help="run directory written by python -m pudm_bench.train")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="images to generate and score")
    p.add_argument("--sampler", default=d.sampler, choices=SAMPLERS)
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="sampler steps (1000 = the full DDPM chain)")
    p.add_argument("--sample-seed", type=int, default=d.sample_seed)
    p.add_argument("--quality", default=None, choices=QUALITY_METRICS, help="quality objective (default: the split's)")
    p.add_argument("--fid", default=d.fid, choices=FID_CHOICES, help="auto: compute FID when Inception weights are found")
    p.add_argument("--fid-weights", default=None, metavar="PATH", help="pytorch-fid Inception weights file")
    p.add_argument("--fid-dims", type=int, default=d.fid_dims, choices=[64, 192, 768, 2048], help="Inception feature block")
    p.add_argument("--referee", default=None, metavar="PATH", help="use this referee checkpoint instead of the cached one")
    p.add_argument("--referee-floor", type=float, default=d.referee_floor, help="refuse to score below this held-out balanced accuracy")
    p.add_argument("--referee-epochs", type=int, default=None, help="epochs when the referee has to be trained")
    p.add_argument("--diversity", default=d.diversity, choices=DIVERSITY_CHOICES,
                   help="auto: normal-class coverage (splits with 2+ normal classes) and precision/recall")
    p.add_argument("--cache-dir", default=None, help="referee and FID-statistics cache (default $PUDM_BENCH_CACHE or ~/.cache/pudm_bench)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = EvalConfig(num_samples=args.num_samples, sampler=args.sampler, sample_steps=args.sample_steps,
                            sample_seed=args.sample_seed, quality_metric=args.quality, fid=args.fid,
                            fid_weights=args.fid_weights, fid_dims=args.fid_dims, referee_path=args.referee,
                            referee_floor=args.referee_floor, referee_epochs=args.referee_epochs,
                            cache_dir=args.cache_dir, diversity=args.diversity)
        metrics = evaluate_run(args.run, config, device=args.device)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in metrics.items() if k not in ("eval_config", "coverage_per_class")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
