"""ICC key pools: key pairs generated ahead of time, kept in the key store's custody.

Generating an RSA-1152 ICC key costs ~28 ms; everything else a card needs
costs ~0.3 ms (DESIGN.md "Speed model").  A pool moves key generation off the
batch's critical path: ``cardprep keypool fill`` generates pairs on every core
ahead of time; a batch *claims* them.

Custody (the choice, and why):
    Each entry's private part is stored encrypted under a **pool storage key**
    held by the key store (label ``icc-pool-<algorithm>``, e.g.
    ``icc-pool-tdes2``: usage K0, role KEK, non-exportable), exactly as the
    store's ``generate_icc_key_pair`` produces it for any K0 key.  When a card
    takes an entry, the store re-encrypts it to the bureau TK with its
    ``translate`` command (decrypt under the pool key, encrypt under the TK,
    inside the backend: no clear private key ever leaves the store).  This is
    how data-preparation HSMs keep pre-generated keys (under a storage key,
    exported under the transport key on use).  We did *not* store entries
    under the TK itself: the TK is shared with the personalisation bureau, so
    every unused entry would be readable there before any card owns it; a TK
    rotation or a second bureau would strand the pool; and a pool under a
    storage key works for any TK of the same algorithm.  The pool key has the
    TK's algorithm, because ISO 9797-1 method 2 padding depends on the block
    size, so the translated bytes equal what inline generation under the TK
    gives.  Cost: one ``translate`` (a few microseconds) per card.
    Each entry is also MACed (``store.mac(pool key, entry, "keypool-entry")``),
    so an edited pool database (a public key swapped under someone's private
    key) is refused at claim time.

Lifecycle of an entry (each used exactly once; never reused after a crash)::

    free --claim--> claimed --consume--> used      (its card was written out)
                       |------settle/burn--> burned (anything else: a crash,
                       |                            a rejected card, a rerun)
                       `--release--> free  (only by the claimer that holds it,
                                            for entries it never handed out)

A claim records ``batch_id``, ``shard`` and a ``claimer`` id.  The private
parts of ``used`` and ``burned`` entries are erased (``secure_delete``); the
public key hash stays for uniqueness and evidence.  A shard (re)starting
burns every entry still claimed for it (:meth:`KeyPool.burn_claimed`): an
entry that may have been written out by a crashed run is never handed out
again.

Claims are atomic across processes: SQLite ``BEGIN IMMEDIATE`` then
``UPDATE ... WHERE id IN (SELECT ... state='free' LIMIT n) RETURNING``, in
chunks (default 64) to amortise the transaction.

Example:
    >>> pool = KeyPool(tmp / "keypool.db")                        # doctest: +SKIP
    >>> spec = PoolSpec.of("rsa", 1152, 3)
    >>> spec.name
    'rsa-1152-e3'
    >>> fill(store, pool, spec, store.active("demo-tk"), 100, actor="ops")  # doctest: +SKIP
    >>> source = PoolIccSource(pool, store, ClaimTag("b1", "0", "w1"))      # doctest: +SKIP
    >>> pair = source("rsa", 1152, 3, store.active("demo-tk"))             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import (
    CardprepError,
    InvalidInputError,
    KeyNotFoundError,
    KeyPoolEmptyError,
    KeyPoolError,
)
from pipeline.io.atomic import ensure_private_file
from pipeline.io.workers import exit_with_parent
from pipeline.keys.model import (
    Exportability,
    IccKeyPair,
    KeyAlgorithm,
    KeyRef,
    KeyRole,
    KeyUsage,
)
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore

__all__ = [
    "DEFAULT_CHUNK",
    "DELIVER_BATCH",
    "MAC_PURPOSE",
    "MAX_CHUNK",
    "POOL_KEY_OWNER",
    "ClaimTag",
    "DryPolicy",
    "IccSource",
    "KeyPool",
    "PoolEntry",
    "PoolIccSource",
    "PoolSpec",
    "PoolState",
    "PoolStatus",
    "entry_message",
    "fill",
    "pool_key_label",
    "pool_path",
    "storage_key",
]

DEFAULT_CHUNK = 16  # first claim; later claims double up to MAX_CHUNK
MAX_CHUNK = 512  # claims double from DEFAULT_CHUNK up to this (fewer commits)
#: Claimed entries are MAC-checked and re-encrypted to the TK this many at a time, as cards
#: take them: a shard's last claim (up to MAX_CHUNK) is mostly released unused, and
#: delivering it whole cost ~40-50 us per entry for nothing.
DELIVER_BATCH = 32
MAC_PURPOSE = "keypool-entry"
POOL_KEY_OWNER = "bureau:keypool"
SCHEMA_VERSION = "1"
RSA_EXPONENTS = (3, 65537)  # EMV Book 2 A2.1.1 / Book 3 ICC keys
RSA_MIN_BITS, RSA_MAX_BITS = 1024, 1984  # EMV ICC moduli (Book 2 A2.1.1: at most 1984 bits)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL, storage TEXT NOT NULL, wrapped_under TEXT NOT NULL,
    state TEXT NOT NULL,
    pk_sha256 TEXT NOT NULL UNIQUE,
    public_key BLOB, public_exponent BLOB, parts BLOB, part_lengths TEXT, mac BLOB,
    created_at TEXT NOT NULL, claimed_at TEXT, settled_at TEXT,
    batch_id TEXT, shard TEXT, claimer TEXT
);
CREATE INDEX IF NOT EXISTS entries_free ON entries (spec, storage, id) WHERE state = 'free';
CREATE INDEX IF NOT EXISTS entries_claimed ON entries (batch_id, shard) WHERE state = 'claimed';
"""

