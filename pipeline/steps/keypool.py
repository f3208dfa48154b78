"""Key pool steps: the ``icc_keypool`` DAG's refill, and the shard-side claim/settle helpers.

``refill`` tops a pool up to ``target`` free entries (DESIGN.md ``dags/icc_keypool.py``:
refill off-peak).  The shard helpers are what ``prepare_shard`` calls when a
product takes its ICC keys from a pool (``icc_key.source: pool``):

1. ``begin_shard`` before any card: burn what an earlier, crashed run of this
   shard claimed (those keys may have been written out; never reuse them);
2. in every worker, ``shard_icc_source`` -> the ``icc_source`` of the
   worker's ``CardPreparer``; it releases its never-handed claims when the
   worker process exits cleanly;
3. ``settle_shard`` after the shard's part is durably written: the written
   cards' keys become ``used``, every other claim of the shard is burned.

Every function returns JSON-able counts only (XCom-safe: no key material).

Example:
    >>> refill(settings, "rsa", 1152, 3, target=50_000)          # doctest: +SKIP
    {'spec': 'rsa-1152-e3', 'storage': 'icc-pool-tdes2', 'target': 50000, 'free_before': 41200,
     'added': 8800, 'free': 50000, 'seconds': 131.2, 'workers': 2}
"""

from __future__ import annotations

import multiprocessing.util
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.keys import open_store
from pipeline.keys.pool import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    ClaimTag,
    DryPolicy,
    KeyPool,
    PoolIccSource,
    PoolSpec,
    fill,
    pool_key_label,
    pool_path,
)
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.profiles.model import IccKeySpec

__all__ = [
    "DEFAULT_TK",
    "begin_shard",
    "default_tk",
    "dry_policy",
    "pool_status",
    "refill",
    "settle_shard",
    "shard_icc_source",
]

#: The TK a pool's entries are delivered under, by ICC algorithm, when not named (demo labels).
DEFAULT_TK = {"rsa": "demo-tk", "sm2": "demo-tk-sm4"}
DEFAULT_ACTOR = "cardprep-keypool"


def default_tk(settings: Settings, algorithm: str) -> str:
    """``keypool.tk.<algorithm>`` from settings, else the demo TK label (refused in production).

    Example:
        >>> from pipeline.keys.settings import parse_settings
        >>> default_tk(parse_settings({"keypool": {"tk": {"rsa": "bureau-tk"}}}), "rsa")
        'bureau-tk'
    """
    section = settings.raw.get("keypool") or {}
    tks = section.get("tk") if isinstance(section, dict) else None
    if isinstance(tks, dict) and tks.get(algorithm):
        return str(tks[algorithm])
    if settings.is_production:
        raise ConfigError(f"keypool.tk.{algorithm}", "name the TK the pool serves (--tk)")
    return DEFAULT_TK[algorithm]


