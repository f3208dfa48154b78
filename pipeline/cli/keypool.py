"""``cardprep keypool``: fill, inspect and clean up the ICC key pools (issue 7).

Example:
    $ cardprep keypool fill --algorithm rsa --bits 1152 --exponent 3 --count 20000
    $ cardprep keypool fill --algorithm sm2 --count 100000
    $ cardprep keypool status
    $ cardprep keypool burn --batch 9f3a0c1d2e4b5a69 --shard 3

``fill`` generates on every core (``--workers``), with a progress bar and an
ETA on stderr.  See :mod:`pipeline.keys.pool` for custody and lifecycle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from pipeline.errors import ConfigError
from pipeline.keys import open_store as open_configured_store
from pipeline.keys.pool import KeyPool, pool_path
from pipeline.keys.settings import Backend
from pipeline.keys.store import KeyStore
from pipeline.steps.keypool import pool_status, refill

__all__ = ["Progress", "register"]

BAR_WIDTH = 30


class Progress:
    """A one-line progress bar with rate and ETA, redrawn at most every ``interval`` s.

    On a terminal it rewrites the line (``\\r``); otherwise it prints a line per
    10 %.  Writes to stderr only, so stdout stays the result.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = Progress("rsa-1152-e3", stream=out, clock=iter([0.0, 10.0, 20.0]).__next__)
        >>> bar(50, 100); bar(100, 100)
        >>> out.getvalue().splitlines()[-1].startswith("rsa-1152-e3 [####")
        True
    """

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        interval: float = 0.2,
        clock: Any = time.monotonic,
    ) -> None:
        self.label, self.interval, self.clock = label, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self.last_draw = -1e9
        self.last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        finished = done >= total
        decile = 10 * done // max(total, 1)
        if self.tty and not finished and now - self.last_draw < self.interval:
            return
        if not self.tty and not finished and decile == self.last_decile:
            return
        self.last_draw, self.last_decile = now, decile
        self.stream.write(("\r" if self.tty else "") + self.line(done, total, now - self.start))
        if finished or not self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def line(self, done: int, total: int, elapsed: float) -> str:
        """The text of the bar: ``label [####....] done/total pct rate/s ETA m:ss``.

        Example:
            >>> Progress("x", stream=None).line(25, 100, 5.0)
            'x [#######.......................]      25/100     25%      5.0/s  ETA 0:15'
        """
        frac = done / total if total else 1.0
        filled = int(BAR_WIDTH * frac)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        width = len(str(total))
        return (
            f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{done:>{width + 4}}/{total} {frac:>7.0%} {rate:>8.1f}/s  ETA {_clock(eta)}"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _store(args: argparse.Namespace) -> KeyStore:
    from pipeline.cli.keys import open_store, settings_of  # noqa: PLC0415 (CLI import cost)

    settings = settings_of(args)
    if settings.key_store.backend is Backend.PKCS11:
        return open_configured_store(settings)
    return open_store(args)


def register(subparsers: Any) -> None:
    """Add ``keypool fill | status | burn``."""
    from pipeline.cli.keys import common_options  # noqa: PLC0415 (CLI import cost)

    common = common_options()
    p = subparsers.add_parser(
        "keypool",
        help="ICC key pools: pre-generated key pairs in the key store's custody",
        description="Fill, inspect and clean up pools of pre-generated ICC key pairs.",
    )
    sub = p.add_subparsers(dest="keypool_command", required=True)

    f = sub.add_parser(
        "fill",
        parents=[common],
        help="generate COUNT key pairs into a pool (every core, progress on stderr)",
    )
    f.add_argument("--algorithm", required=True, choices=["rsa", "sm2"])
    f.add_argument("--bits", type=int, default=None, help="RSA modulus bits (e.g. 1152)")
    f.add_argument("--exponent", type=int, default=None, help="RSA public exponent: 3 or 65537")
    f.add_argument("--count", type=int, required=True, help="pairs to add")
    f.add_argument(
        "--top-up",
        action="store_true",
        help="treat COUNT as the target number of free entries (add only what is missing)",
    )
    f.add_argument("--tk", default=None, help="TK label the pool serves (default: demo TK)")
    f.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    f.add_argument("--actor", default="cardprep-keypool", help="service/custodian id for audit")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fill)

    s = sub.add_parser("status", parents=[common], help="free/claimed/used/burned per pool")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=run_status)

    b = sub.add_parser(
        "burn",
        parents=[common],
        help="burn claimed entries left by crashed runs (never returned to the pool)",
    )
    b.add_argument("--batch", default=None, help="only claims of this batch id")
    b.add_argument("--shard", default=None, help="only claims of this shard (with --batch)")
    b.add_argument(
        "--older-than", type=float, default=0.0, metavar="SECONDS", help="only older claims"
    )
    b.add_argument("--all", action="store_true", help="required when no --batch is given")
    b.set_defaults(func=run_burn)


def run_fill(args: argparse.Namespace) -> int:
    """Generate (or top up to) ``--count`` entries; print the JSON result on stdout."""
    from pipeline.cli.keys import settings_of  # noqa: PLC0415

    if args.count < 0:
        raise ConfigError("--count", f"must be >= 0, got {args.count}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    settings = settings_of(args)
    store = _store(args)
    try:
        free = 0
        if not args.top_up:  # add COUNT: the target is what is free now plus COUNT
            free = _free_now(settings, store, args)
        label = f"{args.algorithm}" + (f"-{args.bits}-e{args.exponent}" if args.bits else "")
        progress = None if args.quiet else Progress(label)
        result = refill(
            settings, args.algorithm, args.bits, args.exponent, free + args.count,
            tk=args.tk, workers=args.workers, actor=args.actor, store=store, progress=progress,
        )  # fmt: skip
    finally:
        store.close()
    print(json.dumps(result, sort_keys=True))
    return 0


def _free_now(settings: Any, store: KeyStore, args: argparse.Namespace) -> int:
    from pipeline.keys.pool import PoolSpec, pool_key_label  # noqa: PLC0415
    from pipeline.steps.keypool import default_tk  # noqa: PLC0415

    spec = PoolSpec.of(args.algorithm, args.bits, args.exponent)
    tk = store.active(args.tk or default_tk(settings, spec.algorithm))
    path = pool_path(settings)
    if not path.exists():
        return 0
    with KeyPool(path) as pool:
        return pool.free_count(spec, pool_key_label(store.get(tk).algorithm))


def run_status(args: argparse.Namespace) -> int:
    """Print the counts of every pool."""
    from pipeline.cli.keys import settings_of  # noqa: PLC0415

    rows = pool_status(settings_of(args))
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no key pool entries")
        return 0
    head = ("spec", "storage", "free", "claimed", "used", "burned")
    print(f"{head[0]:<18} {head[1]:<18} " + " ".join(f"{h:>10}" for h in head[2:]))
    for r in rows:
        counts = " ".join(f"{r[h]:>10}" for h in head[2:])
        print(f"{r['spec']:<18} {r['storage']:<18} {counts}")
    return 0


def run_burn(args: argparse.Namespace) -> int:
    """Burn claimed entries (crash clean-up); audited in the store's trail."""
    from pipeline.cli.keys import settings_of  # noqa: PLC0415

    if args.batch is None and not args.all:
        raise ConfigError("--batch", "name a batch, or pass --all to burn every claimed entry")
    if args.shard is not None and args.batch is None:
        raise ConfigError("--shard", "needs --batch")
    settings = settings_of(args)
    store = _store(args)
    try:
        with KeyPool(pool_path(settings)) as pool:
            burned = pool.burn_claimed(args.batch, args.shard, older_than=args.older_than)
        trail = getattr(store, "audit_trail", None)
        if trail is not None:
            trail.append(
                "cardprep-keypool", "keypool.burn", args.batch or "*", "ok",
                shard=args.shard, burned=burned,
            )  # fmt: skip
    finally:
        store.close()
    print(json.dumps({"burned": burned}))
    return 0