#: The erase applied to used and burned entries (public key hash kept).
_ERASE = "public_key=NULL, public_exponent=NULL, parts=NULL, part_lengths=NULL, mac=NULL"


class PoolState(Enum):
    """State of one pool entry (see the module docstring's lifecycle)."""

    FREE = "free"
    CLAIMED = "claimed"
    USED = "used"
    BURNED = "burned"


class DryPolicy(Enum):
    """What a card does when the pool has no free entry (product profile policy)."""

    INLINE = "inline"  # generate the pair in the key store, as without a pool (default)
    FAIL = "fail"  # raise KeyPoolEmptyError: the shard fails, nothing is written


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool: ICC key algorithm, modulus size and public exponent.

    SM2 pools are ``bits=256, exponent=0``.  Use :meth:`of` to normalise.

    Example:
        >>> PoolSpec.of("sm2", None, None).name, PoolSpec.of("rsa", 1152, 65537).name
        ('sm2-256', 'rsa-1152-e65537')
    """

    algorithm: str
    bits: int
    exponent: int

    @classmethod
    def of(cls, algorithm: str, bits: int | None, exponent: int | None) -> PoolSpec:
        """Validate and normalise the arguments of ``generate_icc_key_pair``."""
        if algorithm == "sm2":
            if bits not in (None, 256) or exponent not in (None, 0):
                raise InvalidInputError("bits", "an SM2 pool is 256 bits and takes no exponent")
            return cls("sm2", 256, 0)
        if algorithm != "rsa":
            raise InvalidInputError("algorithm", f"expected 'rsa' or 'sm2', got {algorithm!r}")
        if not isinstance(bits, int) or not RSA_MIN_BITS <= bits <= RSA_MAX_BITS or bits % 8:
            raise InvalidInputError(
                "bits", f"RSA ICC keys are {RSA_MIN_BITS}..{RSA_MAX_BITS} bits in bytes, got {bits}"
            )
        if exponent is None or exponent not in RSA_EXPONENTS:
            raise InvalidInputError("exponent", f"expected 3 or 65537, got {exponent}")
        return cls("rsa", bits, exponent)

    @classmethod
    def parse(cls, name: str) -> PoolSpec:
        """Inverse of :attr:`name` (``"rsa-1152-e3"``, ``"sm2-256"``).

        Example:
            >>> PoolSpec.parse("rsa-1152-e3")
            PoolSpec(algorithm='rsa', bits=1152, exponent=3)
        """
        parts = name.split("-")
        try:
            if parts[0] == "sm2" and len(parts) == 2:
                return cls.of("sm2", int(parts[1]), None)
            if parts[0] == "rsa" and len(parts) == 3 and parts[2].startswith("e"):
                return cls.of("rsa", int(parts[1]), int(parts[2][1:]))
        except ValueError:
            pass
        raise InvalidInputError("spec", f"expected rsa-<bits>-e<exponent> or sm2-256, got {name!r}")

    @property
    def name(self) -> str:
        """Stable text form, used as the database key."""
        if self.algorithm == "sm2":
            return "sm2-256"
        return f"rsa-{self.bits}-e{self.exponent}"

    @property
    def generate_args(self) -> tuple[str, int | None, int | None]:
        """``(algorithm, bits, exponent)`` as ``KeyStore.generate_icc_key_pair`` takes them."""
        if self.algorithm == "sm2":
            return "sm2", None, None
        return "rsa", self.bits, self.exponent


@dataclass(frozen=True, slots=True)
class ClaimTag:
    """Who claims: the batch, the shard and one claimer (a worker process) id."""

    batch_id: str
    shard: str
    claimer: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """A claimed entry: the pair with its private part still under the pool key."""

    id: int
    spec: PoolSpec
    pair: IccKeyPair
    mac: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Counts of one pool (spec + storage key label)."""

    spec: str
    storage: str
    free: int = 0
    claimed: int = 0
    used: int = 0
    burned: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (counts only)."""
        return {
            "spec": self.spec, "storage": self.storage, "free": self.free,
            "claimed": self.claimed, "used": self.used, "burned": self.burned,
        }  # fmt: skip


def pool_key_label(tk_algorithm: KeyAlgorithm) -> str:
    """Label of the pool storage key for entries delivered under a TK of ``tk_algorithm``.

    Example:
        >>> pool_key_label(KeyAlgorithm.TDES2), pool_key_label(KeyAlgorithm.SM4)
        ('icc-pool-tdes2', 'icc-pool-sm4')
    """
    return f"icc-pool-{tk_algorithm.value}"


def storage_key(store: KeyStore, tk: KeyRef, *, actor: str | None = None) -> KeyRef:
    """The active pool storage key matching ``tk``'s algorithm (``tk`` must have role TK).

    With ``actor`` it is created when missing (``store.generate``: AES/3DES/SM4
    like the TK, usage K0, role KEK, non-exportable, audited by the store);
    without, a missing key raises :class:`~pipeline.errors.KeyNotFoundError`.
    """
    record = store.get(tk)
    if record.role is not KeyRole.TK:
        raise KeyPoolError(
            str(tk), f"has role {record.role.value}: the pool is chosen by a transport key (tk)"
        )
    algorithm = record.algorithm
    if not algorithm.is_symmetric:
        raise KeyPoolError(str(tk), f"is {algorithm.value}: a TK is a block-cipher key")
    label = pool_key_label(algorithm)
    try:
        return store.active(label)
    except KeyNotFoundError:
        if actor is None:
            raise
    record = store.generate(
        label, algorithm, KeyUsage.K0, KeyRole.KEK, POOL_KEY_OWNER, actor=actor,
        exportability=Exportability.N, mode_of_use="N",
    )  # fmt: skip
    return record.ref


def pool_path(settings: Settings) -> Path:
    """Where the pool database lives: ``key_store.pool_path``, else beside the key store.

    Example:
        >>> from pipeline.keys.settings import parse_settings
        >>> str(pool_path(parse_settings({"key_store": {"path": "var/k/keys.db"}})))
        'var/k/keypool.db'
    """
    raw = settings.raw.get("key_store") or {}
    configured = raw.get("pool_path") if isinstance(raw, dict) else None
    if configured:
        return Path(str(configured))
    return settings.key_store.path.with_name("keypool.db")


def _lp(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


@functools.lru_cache(maxsize=64)
def _message_head(spec_name: str, storage: KeyRef) -> bytes:
    """The fields an entry's MAC covers that a pool and its storage key fix (spec, key ref)."""
    return _lp(spec_name.encode()) + _lp(str(storage).encode())


