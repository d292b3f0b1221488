"""``python -m pudm_bench.prior`` (console script ``pudm-prior``): estimate a split's class prior."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, Sequence

import torch

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ArgumentParser, ConfigError, PudmError
from pudm_bench.prior.estimate import ScorerConfig, estimate_prior


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pudm_bench.prior",
        description="Estimate the class prior beta (the sensitive share of U) from U and S alone (BBE on U-vs-S "
                    "classifier scores) and print it beside the split's true share.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--split", default="digits_even", help="registered split name")
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs (repeatable)")
    p.add_argument("--unlabeled-sensitive-share", type=float, action="append", default=None, metavar="SHARE",
                   help="set U's sensitive share (repeatable: one estimate per share)")
    p.add_argument("--seeds", type=int, default=1, help="estimates per share (split seed and estimator seed 0..K-1)")
    p.add_argument("--folds", type=int, default=ScorerConfig.folds)
    p.add_argument("--steps", type=int, default=ScorerConfig.steps, help="optimizer steps per classifier")
    p.add_argument("--data-dir", default=None, help="folder holding downloaded datasets")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds={args.seeds} is invalid: expected an integer >= 1")
        config = ScorerConfig(folds=args.folds, steps=args.steps)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        rows: list[dict[str, Any]] = []
        for share in args.unlabeled_sensitive_share or [None]:
            spec = get_split(args.split, args.splits_dir, share)
            for seed in range(args.seeds):
                split = build_split(spec, seed=seed, data_dir=args.data_dir)
                est = estimate_prior(split, seed=seed, config=config, device=device)
                rows.append({"split": spec.name, "split_seed": seed, "true_prior": round(spec.counts.true_prior, 4),
                             **{k: round(v, 4) for k, v in asdict(est).items() if isinstance(v, float)},
                             "unlabeled": est.unlabeled, "labeled_sensitive": est.labeled_sensitive})
                r = rows[-1]
                print(f"{r['split']:<28} seed {seed}: true {r['true_prior']:.3f}  estimate {r['estimate']:.3f} "
                      f"(std {r['std']:.3f}, 90% [{r['ci_low']:.3f}, {r['ci_high']:.3f}])  {r['seconds']:.1f} s",
                      flush=True)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
