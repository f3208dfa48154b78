"""``cardprep sample``: write a TEST issuer input file (issue 5, "Input").

Example:
    $ cardprep sample --issuer demo --cards 1000 --errors 0.02 --seed 7
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.records.sample import write_sample


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from None


def register(subparsers: Any) -> None:
    """Add the ``sample`` command."""
    p = subparsers.add_parser(
        "sample",
        help="write a realistic TEST input file for an issuer",
        description="Write a TEST issuer input file (sensitive fields under the demo KEK), "
        "optionally with injected errors of every kind the validator knows, and "
        "<file>.expected.json with the expected reject reason per line.",
    )
    p.add_argument("--issuer", required=True, help="issuer id (config/issuers/<id>.yaml)")
    p.add_argument("--cards", required=True, type=int, help="number of detail records")
    p.add_argument(
        "--errors",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of records with an injected error (0..1)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible file)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: the issuer's inbound directory)",
    )
    p.add_argument(
        "--batch-date",
        type=_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="batch date written to the header (default: today)",
    )
    p.add_argument(
        "--file-seq",
        default=None,
        metavar="DIGITS",
        help="the header's file sequence number (default: derived from the "
        "arguments, so two samples are two deliveries; docs/INPUT.md)",
    )
    p.add_argument("--config-dir", type=Path, default=Path("config"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the file and print a summary (counts only, never a PAN)."""
    if args.cards < 1:
        raise ConfigError("--cards", f"must be at least 1, got {args.cards}")
    s = write_sample(
        args.issuer,
        args.cards,
        args.out,
        error_rate=args.errors,
        seed=args.seed,
        batch_date=args.batch_date,
        config_dir=args.config_dir,
        file_seq=args.file_seq,
    )
    print(
        f"wrote {s.path} ({s.records} records, layout {s.layout}, "
        f"batch date {s.batch_date.isoformat()}, seed {s.seed})"
    )
    print(f"expected rejects: {s.expected_path}")
    print("valid records per product:")
    for product, count in s.per_product.items():
        print(f"  {product:<24} {count}")
    if s.injected:
        print(f"injected errors ({sum(s.injected.values())}):")
        for reason, count in s.injected.items():
            print(f"  {reason:<78} {count}")
    return 0