def _message(head: bytes, public_key: bytes, exponent: bytes, parts: Sequence[bytes]) -> bytes:
    """:func:`entry_message` from its :func:`_message_head` and the entry's own fields."""
    out = [head, len(public_key).to_bytes(4, "big"), public_key]
    out += (len(exponent).to_bytes(4, "big"), exponent)
    for part in parts:
        out += (len(part).to_bytes(4, "big"), part)
    return b"".join(out)


def entry_message(spec: PoolSpec, pair: IccKeyPair) -> bytes:
    """The bytes an entry's MAC covers: spec, storage key ref, public and wrapped private parts.

    Length-prefixed, so no two different entries share a message.

    Example:
        >>> pair = IccKeyPair("sm2", b"P" * 64, b"", (b"D" * 32,), KeyRef("icc-pool-sm4", 1))
        >>> entry_message(PoolSpec.of("sm2", None, None), pair)[:11]
        b'\\x00\\x00\\x00\\x07sm2-256'
    """
    head = _message_head(spec.name, pair.wrapped_under)
    return _message(head, pair.public_key, pair.public_exponent, pair.private_under_tk)


@functools.lru_cache(maxsize=64)
def _ref(text: str) -> KeyRef:
    return KeyRef.parse(text)


@functools.lru_cache(maxsize=64)
def _lengths(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


#: A claimed entry as :class:`PoolIccSource` keeps it until delivery (no objects built):
#: id, storage key, public key, public exponent, private parts under the storage key, MAC.
_Claimed = tuple[int, KeyRef, bytes, bytes, tuple[bytes, ...], bytes]
#: A source's queue of one (spec, storage label, TK): its key and its delivered pairs.
_Queue = tuple[tuple[PoolSpec, str, KeyRef], deque[tuple[int, IccKeyPair]]]


def _claimed(row: Sequence[Any]) -> _Claimed:
    """One claimed row (``id, wrapped_under, public_key, public_exponent, parts,
    part_lengths, mac``) with its private parts cut at their stored lengths."""
    blob, offset, parts = bytes(row[4]), 0, []
    for length in _lengths(row[5]):
        parts.append(blob[offset : offset + length])
        offset += length
    if offset != len(blob):
        raise KeyPoolError(f"pool entry {row[0]}", "private part lengths do not add up")
    return int(row[0]), _ref(row[1]), row[2], row[3], tuple(parts), row[6]


class KeyPool:
    """The pool database (SQLite, WAL, ``secure_delete``); one object per process.

    Example:
        >>> pool = KeyPool(tmp / "keypool.db")                        # doctest: +SKIP
        >>> [s.as_dict() for s in pool.status()]                      # doctest: +SKIP
        [{'spec': 'rsa-1152-e3', 'storage': 'icc-pool-tdes2', 'free': 100, ...}]
    """

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            ensure_private_file(self.path)  # entries are keys (encrypted): owner only
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=timeout)
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
        except sqlite3.Error as exc:
            raise KeyPoolError("pool_path", f"cannot open {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> KeyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyPool({self.path})"

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- filling ----------------------------------------------------------------------

    def add(self, spec: PoolSpec, entries: Sequence[tuple[IccKeyPair, bytes]]) -> int:
        """Insert ``(pair, mac)`` entries as free; returns how many were added.

        Every pair must be of ``spec``'s algorithm and under one storage key;
        a public key already in the pool (any state) is refused.
        """
        now, rows = _now(), []
        for pair, mac in entries:
            if pair.algorithm != spec.algorithm:
                raise KeyPoolError("algorithm", f"{pair.algorithm} pair offered to {spec.name}")
            rows.append((
                spec.name, pair.wrapped_under.label, str(pair.wrapped_under),
                PoolState.FREE.value, hashlib.sha256(pair.public_key).hexdigest(),
                pair.public_key, pair.public_exponent, b"".join(pair.private_under_tk),
                ",".join(str(len(p)) for p in pair.private_under_tk), mac, now,
            ))  # fmt: skip
        try:
            with self._tx():
                self._conn.executemany(
                    "INSERT INTO entries (spec, storage, wrapped_under, state, pk_sha256, "
                    "public_key, public_exponent, parts, part_lengths, mac, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.IntegrityError:
            raise KeyPoolError(spec.name, "a public key is already in the pool: refused") from None
        return len(rows)

    # --- claiming -----------------------------------------------------------------------

    def claim(self, spec: PoolSpec, storage: str, count: int, tag: ClaimTag) -> list[PoolEntry]:
        """Atomically move up to ``count`` free entries to ``claimed`` for ``tag``.

        Returns fewer (or none) when the pool runs low.  Safe across processes:
        the select and the update happen in one ``BEGIN IMMEDIATE`` transaction.
        """
        return [
            PoolEntry(c[0], spec, IccKeyPair(spec.algorithm, c[2], c[3], c[4], c[1]), c[5])
            for c in self._claim(spec, storage, count, tag)
        ]

    def _claim(self, spec: PoolSpec, storage: str, count: int, tag: ClaimTag) -> list[_Claimed]:
        """:meth:`claim` without the objects: what :class:`PoolIccSource` keeps until delivery."""
        if count < 1:
            raise InvalidInputError("count", f"must be >= 1, got {count}")
        with self._tx():
            rows = self._conn.execute(
                "UPDATE entries SET state='claimed', claimed_at=?, batch_id=?, shard=?, "
                "claimer=? WHERE id IN (SELECT id FROM entries WHERE spec=? AND storage=? "
                "AND state='free' ORDER BY id LIMIT ?) "
                "RETURNING id, wrapped_under, public_key, public_exponent, parts, "
                "part_lengths, mac",
                (_now(), tag.batch_id, tag.shard, tag.claimer, spec.name, storage, count),
            ).fetchall()
        rows.sort(key=lambda r: int(r[0]))
        return [_claimed(row) for row in rows]

    def release(self, ids: Iterable[int], tag: ClaimTag) -> int:
        """Return entries this claimer holds and never handed out to ``free``.

        Only rows still ``claimed`` by exactly ``tag`` move; returns the count.
        """
        wanted = [(i, tag.batch_id, tag.shard, tag.claimer) for i in ids]
        if not wanted:
            return 0
        with self._tx():
            before = self._conn.total_changes
            self._conn.executemany(
                "UPDATE entries SET state='free', claimed_at=NULL, batch_id=NULL, shard=NULL, "
                "claimer=NULL WHERE id=? AND state='claimed' AND batch_id=? AND shard=? "
                "AND claimer=?",
                wanted,
            )
            return self._conn.total_changes - before

    # --- settling -------------------------------------------------------------------------

    def consume(self, batch_id: str, shard: str, public_key_sha256: Iterable[str]) -> int:
        """Mark the entries whose cards were written out as ``used`` (private parts erased).

        ``public_key_sha256`` are the hex SHA-256 of the ICC public keys of the
        shard's prepared cards (``PreparedCard.icc_public_key_sha256``); keys not
        from the pool are ignored.  Returns how many entries became used.
        """
        with self._tx():
            claimed = self._conn.execute(
                "SELECT 1 FROM entries WHERE state='claimed' AND batch_id=? AND shard=? LIMIT 1",
                (batch_id, shard),
            ).fetchone()
            if claimed is None:  # no card of the shard took a pool key (issue 7: SM2 shards
                return 0  # of 5,000 cards spent ~20 ms here on updates matching nothing)
            now = _now()  # one settle, one time
            rows = [(now, h, batch_id, shard) for h in public_key_sha256]
            before = self._conn.total_changes
            self._conn.executemany(
                f"UPDATE entries SET state='used', settled_at=?, {_ERASE} "  # noqa: S608
                "WHERE pk_sha256=? AND state='claimed' AND batch_id=? AND shard=?",
                rows,
            )
            return self._conn.total_changes - before

    def burn_claimed(
        self, batch_id: str | None = None, shard: str | None = None, *, older_than: float = 0.0
    ) -> int:
        """Burn every entry still claimed (for ``batch_id`` / ``shard`` when given).

        Call it when a shard (re)starts, after its output is settled, and from
        ``cardprep keypool burn``.  ``older_than`` (seconds) skips younger claims.
        Returns the count; the private parts are erased.
        """
        sql = f"UPDATE entries SET state='burned', settled_at=?, {_ERASE} WHERE state='claimed'"  # noqa: S608
        params: list[Any] = [_now()]
        if batch_id is not None:
            sql += " AND batch_id=?"
            params.append(batch_id)
        if shard is not None:
            sql += " AND shard=?"
            params.append(shard)
        if older_than > 0:
            cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
            sql += " AND claimed_at < ?"
            params.append(cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        with self._tx():
            burned = self._conn.execute(sql, params).rowcount
        if burned:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(burned)

    def settle(self, batch_id: str, shard: str, public_key_sha256: Iterable[str]) -> dict[str, int]:
        """After a shard's output is durably written: consume what was used, burn the rest.

        Call it only once every source of the shard was closed or its process
        ended: an entry still held in a worker's memory would be burned here.

        Example:
            >>> hashes = [c.icc_public_key_sha256 for c in cards]   # doctest: +SKIP
            >>> pool.settle("9f3a...", "0", hashes)                 # doctest: +SKIP
            {'used': 998, 'burned': 2}
        """
        used = self.consume(batch_id, shard, public_key_sha256)
        burned = self.burn_claimed(batch_id, shard)
        return {"used": used, "burned": burned}

    # --- reading --------------------------------------------------------------------------

    def free_count(self, spec: PoolSpec, storage: str) -> int:
        """Free entries of one pool."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM entries WHERE spec=? AND storage=? AND state='free'",
            (spec.name, storage),
        ).fetchone()
        return int(row[0])

    def status(self) -> list[PoolStatus]:
        """Counts per (spec, storage key) and state, sorted by spec then storage."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for spec, storage, state, n in self._conn.execute(
            "SELECT spec, storage, state, COUNT(*) FROM entries GROUP BY spec, storage, state"
        ):
            counts.setdefault((spec, storage), {})[state] = int(n)
        return [
            PoolStatus(spec, storage, **{s.value: c.get(s.value, 0) for s in PoolState})
            for (spec, storage), c in sorted(counts.items())
        ]

    def entry_state(self, entry_id: int) -> PoolState:
        """The state of one entry (for tests and investigations)."""
        row = self._conn.execute("SELECT state FROM entries WHERE id=?", (entry_id,)).fetchone()
        if row is None:
            raise KeyPoolError("entry", f"no pool entry {entry_id}")
        return PoolState(row[0])


# --- taking ICC keys for cards ----------------------------------------------------------------


class IccSource(Protocol):
    """Where a card preparer takes its ICC key pairs (signature of ``generate_icc_key_pair``)."""

    def __call__(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair: ...


class PoolIccSource:
    """An :class:`IccSource` that takes pairs from the pool, claiming ``chunk`` at a time.

    Claims double from ``chunk`` to ``max_chunk`` (fewer commits); the claimed
    entries are delivered ``deliver`` at a time as cards need them: each pair
    is checked against its MAC and re-encrypted from the pool key to ``tk``
    inside the store (``store.translate``, one call per delivery).  When the pool is dry:
    ``DryPolicy.INLINE`` generates the pair in the store, ``DryPolicy.FAIL``
    raises :class:`~pipeline.errors.KeyPoolEmptyError` (a KeyStoreError, so
    the card preparer stops the shard).  :meth:`close` releases entries claimed
    but never handed out; without it (a crash) they stay claimed and are burned
    when the shard settles or restarts.

    Example:
        >>> source = PoolIccSource(pool, store, ClaimTag(batch_id, "3"))   # doctest: +SKIP
        >>> preparer = CardPreparer(profile, store, keys, icc_source=source)  # doctest: +SKIP
    """

    def __init__(
        self,
        pool: KeyPool,
        store: KeyStore,
        tag: ClaimTag,
        *,
        chunk: int = DEFAULT_CHUNK,
        max_chunk: int = MAX_CHUNK,
        on_empty: DryPolicy = DryPolicy.INLINE,
        deliver: int = DELIVER_BATCH,
    ) -> None:
        if not 1 <= chunk <= max_chunk:
            raise InvalidInputError("chunk", f"must be 1..max_chunk ({max_chunk}), got {chunk}")
        if deliver < 1:
            raise InvalidInputError("deliver", f"must be >= 1, got {deliver}")
        self.pool, self.store, self.tag = pool, store, tag
        self.chunk, self.max_chunk, self.on_empty = chunk, max_chunk, on_empty
        self.deliver = deliver
        #: claimed, not yet checked or re-encrypted
        self._pending: dict[tuple[PoolSpec, str, KeyRef], deque[_Claimed]] = {}
        #: delivered to the TK, not yet handed to a card
        self._ready: dict[tuple[PoolSpec, str, KeyRef], deque[tuple[int, IccKeyPair]]] = {}
        self._next: dict[tuple[PoolSpec, str, KeyRef], int] = {}
        self._dry: dict[tuple[PoolSpec, str, KeyRef], int] = {}
        self._storage: dict[KeyRef, str] = {}
        #: the last request (the very objects passed) and its queue: a preparer asks with
        #: the same arguments for every card, so its next call needs no validation or hashing
        self._last: tuple[str, int | None, int | None, KeyRef, _Queue] | None = None
        self.claimed = 0
        self.handed = 0
        self.inline = 0

    def _storage_label(self, tk: KeyRef) -> str:
        label = self._storage.get(tk)
        if label is None:
            label = pool_key_label(self.store.get(tk).algorithm)
            self._storage[tk] = label
        return label

    def __call__(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair:
        """The next pair for ``(algorithm, bits, exponent)``, private part under ``tk``."""
        last = self._last
        if (  # the same objects as the last call: validated and resolved then
            last is not None
            and last[0] is algorithm
            and last[1] is bits
            and last[2] is exponent
            and last[3] is tk
        ):
            key, ready = last[4]
        else:
            spec = PoolSpec.of(algorithm, bits, exponent)
            key = (spec, self._storage_label(tk), tk)
            ready = self._ready.setdefault(key, deque())
            self._last = (algorithm, bits, exponent, tk, (key, ready))
        if not ready:
            self._next_delivery(key, ready)
        if not ready:
            if self.on_empty is DryPolicy.FAIL:
                raise KeyPoolEmptyError(
                    key[0].name, f"no free entry under {key[1]} and the profile says fail"
                )
            self.inline += 1
            return self.store.generate_icc_key_pair(algorithm, bits, exponent, tk)
        self.handed += 1
        return ready.popleft()[1]

    def _next_delivery(
        self, key: tuple[PoolSpec, str, KeyRef], ready: deque[tuple[int, IccKeyPair]]
    ) -> None:
        """Deliver the next ``deliver`` claimed entries to the TK, claiming first if none left."""
        pending = self._pending.setdefault(key, deque())
        if not pending:
            self._refill(key, pending)
        batch = [pending.popleft() for _ in range(min(self.deliver, len(pending)))]
        if batch:
            ready.extend(self._deliver(batch, key[0], key[2]))

    def _refill(self, key: tuple[PoolSpec, str, KeyRef], pending: deque[_Claimed]) -> None:
        """Claim the next chunk (doubling each time up to ``max_chunk``) into ``pending``.

        After the pool ran dry it is asked again only every ``chunk`` cards.
        """
        wait_cards = self._dry.get(key, 0)
        if wait_cards and self.on_empty is DryPolicy.INLINE:  # FAIL: always ask before failing
            self._dry[key] = wait_cards - 1
            return
        size = self._next.get(key, self.chunk)
        entries = self.pool._claim(key[0], key[1], size, self.tag)
        self.claimed += len(entries)
        self._next[key] = min(self.max_chunk, size * 2)
        if len(entries) < size:
            self._dry[key] = self.chunk
        pending.extend(entries)

    def _deliver(
        self, entries: Sequence[_Claimed], spec: PoolSpec, tk: KeyRef
    ) -> list[tuple[int, IccKeyPair]]:
        """Check each entry's MAC, then re-encrypt all private parts to ``tk`` in one call.

        ECB is block by block, so translating the concatenation and cutting it at
        the same offsets equals translating each part (pool key and TK share the
        algorithm, hence the block size).  Every entry's MAC is checked before any
        of them is translated.
        """
        verify, name = self.store.verify_mac, spec.name
        by_key: dict[KeyRef, list[_Claimed]] = {}
        last: KeyRef | None = None  # entries share their storage key object (_ref): no hashing
        head, group = b"", []
        for entry in entries:
            entry_id, storage, public_key, exponent, parts, mac = entry
            if storage is not last:
                head, group = _message_head(name, storage), by_key.setdefault(storage, [])
                last = storage
            if not verify(storage, _message(head, public_key, exponent, parts), mac, MAC_PURPOSE):
                raise KeyPoolError(f"pool entry {entry_id}", "MAC does not verify (edited pool?)")
            group.append(entry)
        out: list[tuple[int, IccKeyPair]] = []
        algorithm = spec.algorithm
        for storage, group in by_key.items():
            blob = b"".join([p for e in group for p in e[4]])
            moved, offset = self.store.translate(blob, storage, tk), 0
            for entry_id, _, public_key, exponent, parts, _ in group:
                delivered = []
                for part in parts:
                    end = offset + len(part)
                    delivered.append(moved[offset:end])
                    offset = end
                pair = IccKeyPair(algorithm, public_key, exponent, tuple(delivered), tk)
                out.append((entry_id, pair))
        return out

    def close(self) -> int:
        """Release the claimed entries never handed out (delivered or not); returns how many."""
        ids = [entry_id for q in self._ready.values() for entry_id, _ in q]
        ids += [entry[0] for q in self._pending.values() for entry in q]
        self._ready.clear()
        self._pending.clear()
        self._last = None  # its queue was one of those cleared
        return self.pool.release(ids, self.tag)

    def stats(self) -> dict[str, int]:
        """Counts: claimed from the pool, handed to cards, generated inline."""
        return {"claimed": self.claimed, "handed": self.handed, "inline": self.inline}


# --- filling -----------------------------------------------------------------------------------

#: Pairs per task handed to a fill worker (RSA ~28 ms each, SM2 ~0.2 ms each).
_FILL_TASK = {"rsa": 8, "sm2": 256}
_worker_store: KeyStore | None = None


def _generate_entries(
    store: KeyStore, spec: PoolSpec, storage: KeyRef, count: int
) -> list[tuple[IccKeyPair, bytes]]:
    out = []
    for _ in range(count):
        pair = store.generate_icc_key_pair(*spec.generate_args, storage)
        out.append((pair, store.mac(storage, entry_message(spec, pair), MAC_PURPOSE)))
    return out


def _worker_init(handle: Any, parent: int) -> None:
    global _worker_store  # noqa: PLW0603 (one store per worker process)
    exit_with_parent(parent)  # a SIGKILLed `keypool fill` leaves no orphan holding the store
    _worker_store = handle.open()


def _worker_generate(spec: PoolSpec, storage: KeyRef, count: int) -> list[tuple[IccKeyPair, bytes]]:
    if _worker_store is None:  # pragma: no cover - initializer always runs first
        raise KeyPoolError("worker", "fill worker has no key store")
    return _generate_entries(_worker_store, spec, storage, count)


def fill(
    store: KeyStore,
    pool: KeyPool,
    spec: PoolSpec,
    tk: KeyRef,
    count: int,
    *,
    actor: str,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate ``count`` entries for ``spec`` under the pool key matching ``tk``.

    Generation runs in the key store, on ``workers`` processes (default: every
    core; the store must offer ``worker_handle()``, else one process); entries
    are MACed by the workers and inserted by this process as they arrive.
    ``progress(done, count)`` is called after each insert.  Audited once in the
    store's trail (``keypool.fill``).  Returns JSON-able counts.

    Example:
        >>> fill(store, pool, PoolSpec.of("sm2", None, None), store.active("demo-tk-sm4"),
        ...      1000, actor="ops")                                      # doctest: +SKIP
        {'spec': 'sm2-256', 'storage': 'icc-pool-sm4@v1', 'added': 1000, ...}
    """
    if count < 0:
        raise InvalidInputError("count", f"must be >= 0, got {count}")
    storage = storage_key(store, tk, actor=actor)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    handle_factory = getattr(store, "worker_handle", None)
    task = _FILL_TASK[spec.algorithm]
    start, done = time.monotonic(), 0

    def insert(batch: Sequence[tuple[IccKeyPair, bytes]]) -> None:
        nonlocal done
        done += pool.add(spec, batch)
        if progress is not None:
            progress(done, count)

    try:
        if workers == 1 or handle_factory is None or count <= task:
            while done < count:
                insert(_generate_entries(store, spec, storage, min(task, count - done)))
        else:
            _fill_parallel(handle_factory(), spec, storage, count, task, workers, insert)
    except CardprepError as exc:
        _audit(store, actor, "keypool.fill", spec.name, f"failed: {exc}", added=done)
        raise
    seconds = round(time.monotonic() - start, 3)
    result = {
        "spec": spec.name, "storage": str(storage), "added": done,
        "seconds": seconds, "free": pool.free_count(spec, storage.label),
    }  # fmt: skip
    _audit(store, actor, "keypool.fill", spec.name, "ok", **result)
    return result


def _fill_parallel(  # noqa: PLR0917 (internal)
    handle: Any,
    spec: PoolSpec,
    storage: KeyRef,
    count: int,
    task: int,
    workers: int,
    insert: Callable[[Sequence[tuple[IccKeyPair, bytes]]], None],
) -> None:
    """Keep ``2 * workers`` generation tasks in flight; insert results as they complete."""
    sizes = [task] * (count // task) + ([count % task] if count % task else [])
    init_args = (handle, os.getpid())
    with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=init_args) as ex:
        pending: set[Future[list[tuple[IccKeyPair, bytes]]]] = set()
        queued = iter(sizes)
        for size in queued:
            pending.add(ex.submit(_worker_generate, spec, storage, size))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                insert(future.result())
                size = next(queued, 0)
                if size:
                    pending.add(ex.submit(_worker_generate, spec, storage, size))


def _audit(store: KeyStore, actor: str, action: str, subject: str, result: str, **kw: Any) -> None:
    """Append to the store's audit trail when the backend exposes one (soft store)."""
    trail = getattr(store, "audit_trail", None)
    if trail is not None:
        trail.append(actor, action, subject, result, **kw)
