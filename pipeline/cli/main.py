"""The ``cardprep`` command line.

Each command group lives in its own module under :mod:`pipeline.cli` and
exposes ``register(subparsers)``; this module only assembles them.

Example:
    $ cardprep selftest
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline.errors import CardprepError

#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.cli.selftest",
    "pipeline.cli.sample",
    "pipeline.cli.keys",
    "pipeline.cli.custodians",
    "pipeline.cli.audit",
    "pipeline.cli.batch",
    "pipeline.cli.keypool",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="cardprep", description="EMV / PBOC card data preparation"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a :class:`CardprepError` prints its message and exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except CardprepError as exc:
        print(f"cardprep: error: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