def refill(
    settings: Settings,
    algorithm: str,
    bits: int | None,
    exponent: int | None,
    target: int,
    *,
    tk: str | None = None,
    workers: int | None = None,
    actor: str = DEFAULT_ACTOR,
    store: KeyStore | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Top the pool ``(algorithm, bits, exponent)`` up to ``target`` free entries.

    Generates ``max(0, target - free)`` pairs on ``workers`` processes (default:
    every core) under the pool key matching ``tk``'s algorithm.  Counts only.
    """
    if target < 0:
        raise ConfigError("target", f"must be >= 0, got {target}")
    spec = PoolSpec.of(algorithm, bits, exponent)
    own = store is None
    ks = open_store(settings) if store is None else store
    started = time.monotonic()
    try:
        tk_ref = ks.active(tk or default_tk(settings, spec.algorithm))
        storage = pool_key_label(ks.get(tk_ref).algorithm)
        with KeyPool(pool_path(settings)) as pool:
            before = pool.free_count(spec, storage)
            missing = max(0, target - before)
            result = (
                fill(ks, pool, spec, tk_ref, missing, actor=actor, workers=workers,
                     progress=progress)
                if missing
                else {"added": 0, "free": before}
            )  # fmt: skip
    finally:
        if own:
            ks.close()
    return {
        "spec": spec.name, "storage": storage, "tk": str(tk_ref), "target": target,
        "free_before": before, "added": int(result["added"]), "free": int(result["free"]),
        "seconds": round(time.monotonic() - started, 3),
        "workers": workers or os.cpu_count() or 1,
    }  # fmt: skip


def pool_status(settings: Settings) -> list[dict[str, Any]]:
    """Counts of every pool: ``[{"spec", "storage", "free", "claimed", "used", "burned"}]``."""
    path = pool_path(settings)
    if not path.exists():
        return []
    with KeyPool(path) as pool:
        return [s.as_dict() for s in pool.status()]


# --- shard side -------------------------------------------------------------------------------


def dry_policy(icc_key: IccKeySpec) -> DryPolicy:
    """The profile's policy for a dry pool: ``icc_key.pool_empty`` (inline | fail).

    The loader validated it (default inline; refused unless ``source: pool``).

    Example:
        >>> from pipeline.profiles.model import IccKeyAlgorithm, IccKeySource
        >>> spec = IccKeySpec(IccKeyAlgorithm.SM2, None, None, IccKeySource.POOL, (0x8100,),
        ...                   DryPolicy.FAIL)
        >>> dry_policy(spec).value
        'fail'
    """
    return icc_key.pool_empty


def begin_shard(settings: Settings, batch_id: str, shard: int | str) -> dict[str, int]:
    """Burn whatever an earlier run of this shard left claimed. Call before preparing it."""
    path = pool_path(settings)
    if not path.exists():
        return {"burned": 0}
    with KeyPool(path) as pool:
        return {"burned": pool.burn_claimed(batch_id, str(shard))}


def shard_icc_source(
    settings: Settings,
    store: KeyStore,
    batch_id: str,
    shard: int | str,
    *,
    on_empty: DryPolicy = DryPolicy.INLINE,
    pool_db: Path | None = None,
    max_claim: int = MAX_CHUNK,
) -> PoolIccSource:
    """A worker's ICC source for one shard (one per worker process, after ``begin_shard``).

    The never-handed claims are released when the process exits normally
    (``multiprocessing.util.Finalize``, which runs at a pool worker's clean
    exit) or on ``source.close()``; after a crash they are burned by
    ``settle_shard`` / ``begin_shard``.  ``max_claim`` caps a claim (the
    shard's records per worker task, so workers of a small shard never hold
    more than a chunk they will use while the other runs dry).
    """
    cap = max(1, min(MAX_CHUNK, max_claim))
    pool = KeyPool(pool_db or pool_path(settings))
    source = PoolIccSource(
        pool, store, ClaimTag(batch_id, str(shard)), chunk=min(DEFAULT_CHUNK, cap), max_chunk=cap,
        on_empty=on_empty,
    )  # fmt: skip
    multiprocessing.util.Finalize(source, _close_source, args=(source, pool), exitpriority=10)
    return source


def _close_source(source: PoolIccSource, pool: KeyPool) -> None:
    try:
        source.close()
    finally:
        pool.close()


def settle_shard(
    settings: Settings, batch_id: str, shard: int | str, icc_pk_sha256: Iterable[str]
) -> dict[str, int]:
    """After the shard's part is written: its cards' keys -> used, other claims -> burned.

    ``icc_pk_sha256`` is the part's ``icc_pk_sha256`` column (hex SHA-256 of
    each written card's ICC public key; inline keys simply match nothing).
    """
    path = pool_path(settings)
    if not path.exists():
        return {"used": 0, "burned": 0}
    with KeyPool(path) as pool:
        return pool.settle(batch_id, str(shard), icc_pk_sha256)
