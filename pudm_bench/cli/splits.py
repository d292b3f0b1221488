"""``python -m pudm_bench.splits list|validate``: see and check the registered sensitive splits.

``list`` prints every split in the search path (built-in ``benchmarks/splits``, ``$PUDM_BENCH_SPLITS_PATH``,
``--splits-dir``). ``validate [FILE ...]`` checks split files (all registered ones without arguments): schema,
class names, name clashes with the registry, and, where the dataset's files are present, builds the split to check
the counts against the data and print its fingerprint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import load_registry, load_split_file
from pudm_bench.errors import ArgumentParser, ConfigError, DataNotFoundError, PudmError


def _list(args: argparse.Namespace) -> int:
    registry = load_registry(args.splits_dir)
    rows = [("name", "dataset", "normal", "sensitive", "U normal+sensitive / S", "size", "file")]
    for spec in registry.values():
        c = spec.counts
        rows.append((spec.name, spec.dataset, ",".join(spec.normal_classes), ",".join(spec.sensitive_classes),
                     f"{c.unlabeled_normal}+{c.unlabeled_sensitive} / {c.labeled_sensitive}",
                     f"{spec.channels}x{spec.image_size}", spec.source))
    widths = [min(max(len(r[i]) for r in rows), 40) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell[:40].ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _validate(args: argparse.Namespace) -> int:
    registry = load_registry(args.splits_dir)
    if args.files:
        specs = []
        for file in args.files:
            spec = load_split_file(file)
            other = registry.get(spec.name)
            if other is not None and Path(other.source).resolve() != Path(file).resolve():
                raise ConfigError(f"split name {spec.name!r} in {file} is already defined by {other.source}; rename it")
            specs.append(spec)
    else:
        specs = list(registry.values())
    for spec in specs:
        try:
            built = build_split(spec, seed=args.split_seed, data_dir=args.data_dir, download=args.download)
        except DataNotFoundError as exc:
            print(f"ok (schema only)  {spec.name}: data not available, counts not checked: {exc}")
            continue
        s = built.summary()
        print(f"ok  {spec.name}: U {s['unlabeled_normal']}+{s['unlabeled_sensitive']} (prior {s['true_prior']:.3f}), "
              f"S {s['labeled_sensitive']}, N {s['labeled_normal']}, normal test {s['normal_test']}, "
              f"sensitive test {s['sensitive_test']}, fingerprint {s['fingerprint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pudm_bench.splits", description=__doc__.split("\n")[0])
    p.add_argument("--splits-dir", action="append", default=[], metavar="DIR", help="extra folder of split YAMLs")
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list registered splits")
    v = sub.add_parser("validate", help="check split files (all registered ones when no FILE is given)")
    for command in (listing, v):  # accepted after the command too: `splits list --splits-dir DIR`
        command.add_argument("--splits-dir", action="append", default=[], dest="command_splits_dir", metavar="DIR",
                             help="extra folder of split YAMLs (repeatable)")
    v.add_argument("files", nargs="*", metavar="FILE")
    v.add_argument("--data-dir", default=None, help="where datasets live (default $PUDM_BENCH_DATA or ./data)")
    v.add_argument("--download", action="store_true",
                   help="download a torchvision dataset that is missing (needs internet), then check the counts")
    v.add_argument("--split-seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.splits_dir = args.splits_dir + args.command_splits_dir
    try:
        return _list(args) if args.command == "list" else _validate(args)
    except PudmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
