"""The soft key store: SQLite, every key a TR-31 version D key block under the HMK.

For development and demos only (DESIGN.md "Key store backends"): it refuses
to open when settings say ``environment: production``.

Storage (stdlib ``sqlite3``, WAL journal, ``secure_delete`` on, one
connection per store object):

* ``meta``: schema version, the HMK's KCV (AES-CMAC, 5 bytes), the scrypt
  salt of a demo passphrase HMK, and the inventory MAC (below).
* ``keys``: one row per key version: the record's metadata and
  ``key_block`` = X9.143 / TR-31 version D block under the HMK (AES-256).
  The block's header binds usage, algorithm, mode of use and exportability,
  and a proprietary optional block ``01`` binds ``label@vN``; every unwrap
  checks them against the row, so editing the row cannot repurpose a key.
  Every column of a row (owner, state, custodians, KCV, timestamps, public
  key, certificate, the block itself ...) is bound by ``row_mac`` =
  HMAC-SHA-256 under HKDF(HMK, "cardprep/row-mac") (:mod:`pipeline.keys.rowmac`),
  written on every insert and update and checked on every read; an edited
  row fails with ``label@vN: row MAC mismatch``.  A store made before row
  MACs (schema 1) is migrated when first opened read-write: the column is
  added and the existing rows MACed, audited as ``store.migrate``.  That
  migration trusts the rows as they are at that moment (only their key-block
  binding is re-checked): it is the HMK holder vouching for them, so run it
  where the database has not been exposed; it is refused when the audit
  trail shows the store already had row MACs (a dropped column is tampering).
  RSA private keys are stored as PKCS #8 DER with algorithm ``R``, SM2 as the
  32-byte scalar ``d`` with algorithm ``E`` (X9.143 Table 3), SM4 under the
  proprietary algorithm code ``4``.  After destruction ``key_block`` is NULL.
* ``destruction_evidence``: who destroyed which version when, with the KCV
  and the SHA-256 of the erased block.

Inventory MAC (:mod:`pipeline.keys.inventory`): a row MAC cannot tell an
old, once-valid copy of a row (restored from a backup after the key was
suspended, deactivated or destroyed, still carrying its key block) from the
current one, nor notice a deleted row.  ``meta.inventory_mac`` = HMAC-SHA-256
under HKDF(HMK, "cardprep/inventory-mac") over every other ``meta`` entry,
the ``(label, version, row_mac)`` of every row and every evidence row.  Every
write transaction (``BEGIN IMMEDIATE``) first checks it against the tables,
so tampering is refused rather than blessed, then rewrites it before
``COMMIT``: readers see a row change and its inventory MAC together, and
concurrent writers serialize on the lock.  It is checked in full on open, on
:meth:`SoftKeyStore.refresh`, by ``list()`` and before each write, and again
whenever a re-read record shows that another process wrote (the stored MAC
changed); otherwise each re-read row is compared with the remembered
inventory (one ``meta`` lookup; the cached hot path does no check at all).
A row added, removed or restored, or a ``meta`` or evidence entry edited,
outside the store fails with ``key inventory MAC mismatch``.  A store made
before inventory MACs gets one when first opened read-write, after every row
MAC verifies, audited as ``store.migrate``; refused when the trail shows the
store already had one.  Still not detected: the whole database rolled back
to an older copy (rows and inventory MAC together) -- a consistent older
store; only an anchor outside the database can tell (see
:mod:`pipeline.keys.inventory`).

Hot path (``derive_and_wrap``, ``translate``, ``sign`` ...): the first use of
a :class:`KeyRef` in a process unwraps its block and caches the clear key and
its cipher / deriver / GP diversifier / signer objects and its keyed HMAC and
CMAC contexts (per purpose) in process memory, all dropped with the entry.
The key's record is re-read from the database at most every ``cache_ttl``
seconds (default 5), so a suspension made by another process takes effect
within that time; usage, mode and state are checked against the cached record
on *every* call (the verdict is kept per operation until the record is re-read).
Neither logs nor exceptions ever carry key bytes.

Several processes: open one store per process (SQLite WAL lets readers and
one writer work concurrently).  Data-preparation workers use
:meth:`SoftKeyStore.worker_handle` -> ``handle.open()``, which opens the
database read-only (key use only, no key management).

Example:
    >>> store = SoftKeyStore.create(tmp / "k.db", hmk, actor="ops")   # doctest: +SKIP
    >>> rec = store.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK,
    ...                      "bureau:demo", actor="ops")                # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.audit.trail import AuditTrail
from pipeline.crypto import gp, rsa, sm2, tr31
from pipeline.crypto.aead import AesGcm
from pipeline.crypto.ciphers import Algorithm, BlockCipher, fix_parity
from pipeline.crypto.emv import IccMkDeriver, validate_pan
from pipeline.crypto.kcv import kcv as compute_kcv
from pipeline.crypto.kcv import kcv_function, kcv_method_for
from pipeline.crypto.kdf import hkdf_sha256
from pipeline.crypto.mac import KeyedCmac
from pipeline.crypto.padding import pad_iso9797_m2, unpad_iso9797_m2
from pipeline.crypto.pin import check_pin_block_iso0, pin_block_iso0_to_iso2
from pipeline.errors import (
    AuditError,
    CapabilityError,
    CardprepError,
    CeremonyError,
    InvalidInputError,
    KeyBlockError,
    KeyNotFoundError,
    KeyStateError,
    KeyStoreError,
    KeyUsageError,
)
from pipeline.io.atomic import ensure_private_file
from pipeline.keys.components import (
    MAX_XOR_COMPONENTS,
    MIN_XOR_COMPONENTS,
    shamir_split,
    xor_combine,
    xor_split,
)
from pipeline.keys.hmk import (
    check_hmk,
    hmk_from_passphrase,
    hmk_from_passphrase_file,
    hmk_kcv,
)
from pipeline.keys.inventory import (
    EVIDENCE_FIELDS,
    INVENTORY_META,
    INVENTORY_MISMATCH,
    INVENTORY_SCHEME,
    check_inventory_mac,
    inventory_mac,
    inventory_mac_key,
)
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    IccKeyPair,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
    TranslateCheck,
    WrappedKey,
    check_label,
    rsa_strength_bits,
)
from pipeline.keys.rowmac import (
    ROW_FIELDS,
    ROW_MAC_SCHEME,
    check_row_mac,
    row_mac,
    row_mac_key,
)
from pipeline.keys.settings import Settings
from pipeline.keys.store import CAPABILITIES, StoreAuditSealer
from pipeline.keys.usage import (
    MODE_DIRECTIONS,
    Operation,
    check,
    check_exportable,
    check_strength,
)

__all__ = ["ASYMMETRIC_KCV_METHOD", "SoftKeyStore", "SoftStoreHandle"]

SCHEMA_VERSION = "2"  # 2: keys.row_mac (schema 1 is migrated on open)
#: KCV of a key pair: SHA-256(public key || public exponent), leftmost 3 bytes.
ASYMMETRIC_KCV_METHOD = "sha256-pub"
DEFAULT_AUDIT_LABEL = "audit-mac"
_BINDING_BLOCK = "01"  # proprietary TR-31 optional block: "label@vN"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    label TEXT NOT NULL, version INTEGER NOT NULL,
    algorithm TEXT NOT NULL, bits INTEGER NOT NULL, usage TEXT NOT NULL,
    role TEXT NOT NULL, mode TEXT NOT NULL, exportability TEXT NOT NULL,
    owner TEXT NOT NULL, state TEXT NOT NULL, prev_state TEXT,
    kcv TEXT NOT NULL, kcv_method TEXT NOT NULL, custodians TEXT NOT NULL,
    source TEXT NOT NULL, created_at TEXT NOT NULL, activated_at TEXT,
    updated_at TEXT NOT NULL, destroy_after TEXT, destroyed_at TEXT,
    key_block TEXT, public_key BLOB, public_exponent BLOB, certificate TEXT,
    row_mac TEXT,
    PRIMARY KEY (label, version)
);
CREATE TABLE IF NOT EXISTS destruction_evidence (
    label TEXT NOT NULL, version INTEGER NOT NULL, kcv TEXT NOT NULL,
    kcv_method TEXT NOT NULL, scheduled_by TEXT, destroyed_by TEXT NOT NULL,
    destroyed_at TEXT NOT NULL, key_block_sha256 TEXT NOT NULL, method TEXT NOT NULL,
    PRIMARY KEY (label, version)
);
"""

_S = KeyState
#: action -> (states it may start from, target state; None = back to prev_state)
_TRANSITIONS: dict[str, tuple[frozenset[KeyState], KeyState | None]] = {
    "activate": (frozenset({_S.PRE_ACTIVE}), _S.ACTIVE),
    "suspend": (frozenset({_S.ACTIVE, _S.DEACTIVATED}), _S.SUSPENDED),
    "resume": (frozenset({_S.SUSPENDED}), None),
    "retire": (frozenset({_S.PRE_ACTIVE, _S.ACTIVE, _S.DEACTIVATED, _S.SUSPENDED}), _S.RETIRED),
    "schedule_destruction": (
        frozenset({_S.PRE_ACTIVE, _S.DEACTIVATED, _S.SUSPENDED, _S.RETIRED}),
        _S.DESTROY_PENDING,
    ),
    "restore": (frozenset({_S.DESTROY_PENDING}), None),
    "destroy": (frozenset({_S.DESTROY_PENDING}), _S.DESTROYED),
}

_SYMMETRIC_ALGORITHM: dict[KeyAlgorithm, Algorithm] = {
    KeyAlgorithm.TDES2: Algorithm.TDES,
    KeyAlgorithm.TDES3: Algorithm.TDES,
    KeyAlgorithm.AES128: Algorithm.AES,
    KeyAlgorithm.AES192: Algorithm.AES,
    KeyAlgorithm.AES256: Algorithm.AES,
    KeyAlgorithm.SM4: Algorithm.SM4,
}

_DERIVATION_OPTION: dict[DerivationMethod, str] = {
    DerivationMethod.OPTION_A: "A",
    DerivationMethod.OPTION_B: "B",
    DerivationMethod.AES: "C",
    DerivationMethod.SM4: "sm4",
}

#: TR-31 header (algorithm code, key length) -> algorithm, for imported blocks.
_TR31_IMPORT: dict[tuple[str, int], KeyAlgorithm] = {
    ("T", 16): KeyAlgorithm.TDES2,
    ("T", 24): KeyAlgorithm.TDES3,
    ("A", 16): KeyAlgorithm.AES128,
    ("A", 24): KeyAlgorithm.AES192,
    ("A", 32): KeyAlgorithm.AES256,
    ("4", 16): KeyAlgorithm.SM4,
}

#: KBPK algorithm -> TR-31 version used for exports.
_EXPORT_VERSION: dict[KeyAlgorithm, str] = {
    KeyAlgorithm.TDES2: "B",
    KeyAlgorithm.TDES3: "B",
    KeyAlgorithm.AES128: "D",
    KeyAlgorithm.AES192: "D",
    KeyAlgorithm.AES256: "D",
}

_PURPOSE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_OWNER_RE = re.compile(r"^[a-z]+:[A-Za-z0-9._-]{1,64}$")
_DEFAULT_RSA_EXPONENT = 3  # EMV issuer keys: 3 or 65537 (Book 2 A2.1)
_SM2_STRENGTH = KeyAlgorithm.SM2.strength_bits()  # of an ICC SM2 key (256-bit curve)
_PURPOSES_KEPT = 64  # checked purpose strings a store remembers (SoftKeyStore._purpose)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _symmetric(algorithm: KeyAlgorithm) -> Algorithm:
    try:
        return _SYMMETRIC_ALGORITHM[algorithm]
    except KeyError:
        raise KeyUsageError("algorithm", f"{algorithm.value} is not a block cipher key") from None


def _asymmetric_kcv(public_key: bytes, public_exponent: bytes | None) -> bytes:
    return hashlib.sha256(public_key + (public_exponent or b"")).digest()[:3]


def _passphrase_hmk(passphrase_file: Path | None, passphrase: bytes | None, salt: bytes) -> bytes:
    """DEMO HMK from ``passphrase`` if given, else from the first line of ``passphrase_file``."""
    if passphrase is not None:
        return hmk_from_passphrase(passphrase, salt)
    if passphrase_file is None:
        raise KeyStoreError("passphrase_file", "no passphrase file and no passphrase given")
    return hmk_from_passphrase_file(passphrase_file, salt)


def _ecb_wrapper(cipher: BlockCipher) -> Callable[[bytes], bytes]:
    """ECB encryption under ``cipher``'s reused context, ISO/IEC 9797-1 method 2
    padding only when ``data`` is not whole blocks (so the context never buffers)."""
    bs = cipher.block_size  # the key algorithm's (_symmetric)
    encrypt = cipher.ecb_encryptor()

    def wrap(data: bytes) -> bytes:
        return encrypt(data if not len(data) % bs else pad_iso9797_m2(data, bs))

    return wrap


#: KCV method -> its 3-byte :func:`~pipeline.crypto.kcv.kcv_function`: the KCVs a card
#: needs (up to 11, each under a fresh key) skip the method and length checks
_KCV3: dict[str, Callable[[bytes], bytes]] = {}
_KCV3_KEPT = 16  # a store sees a handful of methods


def _kcv3(method: str) -> Callable[[bytes], bytes]:
    """The 3-byte KCV function of ``method`` (``compute_kcv(key, method)`` for any key).

    Raises as :func:`~pipeline.crypto.kcv.kcv` for an unknown method.

    Example:
        >>> _kcv3("tdes")(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
        '08D7B4'
    """
    function = _KCV3.get(method) if type(method) is str else None
    if function is None:
        function = kcv_function(method)
        if type(method) is str and len(_KCV3) < _KCV3_KEPT:
            _KCV3[method] = function
    return function


def _check_purpose(purpose: str) -> bytes:
    if not isinstance(purpose, str) or not _PURPOSE_RE.match(purpose):
        raise InvalidInputError("purpose", f"expected 1..64 of a-z 0-9 . _ -, got {purpose!r}")
    return purpose.encode()


def _check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 128:
        raise InvalidInputError("actor", "a custodian or service id is required")
    return actor


def _subject(record: KeyRecord) -> str:
    return f"{record.ref} kcv={record.kcv.hex().upper()}"


@dataclass(slots=True)
class _Loaded:
    """A key in process memory: record (refreshed every ``cache_ttl``), clear key, objects."""

    record: KeyRecord
    checked_at: float
    key: bytes | None = field(default=None, repr=False)
    objects: dict[Any, Any] = field(default_factory=dict, repr=False)
    #: operations ``usage.check`` passed for *this* ``record``; emptied with every
    #: refresh of the record, so a verdict never outlives the record it was made on.
    #: A list: a key is used for one to three operations, and ``in`` finds an
    #: Operation by identity where a set would hash it (``Enum.__hash__`` is Python)
    permitted: list[Operation] = field(default_factory=list, repr=False)
    #: the block cipher and the output wrapper of a block cipher key, built on first use
    cipher: BlockCipher | None = field(default=None, repr=False)
    wrapper: Callable[[bytes], bytes] | None = field(default=None, repr=False)
    #: the derive plan this IMK entry served last (the others stay in ``objects``)
    plan: _DerivePlan | None = field(default=None, repr=False)
    #: ``strength_bits`` of ``strength_of``, the record it was computed on (:meth:`strength`)
    strength_bits: int = field(default=0, repr=False)
    strength_of: KeyRecord | None = field(default=None, repr=False)

    def strength(self) -> int:
        """``record.strength_bits``, computed once per record (a re-read record recomputes).

        The strength comparisons of ``translate`` and ``diversify_and_wrap`` run
        on every card; the property maps the algorithm through an Enum-keyed table.
        """
        record = self.record
        if self.strength_of is not record:
            self.strength_bits, self.strength_of = record.strength_bits, record
        return self.strength_bits


@dataclass(frozen=True, slots=True)
class _DerivePlan:
    """What ``derive_and_wrap`` settles once per (IMK record, TK record, method)."""

    method: DerivationMethod
    imk_record: KeyRecord
    tk_record: KeyRecord
    derive: Callable[[str, str | None], bytes] = field(repr=False)
    wrap: Callable[[bytes], bytes] = field(repr=False)
    kcv_method: str


@dataclass(frozen=True, slots=True)
class SoftStoreHandle:
    """Picklable recipe for opening the same store read-only in a worker process.

    It carries the HMK (``repr`` hides it): pass it only to worker processes
    of the same host over the process pool's local pipe, never to logs,
    XCom or files.
    """

    path: Path
    audit_path: Path
    hmk: bytes = field(repr=False)
    cache_ttl: float = 5.0

    def open(self) -> SoftKeyStore:
        """Open the store read-only (key use only)."""
        return SoftKeyStore(
            self.path,
            self.hmk,
            audit_path=self.audit_path,
            read_only=True,
            cache_ttl=self.cache_ttl,
        )


class SoftKeyStore:
    """SQLite key store implementing :class:`pipeline.keys.store.KeyStore`.

    Open an existing store with ``SoftKeyStore(path, hmk)``; make a new one
    with :meth:`create`; demos use :meth:`open_with_passphrase`.
    """

    # --- opening ------------------------------------------------------------------

    def __init__(
        self,
        path: Path,
        hmk: bytes,
        *,
        audit_path: Path | None = None,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = _utc_now,
        read_only: bool = False,
        cache_ttl: float = 5.0,
        audit_key_label: str = DEFAULT_AUDIT_LABEL,
    ) -> None:
        if settings is not None and settings.is_production:
            raise KeyStoreError(
                "settings.environment",
                "the soft key store refuses to open when environment is 'production'; "
                "use key_store.backend: pkcs11",
            )
        self.path = Path(path)
        if not self.path.exists():
            raise KeyStoreError("path", f"no key store at {self.path}; create it first")
        self.read_only = read_only
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache: dict[KeyRef, _Loaded] = {}
        #: the inventory last verified or written: its MAC as stored in ``meta``
        #: and ``(label, version) -> row_mac`` of every row it covers
        self._inventory_mac: str | None = None
        self._inventory: dict[tuple[str, int], str] = {}
        self._writing = False  # inside this store's own write transaction
        self._purposes: dict[str, bytes] = {}  # purpose -> its checked bytes (_purpose)
        self._conn = self._connect(self.path, read_only)
        try:
            stored = self._meta("hmk_kcv")
            if stored is None:
                raise KeyStoreError("path", f"{self.path} is not a cardprep key store")
            self._hmk = check_hmk(bytes(hmk), bytes.fromhex(stored))
            self._row_key = row_mac_key(self._hmk)
            self._inventory_key = inventory_mac_key(self._hmk)
        except BaseException:
            self._conn.close()
            raise
        self.audit_path = (
            Path(audit_path) if audit_path else self.path.with_name(self.path.name + ".audit.jsonl")
        )
        self._audit_label = audit_key_label
        sealer = StoreAuditSealer(self, audit_key_label)
        self._trail = AuditTrail(self.audit_path, sealer, clock=clock)
        try:
            self._ensure_row_macs()
            self._ensure_inventory()
        except BaseException:
            self._conn.close()
            raise

    @staticmethod
    def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
        try:
            if read_only:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30
                )
            else:
                ensure_private_file(path)  # 0600, and so are its -wal / -shm files
                conn = sqlite3.connect(path, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise KeyStoreError("path", f"cannot open {path}: {exc}") from None
        return conn

    @classmethod
    def create(
        cls,
        path: Path,
        hmk: bytes,
        *,
        actor: str,
        hmk_custodians: Sequence[str] = (),
        audit_path: Path | None = None,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = _utc_now,
        scrypt_salt: bytes | None = None,
        audit_key_label: str = DEFAULT_AUDIT_LABEL,
        test_only: bool = False,
    ) -> SoftKeyStore:
        """Create a new, empty store protected by ``hmk`` and its audit key.

        Records the HMK's KCV (and the scrypt salt of a demo HMK), generates
        the audit MAC key (AES-256, usage M6, non-exportable) and writes the
        first audit events.  Refuses an existing ``path``.
        """
        _check_actor(actor)
        if settings is not None and settings.is_production:
            raise KeyStoreError(
                "settings.environment",
                "the soft key store refuses to open when environment is 'production'",
            )
        path = Path(path)
        if path.exists():
            raise KeyStoreError("path", f"{path} already exists; refusing to overwrite")
        if len(hmk) != 32:
            raise KeyStoreError("hmk", f"must be 32 bytes (AES-256), got {len(hmk)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path, read_only=False)
        try:
            conn.executescript(_SCHEMA)
            meta = {
                "schema_version": SCHEMA_VERSION,
                "hmk_kcv": hmk_kcv(hmk).hex().upper(),
                "hmk_custodians": json.dumps(list(hmk_custodians)),
                "created_at": _iso(clock()),
            }
            if scrypt_salt is not None:
                meta["scrypt_salt"] = scrypt_salt.hex()
            if test_only:
                meta["test_only"] = "1"
            meta[INVENTORY_META] = inventory_mac(inventory_mac_key(hmk), meta.items(), [], [])
            conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", meta.items())
        finally:
            conn.close()
        store = cls(path, hmk, audit_path=audit_path, clock=clock, audit_key_label=audit_key_label)
        if store.audit_path.exists() and store.audit_path.stat().st_size:
            store.close()
            raise KeyStoreError("audit_path", f"{store.audit_path} already has events")
        audit_record = store._generate_record(
            audit_key_label,
            KeyAlgorithm.AES256,
            KeyUsage.M6,
            KeyRole.AUDIT_MAC,
            "bureau:store",
            bits=None,
            exponent=None,
            exportability=Exportability.N,
            mode_of_use="C",
            activate=True,
        )
        with store._tx():
            store._insert(*audit_record, source="generated", custodians=())
        store._trail.append(
            actor,
            "store.create",
            str(path.name),
            "ok",
            hmk_kcv=meta["hmk_kcv"],
            hmk_custodians=list(hmk_custodians),
            hmk_source="passphrase (demo)" if scrypt_salt is not None else "components",
            row_mac=ROW_MAC_SCHEME,
            inventory_mac=INVENTORY_SCHEME,
        )
        store._trail.append(actor, "key.generate", _subject(audit_record[0]), "ok")
        return store

    @classmethod
    def open_with_passphrase(
        cls,
        path: Path,
        passphrase_file: Path | None,
        *,
        create: bool = False,
        actor: str = "demo",
        audit_path: Path | None = None,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = _utc_now,
        read_only: bool = False,
        test_only: bool = False,
        passphrase: bytes | None = None,
    ) -> SoftKeyStore:
        """DEMO ONLY: open (or create) a store whose HMK comes from a passphrase file via scrypt.

        ``test_only`` (on creation) marks the store as holding public TEST keys,
        which allows :meth:`import_test_key`.  ``passphrase`` (bytes, e.g. an
        Airflow Connection password) is used instead of ``passphrase_file``;
        it is never logged nor put in an error.
        """
        path = Path(path)
        if not path.exists():
            if not create:
                raise KeyStoreError("path", f"no key store at {path}")
            salt = secrets.token_bytes(16)
            hmk = _passphrase_hmk(passphrase_file, passphrase, salt)
            return cls.create(
                path,
                hmk,
                actor=actor,
                audit_path=audit_path,
                settings=settings,
                clock=clock,
                scrypt_salt=salt,
                test_only=test_only,
            )
        conn = cls._connect(path, read_only=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name='scrypt_salt'").fetchone()
        except sqlite3.Error:
            row = None
        finally:
            conn.close()
        if row is None:
            raise KeyStoreError(
                "hmk", f"{path} has no passphrase salt: its HMK enters as components"
            )
        hmk = _passphrase_hmk(passphrase_file, passphrase, bytes.fromhex(row[0]))
        return cls(
            path, hmk, audit_path=audit_path, settings=settings, clock=clock, read_only=read_only
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, create: bool = False, passphrase: bytes | None = None
    ) -> SoftKeyStore:
        """Open the store ``settings.key_store`` describes (passphrase HMK only).

        ``passphrase`` (e.g. the Airflow Connection ``cardprep_keystore``
        password, as bytes) replaces ``key_store.hmk.passphrase_file``.
        """
        ks = settings.key_store
        if settings.is_production:
            raise KeyStoreError(
                "settings.environment",
                "the soft key store refuses to open when environment is 'production'",
            )
        if ks.hmk_source.value != "passphrase_file":
            raise KeyStoreError(
                "key_store.hmk.source",
                "components: enter the HMK components and open SoftKeyStore(path, hmk)",
            )
        if ks.passphrase_file is None and passphrase is None:
            raise KeyStoreError(
                "key_store.hmk.passphrase_file", "not set, and no passphrase was given"
            )
        return cls.open_with_passphrase(
            ks.path, ks.passphrase_file, create=create, audit_path=ks.audit_path,
            settings=settings, passphrase=passphrase,
        )  # fmt: skip

    def worker_handle(self) -> SoftStoreHandle:
        """A picklable handle to reopen this store read-only in a worker process."""
        return SoftStoreHandle(self.path, self.audit_path, self._hmk, self._cache_ttl)

    def close(self) -> None:
        """Close the database and drop every cached key."""
        self._cache.clear()
        self._conn.close()

    def checkpoint(self) -> None:
        """Write the write-ahead log into the database file and empty it, keeping the store open.

        What closing does to the file, for a store that stays open between
        uses (the Airflow hook keeps one per process): no WAL frames are left
        beside the path, so a store file replaced meanwhile (restored from a
        backup, re-created by a ceremony) is opened intact instead of having
        this file's log replayed into it (SQLite finds ``-wal`` by path).

        Example:
            >>> store.checkpoint()  # doctest: +SKIP
        """
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def __enter__(self) -> SoftKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SoftKeyStore({self.path}, read_only={self.read_only})"

    @property
    def audit_trail(self) -> AuditTrail:
        """The key-management audit trail of this store (``verify()`` it)."""
        return self._trail

    def capabilities(self) -> frozenset[str]:
        """Everything in :data:`~pipeline.keys.store.CAPABILITIES` (software does it all)."""
        return CAPABILITIES

    def refresh(self) -> None:
        """Drop cached records and keys (the next use re-reads and re-unwraps); check the inventory.

        Raises :class:`KeyStoreError` ``inventory: key inventory MAC mismatch``
        when a row was added, removed or restored (or a ``meta`` / evidence
        entry edited) outside the store since it was last checked.
        """
        self._cache.clear()
        with self._snapshot():
            self._verify_inventory()

    # --- database helpers ---------------------------------------------------------------

    def _meta(self, name: str) -> str | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    @contextmanager
    def _tx(self, *, check_inventory: bool = True) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``) that keeps the inventory MAC current.

        Under the write lock, the stored inventory MAC is first checked against
        the tables as they are (so a row deleted or restored outside the store
        is refused, never blessed by the rewrite), then recomputed over the
        changed tables and written before ``COMMIT``: another process sees the
        row change and its inventory MAC together, and two writers serialize
        on the lock.  ``check_inventory=False`` is for the migrations, which
        check by themselves.
        """
        if self.read_only:
            raise KeyStoreError("store", "opened read-only (worker handle): key management refused")
        self._conn.execute("BEGIN IMMEDIATE")
        self._writing = True
        try:
            if check_inventory:
                self._verify_inventory()
            yield
            mac, inventory = self._seal_inventory()
        except BaseException:
            self._writing = False
            self._inventory_mac, self._inventory = None, {}
            self._conn.execute("ROLLBACK")
            raise
        self._writing = False
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            self._inventory_mac, self._inventory = None, {}
            raise
        self._inventory_mac, self._inventory = mac, inventory

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction (a consistent WAL snapshot) unless one is already open."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # --- the inventory MAC (pipeline.keys.inventory) --------------------------------------

    def _inventory_rows(
        self,
    ) -> tuple[builtins.list[tuple[Any, Any]], builtins.list[tuple[Any, ...]], builtins.list[Any]]:
        """What the inventory MAC covers, as the tables hold it now: meta, keys, evidence."""
        try:
            meta = self._conn.execute("SELECT name, value FROM meta").fetchall()
            keys = self._conn.execute("SELECT label, version, row_mac FROM keys").fetchall()
            evidence = self._conn.execute(
                f"SELECT {', '.join(EVIDENCE_FIELDS)} FROM destruction_evidence"  # noqa: S608
            ).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(
                "inventory", f"tables unreadable ({type(exc).__name__}): edited outside the store?"
            ) from None
        return meta, keys, evidence

    @staticmethod
    def _inventory_map(keys: Sequence[tuple[Any, ...]]) -> dict[tuple[str, int], str]:
        return {(str(k[0]), int(k[1])): str(k[2]) for k in keys}

    def _verify_inventory(self) -> None:
        """Check the stored inventory MAC against the tables (in the caller's transaction).

        Remembers the verified inventory for :meth:`_sync_inventory` and
        :meth:`_checked_row`.  KeyStoreError ``inventory: key inventory MAC
        mismatch ...`` (also when the MAC entry is missing).
        """
        meta, keys, evidence = self._inventory_rows()
        stored = dict(meta).get(INVENTORY_META)
        check_inventory_mac(self._inventory_key, meta, keys, evidence, stored)
        self._inventory_mac, self._inventory = str(stored), self._inventory_map(keys)

    def _sync_inventory(self) -> None:
        """Re-verify the whole inventory only if its stored MAC changed since last checked.

        A changed MAC means another process wrote (or someone edited it): the
        full check runs.  An unchanged one means no legitimate write happened,
        so the remembered ``(label, version) -> row_mac`` is still the truth
        each read row is compared against.  Cost: one ``meta`` lookup.
        """
        if self._writing:
            return
        stored = self._meta(INVENTORY_META)
        if stored is None or stored != self._inventory_mac:
            self._verify_inventory()

    def _seal_inventory(self) -> tuple[str, dict[tuple[str, int], str]]:
        """Recompute the inventory MAC over the tables and store it (inside a write transaction)."""
        meta, keys, evidence = self._inventory_rows()
        mac = inventory_mac(self._inventory_key, meta, keys, evidence)
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (INVENTORY_META, mac)
        )
        return mac, self._inventory_map(keys)

    def _inventory_refusal(self, subject: str) -> KeyStoreError:
        return KeyStoreError(subject, INVENTORY_MISMATCH)

    def _verify_now(self) -> None:
        """Full inventory check in a snapshot (not inside this store's own write transaction)."""
        if not self._writing:
            with self._snapshot():
                self._verify_inventory()

    _ROW_SELECT = ", ".join((*ROW_FIELDS, "row_mac"))

    def _mac_checked_row(self, values: Sequence[Any]) -> dict[str, Any]:
        """A selected ``_ROW_SELECT`` row as a mapping, after its row MAC verifies."""
        row = dict(zip((*ROW_FIELDS, "row_mac"), values, strict=True))
        check_row_mac(self._row_key, row, row["row_mac"])
        return row

    def _checked_row(self, values: Sequence[Any]) -> dict[str, Any]:
        """:meth:`_mac_checked_row`, and the row is the one the inventory records."""
        row = self._mac_checked_row(values)
        if not self._writing:
            key = (row["label"], row["version"])
            if self._inventory.get(key) != row["row_mac"]:  # an old copy, or not inventoried
                raise self._inventory_refusal(f"{row['label']}@v{row['version']}")
        return row

    def _row(self, ref: KeyRef) -> dict[str, Any]:
        """Every column of ``ref``'s row, row- and inventory-checked (KeyNotFound / KeyStoreError).

        Row and inventory MAC are read in one snapshot; the row must be the one
        the inventory records (not an older copy), and a missing row the
        inventory lists is a deletion, refused as such.
        """
        with self._snapshot():
            try:
                values = self._conn.execute(
                    f"SELECT {self._ROW_SELECT} FROM keys WHERE label=? AND version=?",  # noqa: S608
                    (ref.label, ref.version),
                ).fetchone()
            except sqlite3.OperationalError as exc:  # e.g. a text column edited to invalid UTF-8
                raise KeyStoreError(
                    str(ref), f"row unreadable ({type(exc).__name__}): edited outside the store?"
                ) from None
            self._sync_inventory()
            if values is None:
                if not self._writing and (ref.label, ref.version) in self._inventory:
                    raise self._inventory_refusal(str(ref))
                raise KeyNotFoundError(str(ref), "no such key")
            return self._checked_row(values)

    def _update_row(self, ref: KeyRef, **changes: Any) -> None:
        """UPDATE columns of a MAC-checked row and re-MAC it (inside a transaction).

        The row is read and checked first, so an edit made outside the store
        is never blessed by a later legitimate update.
        """
        row = self._row(ref)
        row.pop("row_mac")
        unknown = set(changes) - set(ROW_FIELDS)
        if unknown:
            raise KeyStoreError("columns", f"not key-row columns: {sorted(unknown)}")
        row.update(changes)
        sets = ", ".join(f"{column}=?" for column in changes)
        self._conn.execute(
            f"UPDATE keys SET {sets}, row_mac=? WHERE label=? AND version=?",  # noqa: S608
            (*changes.values(), row_mac(self._row_key, row), ref.label, ref.version),
        )

    @staticmethod
    def _record_from_row(row: dict[str, Any]) -> KeyRecord:
        cert = None
        if row["certificate"]:
            raw = json.loads(row["certificate"])
            cert = IssuerCertificateRecord(
                certificate=bytes.fromhex(raw["certificate"]),
                remainder=bytes.fromhex(raw["remainder"]),
                exponent=bytes.fromhex(raw["exponent"]),
                ca_rid=raw["ca_rid"],
                ca_index=raw["ca_index"],
                expiry=raw["expiry"],
                serial=raw["serial"],
                format=raw["format"],
            )
        return KeyRecord(
            ref=KeyRef(row["label"], int(row["version"])),
            algorithm=KeyAlgorithm(row["algorithm"]),
            bits=int(row["bits"]),
            usage=KeyUsage(row["usage"]),
            role=KeyRole(row["role"]),
            mode_of_use=row["mode"],
            exportability=Exportability(row["exportability"]),
            owner=row["owner"],
            state=KeyState(row["state"]),
            kcv=bytes.fromhex(row["kcv"]),
            kcv_method=row["kcv_method"],
            custodians=tuple(json.loads(row["custodians"])),
            created_at=row["created_at"],
            activated_at=row["activated_at"],
            updated_at=row["updated_at"],
            destroy_after=row["destroy_after"],
            destroyed_at=row["destroyed_at"],
            public_key=None if row["public_key"] is None else bytes(row["public_key"]),
            public_exponent=(
                None if row["public_exponent"] is None else bytes(row["public_exponent"])
            ),
            certificate=cert,
        )

    def _fetch(self, ref: KeyRef) -> KeyRecord:
        return self._record_from_row(self._row(ref))

    def _fetch_block(self, ref: KeyRef) -> str | None:
        try:
            block = self._row(ref)["key_block"]
        except KeyNotFoundError:
            return None
        return None if block is None else str(block)

    def _extra(self, ref: KeyRef) -> tuple[str | None, str]:
        row = self._row(ref)
        return row["prev_state"], row["source"]

    def _next_version(self, label: str) -> int:
        row = self._conn.execute("SELECT MAX(version) FROM keys WHERE label=?", (label,)).fetchone()
        return int(row[0] or 0) + 1

    # --- key blocks at rest -------------------------------------------------------------

    def _wrap_at_rest(self, record: KeyRecord, key: bytes) -> str:
        header = tr31.Header(
            "D",
            record.usage.value,
            record.algorithm.tr31_algorithm,
            record.mode_of_use,
            "00",
            record.exportability.value,
            blocks=((_BINDING_BLOCK, str(record.ref)),),
        )
        return tr31.wrap(self._hmk, header, key)

    def _unwrap_at_rest(self, record: KeyRecord, block: str | None = None) -> bytes:
        """The clear key of ``record`` after its block's MAC and header binding verify."""
        if block is None:
            block = self._fetch_block(record.ref)
        if block is None:
            raise KeyStateError(str(record.ref), f"state {record.state.value}: no key block")
        try:
            header, key = tr31.unwrap(self._hmk, block)
        except KeyBlockError:
            raise KeyStoreError(
                str(record.ref), "key block does not verify under the HMK (tampered?)"
            ) from None
        bound = (
            header.key_usage,
            header.algorithm,
            header.mode_of_use,
            header.exportability,
            header.block(_BINDING_BLOCK),
        )
        expected = (
            record.usage.value,
            record.algorithm.tr31_algorithm,
            record.mode_of_use,
            record.exportability.value,
            str(record.ref),
        )
        if bound != expected:
            raise KeyStoreError(
                str(record.ref),
                "key block header (usage, algorithm, mode, exportability, binding) does not "
                "match the database record: refused",
            )
        return key

    # --- row MACs: migration of a schema-1 store ------------------------------------------

    def _ensure_row_macs(self) -> None:
        """Add ``keys.row_mac`` to a store made before row MACs and MAC its rows (audited).

        Read-only opens and stores that already have the column do nothing
        (a read-only open of an unmigrated store is refused: it cannot be
        checked).  Refused when the audit trail shows the store had row MACs
        already (``store.create`` / ``store.migrate`` naming the scheme): a
        missing column is then tampering, not age.  Each live row's key block
        must still unwrap under the HMK with a header matching the row.
        Column, MACs, schema version, the first inventory MAC and the audit
        event commit together.
        """
        if self._has_row_mac_column():
            return
        if self.read_only:
            raise KeyStoreError(
                "row_mac",
                f"{self.path.name} predates row MACs (schema 1): open it read-write once "
                "(the HMK holder) to migrate; a read-only open cannot check its rows",
            )
        with self._tx(check_inventory=False):
            if self._has_row_mac_column():  # another process migrated while we waited
                self._verify_or_add_inventory()
                return
            self._refuse_if_row_macs_were_in_force()
            self._conn.execute("ALTER TABLE keys ADD COLUMN row_mac TEXT")
            values = self._conn.execute(
                f"SELECT {', '.join(ROW_FIELDS)} FROM keys ORDER BY label, version"  # noqa: S608
            ).fetchall()
            migrated = []
            for value in values:
                row = dict(zip(ROW_FIELDS, value, strict=True))
                record = self._record_from_row(row)
                if row["key_block"] is not None:
                    self._unwrap_at_rest(record, row["key_block"])
                self._conn.execute(
                    "UPDATE keys SET row_mac=? WHERE label=? AND version=?",
                    (row_mac(self._row_key, row), row["label"], row["version"]),
                )
                migrated.append(str(record.ref))
            previous = self._meta("schema_version")
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            self._audit(
                "hmk-holder", "store.migrate", str(self.path.name), "ok",
                schema_from=previous, schema_to=SCHEMA_VERSION, row_mac=ROW_MAC_SCHEME,
                inventory_mac=INVENTORY_SCHEME, rows=len(migrated), keys=migrated,
                trust="rows MACed as found; key-block binding re-checked",
            )  # fmt: skip

    def _has_row_mac_column(self) -> bool:
        columns = self._conn.execute("PRAGMA table_info(keys)").fetchall()
        return any(c[1] == "row_mac" for c in columns)

    def _refuse_if_row_macs_were_in_force(self) -> None:
        """KeyStoreError when the trail says this store was created with or migrated to row MACs."""
        try:
            events = list(self._trail.events())
        except AuditError as exc:
            raise KeyStoreError(
                "row_mac", f"cannot read the audit trail to migrate: {exc}"
            ) from None
        for event in events:
            if event.action in ("store.create", "store.migrate") and event.details.get("row_mac"):
                raise KeyStoreError(
                    "row_mac",
                    f"the keys table has no row_mac column, but audit seq {event.seq} "
                    f"({event.action}) shows the store had row MACs: column removed "
                    "(tampering); refused",
                )

    # --- inventory MAC: upgrade of a store made before it ---------------------------------

    def _ensure_inventory(self) -> None:
        """Check the inventory MAC on open; add one to a store made before inventory MACs (audited).

        A read-only open of a store without one is refused (nothing to check
        against).  Adding it is refused when the audit trail shows the store
        had one (``store.create`` / ``store.migrate`` naming the scheme): a
        missing entry is then tampering.  Otherwise every row MAC must verify;
        the inventory MAC then vouches for the rows as found, like the
        row-MAC migration, and is audited as ``store.migrate``.
        """
        with self._snapshot():
            if self._meta(INVENTORY_META) is not None:
                self._verify_inventory()
                return
        if self.read_only:
            raise KeyStoreError(
                INVENTORY_META,
                f"{self.path.name} predates inventory MACs: open it read-write once "
                "(the HMK holder) to add one; a read-only open cannot check which rows are current",
            )
        with self._tx(check_inventory=False):
            self._verify_or_add_inventory()

    def _verify_or_add_inventory(self) -> None:
        """Inside a write transaction: check the inventory MAC, or add the first one (audited)."""
        if self._meta(INVENTORY_META) is not None:  # present, or another process added it
            self._verify_inventory()
            return
        self._refuse_if_inventory_was_in_force()
        values = self._conn.execute(
            f"SELECT {self._ROW_SELECT} FROM keys ORDER BY label, version"  # noqa: S608
        ).fetchall()
        rows = [self._checked_row(v) for v in values]  # every row MAC verifies, or refused
        self._audit(
            "hmk-holder", "store.migrate", str(self.path.name), "ok",
            inventory_mac=INVENTORY_SCHEME, rows=len(rows),
            keys=[f"{r['label']}@v{r['version']}" for r in rows],
            trust="inventory of the rows as found; every row MAC verified",
        )  # fmt: skip

    def _refuse_if_inventory_was_in_force(self) -> None:
        """KeyStoreError when the trail shows the store was created with or given inventory MACs."""
        try:
            events = list(self._trail.events())
        except AuditError as exc:
            raise KeyStoreError(
                INVENTORY_META, f"cannot read the audit trail to add one: {exc}"
            ) from None
        for event in events:
            if event.action in ("store.create", "store.migrate") and event.details.get(
                "inventory_mac"
            ):
                raise KeyStoreError(
                    INVENTORY_META,
                    f"the meta table has no inventory MAC, but audit seq {event.seq} "
                    f"({event.action}) shows the store had one: entry removed (tampering); "
                    "refused",
                )

    # --- loading keys for use -------------------------------------------------------------

    def _load(self, ref: KeyRef, operation: Operation) -> _Loaded:
        """The cached key for ``ref`` after checking usage/mode/state for ``operation``.

        The record is re-read at most every ``cache_ttl`` seconds; the verdict of
        :func:`~pipeline.keys.usage.check` is cached per operation on the entry and
        dropped whenever the record is re-read (or the entry evicted), so a
        suspension or rotation takes effect exactly when it did before.
        """
        try:
            entry = self._cache.get(ref)
        except TypeError:  # unhashable: not a KeyRef (_load_entry says so)
            entry = None
        if (
            entry is not None
            and time.monotonic() - entry.checked_at <= self._cache_ttl
            and operation in entry.permitted
            and entry.key is not None
        ):
            return entry  # hot path: record fresh, verdict given on it, key unwrapped
        return self._load_entry(ref, operation)

    def _load_entry(self, ref: KeyRef, operation: Operation) -> _Loaded:
        """:meth:`_load` off its hot path: check the reference, re-read, check usage, unwrap."""
        if not isinstance(ref, KeyRef):
            raise InvalidInputError("key", f"expected a KeyRef, got {type(ref).__name__}")
        now = time.monotonic()
        entry = self._cache.get(ref)
        if entry is None or now - entry.checked_at > self._cache_ttl:
            record = self._fetch(ref)
            if entry is None or entry.record.state != record.state:
                entry = _Loaded(record, now)
                self._cache[ref] = entry
            else:
                entry.record, entry.checked_at = record, now
                entry.permitted.clear()
        if operation not in entry.permitted:
            check(entry.record, operation)
            entry.permitted.append(operation)
        if entry.key is None:
            entry.key = self._unwrap_at_rest(entry.record)
        return entry

    @staticmethod
    def _cipher(entry: _Loaded) -> BlockCipher:
        """The entry's block cipher (one per cached key: its contexts are reused)."""
        cipher = entry.cipher
        if cipher is None:
            assert entry.key is not None
            cipher = entry.cipher = BlockCipher(_symmetric(entry.record.algorithm), entry.key)
        return cipher

    def _derived(self, entry: _Loaded, kind: str, purpose: bytes) -> bytes:
        cache_key = ("derived", kind, purpose)
        derived = entry.objects.get(cache_key)
        if derived is None:
            assert entry.key is not None
            derived = hkdf_sha256(entry.key, b"cardprep/" + kind.encode() + b"/" + purpose, 32)
            entry.objects[cache_key] = derived
        return derived

    def _wrap_output(self, tk: _Loaded, data: bytes) -> bytes:
        """``data`` under ``tk`` (ECB; ISO/IEC 9797-1 method 2 padding when not whole blocks)."""
        return self._output_wrapper(tk)(data)

    def _output_wrapper(self, tk: _Loaded) -> Callable[[bytes], bytes]:
        """:meth:`_wrap_output` bound to ``tk``'s cipher, built once per TK entry.

        Over the cipher :meth:`_cipher` caches on the entry (a re-read record
        whose state changed gets a new entry, so a new wrapper); a whole-block
        value (every card key) goes straight to the reused ECB encryptor.
        """
        wrapper = tk.wrapper
        if wrapper is None:
            wrapper = tk.wrapper = _ecb_wrapper(self._cipher(tk))
        return wrapper

    # --- audit ----------------------------------------------------------------------------

    def _audit(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        self._trail.append(actor, action, subject, result, **details)

    @contextmanager
    def _audited(self, actor: str, action: str, subject: str) -> Iterator[None]:
        """Record a refusal (KeyStoreError / CryptoError) in the trail, then re-raise."""
        try:
            yield
        except AuditError:
            raise
        except CardprepError as exc:
            self._audit(actor, action, subject, f"refused: {type(exc).__name__}: {exc}")
            raise

    # --- creating records ---------------------------------------------------------------------

    def _generate_record(
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        *,
        bits: int | None,
        exponent: int | None,
        exportability: Exportability,
        mode_of_use: str,
        activate: bool,
    ) -> tuple[KeyRecord, bytes]:
        """A new record and its clear key material (not yet stored)."""
        public_key: bytes | None = None
        public_exponent: bytes | None = None
        if algorithm.is_symmetric:
            length = algorithm.key_length
            assert length is not None
            key = secrets.token_bytes(length)
            if algorithm in (KeyAlgorithm.TDES2, KeyAlgorithm.TDES3):
                key = fix_parity(key)
            bits = length * 8
        elif algorithm is KeyAlgorithm.RSA:
            if bits is None:
                raise InvalidInputError("bits", "RSA keys need the modulus size")
            private = rsa.generate_rsa_key(bits, exponent or _DEFAULT_RSA_EXPONENT)
            key = rsa.private_key_to_der(private)
            public_key, public_exponent = private.modulus, private.exponent_bytes
        else:
            key, public_key = sm2.generate_keypair()
            bits = 256
        return self._new_record(
            label, algorithm, usage, role, owner, key,
            bits=bits, exportability=exportability, mode_of_use=mode_of_use,
            state=KeyState.ACTIVE if activate else KeyState.PRE_ACTIVE,
            public_key=public_key, public_exponent=public_exponent,
        ), key  # fmt: skip

    def _new_record(  # noqa: PLR0917 (internal; mirrors generate)
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        key: bytes,
        *,
        bits: int,
        exportability: Exportability,
        mode_of_use: str,
        state: KeyState,
        public_key: bytes | None = None,
        public_exponent: bytes | None = None,
        custodians: Sequence[str] = (),
    ) -> KeyRecord:
        check_label(label)
        if not _OWNER_RE.match(owner or ""):
            raise InvalidInputError(
                "owner", f"expected 'kind:id' (e.g. issuer:demo), got {owner!r}"
            )
        if usage is KeyUsage.HM:
            raise KeyUsageError(label, "usage HM (host master key) is never stored as a key")
        if mode_of_use not in MODE_DIRECTIONS:
            raise InvalidInputError("mode_of_use", f"unknown TR-31 mode of use {mode_of_use!r}")
        if algorithm.is_symmetric:
            method = kcv_method_for(_symmetric(algorithm)).value
            kcv = compute_kcv(key, method, 3)
        else:
            assert public_key is not None
            method, kcv = ASYMMETRIC_KCV_METHOD, _asymmetric_kcv(public_key, public_exponent)
        now = _iso(self._clock())
        existing = self._conn.execute(
            "SELECT usage, role, algorithm FROM keys WHERE label=? ORDER BY version DESC LIMIT 1",
            (label,),
        ).fetchone()
        if existing is not None and tuple(existing) != (usage.value, role.value, algorithm.value):
            raise KeyStoreError(
                label,
                f"exists with usage {existing[0]}, role {existing[1]}, algorithm {existing[2]}; "
                "a new version must keep them",
            )
        return KeyRecord(
            ref=KeyRef(label, self._next_version(label)),
            algorithm=algorithm,
            bits=bits,
            usage=usage,
            role=role,
            mode_of_use=mode_of_use,
            exportability=exportability,
            owner=owner,
            state=state,
            kcv=kcv,
            kcv_method=method,
            custodians=tuple(custodians),
            created_at=now,
            activated_at=now if state is KeyState.ACTIVE else None,
            updated_at=now,
            public_key=public_key,
            public_exponent=public_exponent,
        )

    def _insert(
        self, record: KeyRecord, key: bytes, *, source: str, custodians: Sequence[str]
    ) -> None:
        """Store ``record`` (inside a transaction); an ACTIVE one deactivates the previous."""
        if source != "generated":  # a random key never repeats one; an entered one can
            self._refuse_stored_value(record, key)
        if record.state is KeyState.ACTIVE:
            self._deactivate_others(record.ref)
        row: dict[str, Any] = {
            "label": record.ref.label, "version": record.ref.version,
            "algorithm": record.algorithm.value, "bits": record.bits,
            "usage": record.usage.value, "role": record.role.value, "mode": record.mode_of_use,
            "exportability": record.exportability.value, "owner": record.owner,
            "state": record.state.value, "prev_state": None, "kcv": record.kcv.hex().upper(),
            "kcv_method": record.kcv_method, "custodians": json.dumps(list(custodians)),
            "source": source, "created_at": record.created_at,
            "activated_at": record.activated_at, "updated_at": record.updated_at,
            "destroy_after": None, "destroyed_at": None,
            "key_block": self._wrap_at_rest(record, key), "public_key": record.public_key,
            "public_exponent": record.public_exponent, "certificate": None,
        }  # fmt: skip
        row["row_mac"] = row_mac(self._row_key, row)
        self._conn.execute(
            f"INSERT INTO keys ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
            tuple(row.values()),
        )

    def _refuse_stored_value(self, record: KeyRecord, key: bytes) -> None:
        """Key separation: refuse a symmetric key whose value a stored key already has.

        One key, one purpose (PCI PIN Security Requirement 19; X9.24-1 key
        separation): the same value entered again under another label or
        usage (an IMK imported as a TK, a KEK re-entered as a new version)
        would let one key serve two roles.  Every stored row of the same
        algorithm is unwrapped and compared in constant time (whatever its KCV
        method); a destroyed row has no block left to compare.  Entered keys
        only (components, key blocks): a generated key is random.  The message
        names the stored key, never a value.

        Example:
            >>> store.import_components("copy", ..., [c1, c2], kcv, ...)  # doctest: +SKIP
            KeyStoreError: copy@v1: the same key value is already stored as demo-tk@v1 ...
        """
        if not record.algorithm.is_symmetric:
            return
        rows = self._conn.execute(
            f"SELECT {self._ROW_SELECT} FROM keys "  # noqa: S608
            "WHERE algorithm=? AND key_block IS NOT NULL",
            (record.algorithm.value,),
        ).fetchall()
        for raw in rows:
            other = self._record_from_row(self._checked_row(raw))
            if hmac.compare_digest(self._unwrap_at_rest(other), key):
                raise KeyStoreError(
                    str(record.ref),
                    f"the same key value is already stored as {other.ref} (usage "
                    f"{other.usage.value}, {other.state.value}): one key, one purpose",
                )

    def _deactivate_others(self, ref: KeyRef) -> list[KeyRef]:
        rows = self._conn.execute(
            "SELECT version FROM keys WHERE label=? AND state=? AND version<>?",
            (ref.label, KeyState.ACTIVE.value, ref.version),
        ).fetchall()
        now = _iso(self._clock())
        old = [KeyRef(ref.label, int(r[0])) for r in rows]
        for other in old:
            self._update_row(other, state=KeyState.DEACTIVATED.value, updated_at=now)
            self._cache.pop(other, None)
        return old

    # --- key management ------------------------------------------------------------------------

    def generate(
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        *,
        actor: str,
        bits: int | None = None,
        exportability: Exportability = Exportability.E,
        mode_of_use: str = "N",
        activate: bool = True,
        exponent: int | None = None,
    ) -> KeyRecord:
        """See :meth:`pipeline.keys.store.KeyStore.generate` (RSA ``exponent`` default 3)."""
        _check_actor(actor)
        with self._audited(actor, "key.generate", f"{label} ({algorithm.value}, {usage.value})"):
            record, key = self._generate_record(
                label, algorithm, usage, role, owner, bits=bits, exponent=exponent,
                exportability=exportability, mode_of_use=mode_of_use, activate=activate,
            )  # fmt: skip
            with self._tx():
                self._insert(record, key, source="generated", custodians=())
                self._audit(
                    actor, "key.generate", _subject(record), "ok",
                    algorithm=algorithm.value, bits=record.bits, usage=usage.value,
                    role=role.value, owner=owner, state=record.state.value,
                )  # fmt: skip
        return record

    def import_components(  # noqa: PLR0917 (contract signature)
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        components: Sequence[bytes],
        expected_kcv: bytes,
        *,
        custodians: Sequence[str],
        actor: str,
        exportability: Exportability = Exportability.E,
        mode_of_use: str = "N",
    ) -> KeyRecord:
        """See :meth:`pipeline.keys.store.KeyStore.import_components`."""
        _check_actor(actor)
        subject = f"{label} ({algorithm.value}, {usage.value})"
        with self._audited(actor, "key.import_components", subject):
            sym = _symmetric(algorithm)
            if len(set(custodians)) != len(custodians) or len(custodians) < len(components):
                raise CeremonyError(
                    "custodians",
                    f"{len(components)} components need as many distinct custodians, "
                    f"got {len(custodians)} ({len(set(custodians))} distinct)",
                )
            if any(len(c) != algorithm.key_length for c in components):
                raise CeremonyError(
                    "components",
                    f"{algorithm.value} components must be {algorithm.key_length} bytes each",
                )
            key = xor_combine(components)  # stored as entered: parity is not adjusted
            method = kcv_method_for(sym).value
            self._check_expected_kcv(key, method, expected_kcv, ceremony=True)
            record = self._new_record(
                label, algorithm, usage, role, owner, key, bits=len(key) * 8,
                exportability=exportability, mode_of_use=mode_of_use, state=KeyState.ACTIVE,
                custodians=custodians,
            )  # fmt: skip
            with self._tx():
                self._insert(record, key, source="components", custodians=custodians)
                self._audit(
                    actor, "key.import_components", _subject(record), "ok",
                    custodians=list(custodians), components=len(components),
                    usage=usage.value, role=role.value, owner=owner,
                )  # fmt: skip
        return record

    @staticmethod
    def _check_expected_kcv(key: bytes, method: str, expected: bytes, *, ceremony: bool) -> None:
        if not 2 <= len(expected) <= 8:
            raise InvalidInputError("expected_kcv", f"must be 2..8 bytes, got {len(expected)}")
        actual = compute_kcv(key, method, len(expected))
        if not hmac.compare_digest(actual, expected):
            error = CeremonyError if ceremony else KeyStoreError
            raise error(
                "expected_kcv",
                f"KCV mismatch: key has {actual.hex().upper()}, expected "
                f"{expected.hex().upper()}; nothing stored",
            )

    def import_key_block(
        self,
        label: str,
        key_block: str,
        kbpk: KeyRef,
        role: KeyRole,
        owner: str,
        *,
        expected_kcv: bytes | None,
        actor: str,
    ) -> KeyRecord:
        """See :meth:`pipeline.keys.store.KeyStore.import_key_block`."""
        _check_actor(actor)
        with self._audited(actor, "key.import_key_block", f"{label} under {kbpk}"):
            kb = self._load(kbpk, Operation.UNWRAP_KEY_BLOCK)
            assert kb.key is not None
            header, key = tr31.unwrap(kb.key, key_block)
            try:
                usage = KeyUsage(header.key_usage)
            except ValueError:
                raise KeyUsageError(
                    "key_block", f"usage {header.key_usage} is not supported by this store"
                ) from None
            public_key: bytes | None = None
            public_exponent: bytes | None = None
            if header.algorithm == "R":
                private = rsa.private_key_from_der(key)
                algorithm, bits = KeyAlgorithm.RSA, private.size_bytes * 8
                public_key, public_exponent = private.modulus, private.exponent_bytes
            elif header.algorithm == "E":
                algorithm, bits = KeyAlgorithm.SM2, 256
                public_key = sm2.public_key(key)
            else:
                found = _TR31_IMPORT.get((header.algorithm, len(key)))
                if found is None:
                    raise KeyUsageError(
                        "key_block",
                        f"algorithm {header.algorithm} with a {len(key)}-byte key is not supported",
                    )
                algorithm, bits = found, len(key) * 8
            check_strength(
                kb.record, label, algorithm.strength_bits(bits), Operation.UNWRAP_KEY_BLOCK
            )
            record = self._new_record(
                label, algorithm, usage, role, owner, key, bits=bits,
                exportability=Exportability(header.exportability), mode_of_use=header.mode_of_use,
                state=KeyState.ACTIVE, public_key=public_key, public_exponent=public_exponent,
            )  # fmt: skip
            if expected_kcv is not None:
                if not algorithm.is_symmetric:
                    if not hmac.compare_digest(record.kcv[: len(expected_kcv)], expected_kcv):
                        raise KeyStoreError("expected_kcv", "KCV mismatch; nothing stored")
                else:
                    self._check_expected_kcv(key, record.kcv_method, expected_kcv, ceremony=False)
            with self._tx():
                self._insert(record, key, source="key-block", custodians=())
                self._audit(
                    actor, "key.import_key_block", _subject(record), "ok",
                    kbpk=str(kbpk), kbpk_kcv=kb.record.kcv.hex().upper(), usage=usage.value,
                    algorithm=algorithm.value, role=role.value, owner=owner,
                )  # fmt: skip
        return record

    def export_key_block(self, key: KeyRef, kbpk: KeyRef, *, actor: str) -> str:
        """See :meth:`pipeline.keys.store.KeyStore.export_key_block`."""
        _check_actor(actor)
        with self._audited(actor, "key.export_key_block", f"{key} under {kbpk}"):
            if key.label == kbpk.label:
                raise KeyUsageError(str(key), "a key cannot be exported under itself")
            entry = self._load(key, Operation.EXPORT)
            check_exportable(entry.record)
            kb = self._load(kbpk, Operation.WRAP_KEY_BLOCK)
            check_strength(
                kb.record, str(key), entry.record.strength_bits, Operation.WRAP_KEY_BLOCK
            )
            version = _EXPORT_VERSION.get(kb.record.algorithm)
            if version is None:
                raise CapabilityError(
                    str(kbpk), f"no TR-31 version for a {kb.record.algorithm.value} KBPK"
                )
            rec = entry.record
            header = tr31.Header(
                version, rec.usage.value, rec.algorithm.tr31_algorithm, rec.mode_of_use,
                "00", rec.exportability.value,
            )  # fmt: skip
            assert entry.key is not None and kb.key is not None
            block = tr31.wrap(kb.key, header, entry.key)
            with self._tx():
                self._audit(
                    actor, "key.export_key_block", _subject(rec), "ok",
                    kbpk=str(kbpk), kbpk_kcv=kb.record.kcv.hex().upper(), version=version,
                )  # fmt: skip
        return block

    def export_components(
        self,
        ref: KeyRef,
        count: int,
        *,
        custodians: Sequence[str],
        actor: str,
        threshold: int | None = None,
    ) -> tuple[bytes, ...]:
        """See :meth:`pipeline.keys.store.KeyStore.export_components`.

        The components are made from the cached clear key and returned; the
        store keeps no copy of them.  Audited as ``key.export_components``
        (refusals too) with the custodian ids and every component's KCV.
        """
        _check_actor(actor)
        with self._audited(actor, "key.export_components", str(ref)):
            ids = _component_holders(count, custodians, threshold)
            entry = self._load(ref, Operation.EXPORT)
            rec = entry.record
            check_exportable(rec)
            if not rec.algorithm.is_symmetric:
                raise KeyUsageError(
                    str(ref),
                    f"usage {rec.usage.value} {rec.algorithm.value} key pair: only symmetric "
                    "keys are output as components",
                )
            assert entry.key is not None
            if threshold is None:
                parts = xor_split(entry.key, count)
            else:
                parts = tuple(s.value for s in shamir_split(entry.key, threshold, count))
            kcvs = [compute_kcv(p, rec.kcv_method).hex().upper() for p in parts]
            with self._tx():
                self._audit(
                    actor, "key.export_components", _subject(rec), "ok",
                    scheme="xor" if threshold is None else "shamir", components=count,
                    threshold=threshold or count, custodians=ids, component_kcvs=kcvs,
                )  # fmt: skip
        return parts

    def set_issuer_certificate(
        self, key: KeyRef, certificate: IssuerCertificateRecord, *, actor: str
    ) -> KeyRecord:
        """See :meth:`pipeline.keys.store.KeyStore.set_issuer_certificate`."""
        _check_actor(actor)
        with self._audited(actor, "key.set_certificate", str(key)):
            record = self._fetch(key)
            if record.usage is not KeyUsage.S0:
                raise KeyUsageError(
                    str(key), f"usage {record.usage.value} does not permit set-certificate"
                )
            value = json.dumps(
                {
                    "certificate": certificate.certificate.hex(),
                    "remainder": certificate.remainder.hex(),
                    "exponent": certificate.exponent.hex(),
                    "ca_rid": certificate.ca_rid,
                    "ca_index": certificate.ca_index,
                    "expiry": certificate.expiry,
                    "serial": certificate.serial,
                    "format": certificate.format,
                }
            )
            with self._tx():
                self._update_row(key, certificate=value, updated_at=_iso(self._clock()))
                self._audit(
                    actor, "key.set_certificate", _subject(record), "ok",
                    ca_rid=certificate.ca_rid, ca_index=certificate.ca_index,
                    expiry=certificate.expiry, serial=certificate.serial,
                    format=certificate.format,
                )  # fmt: skip
            self._cache.pop(key, None)
        return self._fetch(key)

    # --- lifecycle ---------------------------------------------------------------------------

    def _transition(self, ref: KeyRef, action: str, *, actor: str, **details: Any) -> KeyRecord:
        _check_actor(actor)
        with self._audited(actor, f"key.{action}", str(ref)):
            record = self._fetch(ref)
            allowed, target = _TRANSITIONS[action]
            if record.state not in allowed:
                raise KeyStateError(
                    str(ref),
                    f"state {record.state.value} (usage {record.usage.value}) "
                    f"does not permit {action}",
                )
            if record.role is KeyRole.AUDIT_MAC and action != "activate":
                raise KeyStateError(
                    str(ref),
                    f"usage {record.usage.value} audit MAC keys verify the trail for its whole "
                    f"retention: {action} refused (rotate instead)",
                )
            prev_state, _ = self._extra(ref)
            now = self._clock()
            updates: dict[str, Any] = {"updated_at": _iso(now)}
            if action == "destroy":
                assert record.destroy_after is not None
                if now < _parse_iso(record.destroy_after):
                    raise KeyStateError(
                        str(ref),
                        f"state {record.state.value}: destroy refused before "
                        f"{record.destroy_after} (waiting period)",
                    )
            if target is None:
                target = KeyState(prev_state) if prev_state else KeyState.RETIRED
                if target is KeyState.ACTIVE and self._has_other_active(ref):
                    target = KeyState.DEACTIVATED
                updates["prev_state"] = None
                updates["destroy_after"] = None
            elif target in (KeyState.SUSPENDED, KeyState.DESTROY_PENDING):
                updates["prev_state"] = record.state.value
            if action == "schedule_destruction":
                wait_days = int(details["wait_days"])
                updates["destroy_after"] = _iso(now + timedelta(days=wait_days))
            if target is KeyState.ACTIVE:
                updates["activated_at"] = _iso(now)
            updates["state"] = target.value
            with self._tx():
                if target is KeyState.ACTIVE:
                    self._deactivate_others(ref)
                if action == "destroy":
                    self._erase(record, actor, updates["updated_at"])
                    updates["destroyed_at"] = updates["updated_at"]
                self._update_row(ref, **updates)
                self._cache.pop(ref, None)
                self._audit(
                    actor, f"key.{action}", _subject(record), "ok",
                    **{"from": record.state.value, "to": target.value, **details,
                       **({"destroy_after": updates["destroy_after"]}
                          if updates.get("destroy_after") else {})},
                )  # fmt: skip
        if action == "destroy":
            # secure_delete already zeroed the page; the WAL copy goes at the checkpoint
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self._fetch(ref)

    def _has_other_active(self, ref: KeyRef) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM keys WHERE label=? AND state=? AND version<>?",
            (ref.label, KeyState.ACTIVE.value, ref.version),
        ).fetchone()
        return row is not None

    def _erase(self, record: KeyRecord, actor: str, when: str) -> None:
        block = self._fetch_block(record.ref) or ""
        digest = hashlib.sha256(block.encode()).hexdigest()
        self._conn.execute(
            "INSERT INTO destruction_evidence (label, version, kcv, kcv_method, destroyed_by,"
            " destroyed_at, key_block_sha256, method) VALUES (?,?,?,?,?,?,?,?)",
            (
                record.ref.label, record.ref.version, record.kcv.hex().upper(),
                record.kcv_method, actor, when, digest,
                "key block set to NULL (SQLite secure_delete zeroes the page; WAL truncated)",
            ),
        )  # fmt: skip
        self._update_row(record.ref, key_block=None)

    def activate(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """PRE_ACTIVE -> ACTIVE (another active version becomes DEACTIVATED)."""
        return self._transition(ref, "activate", actor=actor)

    def suspend(self, ref: KeyRef, *, actor: str, reason: str = "") -> KeyRecord:
        """ACTIVE or DEACTIVATED -> SUSPENDED."""
        return self._transition(ref, "suspend", actor=actor, reason=reason)

    def resume(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """SUSPENDED -> the state before (DEACTIVATED if another version became active)."""
        return self._transition(ref, "resume", actor=actor)

    def retire(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """PRE_ACTIVE / ACTIVE / DEACTIVATED / SUSPENDED -> RETIRED."""
        return self._transition(ref, "retire", actor=actor)

    def schedule_destruction(self, ref: KeyRef, *, actor: str, wait_days: int = 7) -> KeyRecord:
        """Non-active state -> DESTROY_PENDING for ``wait_days`` (>= 1) days.

        An ACTIVE key is refused: rotate or retire it first.
        """
        if not isinstance(wait_days, int) or wait_days < 1:
            raise InvalidInputError("wait_days", f"must be an integer >= 1, got {wait_days!r}")
        return self._transition(ref, "schedule_destruction", actor=actor, wait_days=wait_days)

    def restore(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """DESTROY_PENDING -> the state before the scheduling."""
        return self._transition(ref, "restore", actor=actor)

    def destroy(self, ref: KeyRef, *, actor: str) -> KeyRecord:
        """DESTROY_PENDING after the waiting period -> DESTROYED (key block erased)."""
        return self._transition(ref, "destroy", actor=actor)

    def rotate(self, label: str, *, actor: str) -> KeyRecord:
        """Generate the next version; the active one becomes DEACTIVATED."""
        _check_actor(actor)
        with self._audited(actor, "key.rotate", label):
            try:
                current = self._fetch(self.active(label))
            except KeyStateError:  # e.g. suspended after an incident: rotate from the newest
                current = self.get(label)
            _, source = self._extra(current.ref)
            if source != "generated":
                raise KeyStoreError(
                    str(current.ref),
                    f"was entered from {source}: enter the new version the same way",
                )
            exponent = (
                int.from_bytes(current.public_exponent, "big") if current.public_exponent else None
            )
            record, key = self._generate_record(
                label, current.algorithm, current.usage, current.role, current.owner,
                bits=current.bits, exponent=exponent, exportability=current.exportability,
                mode_of_use=current.mode_of_use, activate=True,
            )  # fmt: skip
            with self._tx():
                self._insert(record, key, source="generated", custodians=())
                self._audit(
                    actor, "key.rotate", _subject(record), "ok",
                    previous=str(current.ref), previous_state=KeyState.DEACTIVATED.value,
                )  # fmt: skip
        return record

    def import_test_key(  # noqa: PLR0917 (mirrors import_components)
        self,
        label: str,
        algorithm: KeyAlgorithm,
        usage: KeyUsage,
        role: KeyRole,
        owner: str,
        material: bytes,
        *,
        actor: str,
        exportability: Exportability = Exportability.N,
        mode_of_use: str = "N",
    ) -> KeyRecord:
        """TEST ONLY: store a published test key given in clear (demo stores only).

        ``material`` is the symmetric key, an RSA private key as PKCS #8 DER, or
        the SM2 scalar ``d``.  Refused unless the store was created with
        ``test_only=True`` (``init_demo_store``); audited as
        ``key.import_test_key``.  Real keys enter as components or key blocks.
        """
        _check_actor(actor)
        with self._audited(actor, "key.import_test_key", label):
            if self._meta("test_only") != "1":
                raise KeyStoreError(
                    label, "clear test keys are accepted only by a test_only (demo) store"
                )
            public_key: bytes | None = None
            public_exponent: bytes | None = None
            key = bytes(material)
            if algorithm is KeyAlgorithm.RSA:
                private = rsa.private_key_from_der(key)
                bits = private.size_bytes * 8
                public_key, public_exponent = private.modulus, private.exponent_bytes
            elif algorithm is KeyAlgorithm.SM2:
                bits, public_key = 256, sm2.public_key(key)
            else:
                if len(key) != algorithm.key_length:
                    raise InvalidInputError(
                        "material", f"{algorithm.value} needs {algorithm.key_length} bytes"
                    )
                bits = len(key) * 8
            record = self._new_record(
                label, algorithm, usage, role, owner, key, bits=bits,
                exportability=exportability, mode_of_use=mode_of_use, state=KeyState.ACTIVE,
                public_key=public_key, public_exponent=public_exponent,
            )  # fmt: skip
            with self._tx():
                self._insert(record, key, source="test-value", custodians=())
                self._audit(
                    actor, "key.import_test_key", _subject(record), "ok",
                    test_only=True, usage=usage.value, role=role.value, owner=owner,
                )  # fmt: skip
        return record

    def destruction_evidence(self, ref: KeyRef) -> dict[str, Any]:
        """The evidence row kept for a destroyed key (KeyNotFoundError if none).

        The whole inventory (evidence rows included) is checked first.
        """
        with self._snapshot():
            self._verify_now()
            cursor = self._conn.execute(
                "SELECT * FROM destruction_evidence WHERE label=? AND version=?",
                (ref.label, ref.version),
            )
            row = cursor.fetchone()
        if row is None:
            raise KeyNotFoundError(str(ref), "no destruction evidence")
        return dict(zip([d[0] for d in cursor.description], row, strict=True))

    # --- hot path ------------------------------------------------------------------------------

    def derive_and_wrap(
        self,
        imk: KeyRef,
        pan: str,
        psn: str | None,
        method: DerivationMethod,
        tk: KeyRef,
    ) -> WrappedKey:
        """See :meth:`pipeline.keys.store.KeyStore.derive_and_wrap`."""
        imk_e = self._load(imk, Operation.DERIVE_CARD_KEY)
        tk_e = self._load(tk, Operation.WRAP_OUTPUT)
        plan = imk_e.plan  # the one this IMK served last: no hashing of method and TK
        if (  # a record is one TK's (another TK, another record)
            plan is None
            or plan.method is not method
            or plan.imk_record is not imk_e.record
            or plan.tk_record is not tk_e.record
        ):
            plan = imk_e.plan = self._plan_for(imk, imk_e, tk_e, method, tk)
        mk = plan.derive(pan, psn)
        name = plan.kcv_method
        return WrappedKey(plan.wrap(mk), _kcv3(name)(mk), name, tk)

    def _plan_for(
        self, imk: KeyRef, imk_e: _Loaded, tk_e: _Loaded, method: DerivationMethod, tk: KeyRef
    ) -> _DerivePlan:
        """The entry's plan for (``method``, ``tk``) on the current records, built if need be."""
        plan: _DerivePlan | None = imk_e.objects.get(("plan", method, tk))
        if plan is None or plan.imk_record is not imk_e.record or plan.tk_record is not tk_e.record:
            plan = self._derive_plan(imk, imk_e, tk_e, method)
            imk_e.objects[("plan", method, tk)] = plan
        return plan

    def _derive_plan(
        self, imk: KeyRef, imk_e: _Loaded, tk_e: _Loaded, method: DerivationMethod
    ) -> _DerivePlan:
        """Method and strength checks, deriver and TK context for one (IMK, TK) pair.

        Bound to the two records it checked: a re-read record (every
        ``cache_ttl``) or a reloaded entry makes :meth:`derive_and_wrap` build
        a new plan, so the checks run again.
        """
        option = _DERIVATION_OPTION.get(method)
        if option is None:
            raise InvalidInputError("method", f"{method.value} is not an ICC MK derivation")
        check_strength(tk_e.record, str(imk), imk_e.record.strength_bits, Operation.WRAP_OUTPUT)
        deriver = imk_e.objects.get(("deriver", option))
        if deriver is None:
            assert imk_e.key is not None
            deriver = IccMkDeriver(imk_e.key, option)
            imk_e.objects[("deriver", option)] = deriver
        return _DerivePlan(
            method=method,
            imk_record=imk_e.record,
            tk_record=tk_e.record,
            derive=deriver.derive,
            wrap=self._output_wrapper(tk_e),
            kcv_method=imk_e.record.kcv_method,
        )

    def diversify_and_wrap(
        self, kmc: KeyRef, kdd: bytes, method: DerivationMethod, tk: KeyRef
    ) -> tuple[WrappedKey, WrappedKey, WrappedKey]:
        """See :meth:`pipeline.keys.store.KeyStore.diversify_and_wrap`."""
        kmc_e = self._load(kmc, Operation.DIVERSIFY)
        tk_e = self._load(tk, Operation.WRAP_OUTPUT)
        if not method.is_gp:
            raise InvalidInputError("method", f"{method.value} is not a GP diversification")
        if tk_e.strength() < kmc_e.strength():  # raises
            check_strength(tk_e.record, str(kmc), kmc_e.record.strength_bits, Operation.WRAP_OUTPUT)
        keys = self._diversifier(kmc_e, method).diversify(kdd)
        name, wrap = kmc_e.record.kcv_method, self._output_wrapper(tk_e)
        kcv3 = _kcv3(name)
        enc, mac, dek = (WrappedKey(wrap(k), kcv3(k), name, tk) for k in keys)
        return enc, mac, dek

    @staticmethod
    def _diversifier(kmc_e: _Loaded, method: DerivationMethod) -> gp.CardKeyDiversifier:
        """The KMC entry's diversifier for ``method``, keyed once and dropped with the entry."""
        cache_key = ("gp", method)
        diversifier: gp.CardKeyDiversifier | None = kmc_e.objects.get(cache_key)
        if diversifier is None:
            assert kmc_e.key is not None
            diversifier = gp.CardKeyDiversifier(kmc_e.key, method.value)
            kmc_e.objects[cache_key] = diversifier
        return diversifier

    def translate(
        self,
        ciphertext: bytes,
        from_key: KeyRef,
        to_key: KeyRef,
        *,
        check: TranslateCheck = TranslateCheck.NONE,
        pan: str | None = None,
    ) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.translate`."""
        src = self._load(from_key, Operation.TRANSLATE_FROM)
        dst = self._load(to_key, Operation.TRANSLATE_TO)
        if dst.strength() < src.strength():  # raises; skip str() otherwise
            check_strength(
                dst.record, str(from_key), src.record.strength_bits, Operation.TRANSLATE_TO
            )
        # the cached ciphers (KeyUsageError for a key that is not a block cipher key,
        # as _symmetric) give the block sizes
        src_cipher, dst_cipher = self._cipher(src), self._cipher(dst)
        src_bs, dst_bs = src_cipher.block_size, dst_cipher.block_size
        if not ciphertext or len(ciphertext) % src_bs or len(ciphertext) % dst_bs:
            raise InvalidInputError(
                "ciphertext",
                f"{len(ciphertext)} bytes is not a whole number of {src_bs}- and "
                f"{dst_bs}-byte blocks",
            )
        clear = _checked_clear(src_cipher.decrypt_ecb(ciphertext), src_bs, check, pan)
        return dst_cipher.encrypt_ecb(clear)

    def check_encrypted(
        self,
        ciphertext: bytes,
        key: KeyRef,
        *,
        check: TranslateCheck,
        pan: str | None = None,
    ) -> None:
        """See :meth:`pipeline.keys.store.KeyStore.check_encrypted`."""
        cipher = self._cipher(self._load(key, Operation.TRANSLATE_FROM))
        bs = cipher.block_size
        if not ciphertext or len(ciphertext) % bs:
            raise InvalidInputError(
                "ciphertext", f"{len(ciphertext)} bytes is not a whole number of {bs}-byte blocks"
            )
        _checked_clear(cipher.decrypt_ecb(ciphertext), bs, check, pan)

    def kcv_of_wrapped(self, tk: KeyRef, ciphertext: bytes, method: str) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.kcv_of_wrapped`."""
        cipher = self._cipher(self._load(tk, Operation.CHECK_WRAPPED))
        bs = cipher.block_size
        if not ciphertext or len(ciphertext) % bs:
            raise InvalidInputError(
                "ciphertext", f"{len(ciphertext)} bytes is not a whole number of {bs}-byte blocks"
            )
        clear = cipher.decrypt_ecb(ciphertext)
        return _kcv3(method)(clear)

    def encrypt_under_tk(self, tk: KeyRef, plaintext: bytes) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.encrypt_under_tk`."""
        if not plaintext:
            raise InvalidInputError("plaintext", "must not be empty")
        return self._wrap_output(self._load(tk, Operation.WRAP_OUTPUT), plaintext)

    def generate_icc_key_pair(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair:
        """See :meth:`pipeline.keys.store.KeyStore.generate_icc_key_pair`."""
        tk_e = self._load(tk, Operation.WRAP_OUTPUT)
        if algorithm == "rsa":
            if bits is None or exponent is None:
                raise InvalidInputError("bits", "RSA ICC keys need bits and exponent")
            check_strength(
                tk_e.record, f"icc-rsa-{bits}", rsa_strength_bits(bits), Operation.WRAP_OUTPUT
            )
            private = rsa.generate_rsa_key(bits, exponent)
            parts = tuple(self._wrap_output(tk_e, c) for c in rsa.crt_components(private))
            return IccKeyPair("rsa", private.modulus, private.exponent_bytes, parts, tk)
        if algorithm == "sm2":
            if tk_e.record.strength_bits < _SM2_STRENGTH:  # raises; skip the call otherwise
                check_strength(tk_e.record, "icc-sm2", _SM2_STRENGTH, Operation.WRAP_OUTPUT)
            d, public = sm2.generate_keypair()
            return IccKeyPair("sm2", public, b"", (self._output_wrapper(tk_e)(d),), tk)
        raise InvalidInputError("algorithm", f"expected 'rsa' or 'sm2', got {algorithm!r}")

    def sign(self, key: KeyRef, data: bytes) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.sign`."""
        entry = self._load(key, Operation.SIGN)
        sign: Callable[[bytes], bytes] | None = entry.objects.get("sign")
        if sign is None:
            assert entry.key is not None
            if entry.record.algorithm is KeyAlgorithm.RSA:
                sign = rsa.RsaSigner(rsa.private_key_from_der(entry.key)).private_op
            else:
                sign = sm2.Sm2Signer(entry.key).sign
            entry.objects["sign"] = sign
        return sign(data)

    def kcv(self, key: KeyRef) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.kcv`."""
        entry = self._load(key, Operation.KCV)
        rec = entry.record
        assert entry.key is not None
        if rec.algorithm.is_symmetric:
            actual = compute_kcv(entry.key, rec.kcv_method, len(rec.kcv))
        elif rec.algorithm is KeyAlgorithm.RSA:
            private = rsa.private_key_from_der(entry.key)
            actual = _asymmetric_kcv(private.modulus, private.exponent_bytes)
        else:
            actual = _asymmetric_kcv(sm2.public_key(entry.key), None)
        if not hmac.compare_digest(actual, rec.kcv):
            raise KeyStoreError(str(key), "stored KCV does not match the key: refused")
        return rec.kcv

    def mac(self, key: KeyRef, data: bytes, purpose: str) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.mac` (AES-CMAC under HKDF(key, purpose))."""
        info = self._purpose(purpose)
        return self._cmac(self._load(key, Operation.MAC), info, data)

    def verify_mac(self, key: KeyRef, data: bytes, mac: bytes, purpose: str) -> bool:
        """See :meth:`pipeline.keys.store.KeyStore.verify_mac`."""
        info = self._purpose(purpose)
        expected = self._cmac(self._load(key, Operation.VERIFY_MAC), info, data)
        return hmac.compare_digest(expected, mac)

    def _cmac(self, entry: _Loaded, info: bytes, data: bytes) -> bytes:
        """AES-CMAC (SP 800-38B) of ``data`` under HKDF(key, "mac/" + purpose).

        The CMAC is keyed once per entry and purpose (:class:`KeyedCmac`, a copy
        finished per message; the pool checks one entry MAC per delivered key)
        and dropped with the entry, like the derived key it is keyed with.
        """
        cache_key = ("cmac", info)
        keyed: KeyedCmac | None = entry.objects.get(cache_key)
        if keyed is None:
            keyed = KeyedCmac(Algorithm.AES, self._derived(entry, "mac", info))
            entry.objects[cache_key] = keyed
        return keyed.mac(data)

    def _purpose(self, purpose: str) -> bytes:
        """:func:`_check_purpose` once per purpose string (a store sees a handful)."""
        info = self._purposes.get(purpose) if type(purpose) is str else None
        if info is None:
            info = _check_purpose(purpose)
            if len(self._purposes) < _PURPOSES_KEPT:
                self._purposes[purpose] = info
        return info

    def pan_token(self, key: KeyRef, pan: str) -> str:
        """See :meth:`pipeline.keys.store.KeyStore.pan_token`."""
        pan = validate_pan(pan)
        entry = self._load(key, Operation.PAN_TOKEN)
        keyed: hmac.HMAC | None = entry.objects.get("pan-token")
        if keyed is None:  # HMAC-SHA-256 keyed once per entry; each PAN goes to a copy
            keyed = hmac.new(self._derived(entry, "pan-token", b"v1"), digestmod=hashlib.sha256)
            entry.objects["pan-token"] = keyed
        mac = keyed.copy()
        mac.update(pan.encode())
        return mac.hexdigest()[:32]

    def _aead(self, entry: _Loaded, purpose: bytes) -> AesGcm:
        cache_key = ("aead", purpose)
        box = entry.objects.get(cache_key)
        if box is None:
            box = AesGcm(self._derived(entry, "data", purpose))
            entry.objects[cache_key] = box
        return box

    def encrypt_data(self, key: KeyRef, plaintext: bytes, purpose: str) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.encrypt_data` (AES-256-GCM envelope)."""
        info = self._purpose(purpose)
        entry = self._load(key, Operation.ENCRYPT_DATA)
        return self._aead(entry, info).seal(plaintext, info)

    def decrypt_data(self, key: KeyRef, ciphertext: bytes, purpose: str) -> bytes:
        """See :meth:`pipeline.keys.store.KeyStore.decrypt_data`."""
        info = self._purpose(purpose)
        entry = self._load(key, Operation.DECRYPT_DATA)
        return self._aead(entry, info).open(ciphertext, info)

    # --- metadata --------------------------------------------------------------------------------

    def get(self, ref_or_label: KeyRef | str, version: int | None = None) -> KeyRecord:
        """See :meth:`pipeline.keys.store.KeyStore.get`."""
        if isinstance(ref_or_label, KeyRef):
            return self._fetch(ref_or_label)
        label = check_label(ref_or_label)
        if version is None:
            with self._snapshot():
                version = self._next_version(label) - 1
                self._check_newest(label, version)
                if version == 0:
                    raise KeyNotFoundError(label, "no such key")
                return self._fetch(KeyRef(label, version))
        return self._fetch(KeyRef(label, version))

    def _check_newest(self, label: str, version: int) -> None:
        """Refuse when the inventory has a newer version of ``label`` than the table (deleted)."""
        if self._writing:
            return
        self._sync_inventory()
        newest = max((v for (name, v) in self._inventory if name == label), default=0)
        if newest != version:
            raise self._inventory_refusal(label)

    def active(self, label: str) -> KeyRef:
        """See :meth:`pipeline.keys.store.KeyStore.active`."""
        row = self._conn.execute(
            "SELECT version FROM keys WHERE label=? AND state=? ORDER BY version DESC LIMIT 1",
            (check_label(label), KeyState.ACTIVE.value),
        ).fetchone()
        if row is None:
            self._verify_now()  # a deleted row reads as "no such key": say it was tampering
            if self._next_version(label) == 1:
                raise KeyNotFoundError(label, "no such key")
            raise KeyStateError(label, "no ACTIVE version")
        return KeyRef(label, int(row[0]))

    def list(self, owner: str | None = None) -> builtins.list[KeyRecord]:
        """See :meth:`pipeline.keys.store.KeyStore.list`."""
        sql = f"SELECT {self._ROW_SELECT} FROM keys"  # noqa: S608
        params: tuple[str, ...] = ()
        if owner is not None:
            sql += " WHERE owner=?"
            params = (owner,)
        with self._snapshot():
            try:
                rows = self._conn.execute(sql + " ORDER BY label, version", params).fetchall()
            except sqlite3.OperationalError as exc:  # e.g. a text column edited to invalid UTF-8
                raise KeyStoreError(
                    "keys", f"a row is unreadable ({type(exc).__name__}): edited outside the store?"
                ) from None
            # row MACs first: an edited row is named as such
            checked = [self._mac_checked_row(values) for values in rows]
            self._verify_now()  # then the whole inventory: no row added, removed or restored
        return [self._record_from_row(row) for row in checked]


def _component_holders(
    count: int, custodians: Sequence[str], threshold: int | None
) -> builtins.list[str]:
    """Check the shape of a component output: ``count`` parts, one distinct custodian each.

    XOR: 2..3 components (:data:`~pipeline.keys.components.MAX_XOR_COMPONENTS`);
    Shamir: ``2 <= threshold <= count <= 255``.

    Example:
        >>> _component_holders(2, ["alice", "bob"], None)
        ['alice', 'bob']
    """
    if not isinstance(count, int) or isinstance(count, bool):
        raise InvalidInputError("count", f"expected an integer, got {count!r}")
    if threshold is None:
        if not MIN_XOR_COMPONENTS <= count <= MAX_XOR_COMPONENTS:
            raise CeremonyError(
                "count",
                f"a key is output as {MIN_XOR_COMPONENTS}..{MAX_XOR_COMPONENTS} XOR "
                f"components, got {count}",
            )
    elif not 2 <= threshold <= count <= 255:  # Shamir over GF(2^8): x = 1..255
        raise CeremonyError("threshold", f"need 2 <= m <= n <= 255, got m={threshold} n={count}")
    ids = [str(c) for c in custodians]
    if len(ids) != count or len(set(ids)) != count:
        raise CeremonyError(
            "custodians",
            f"{count} components need as many distinct custodians, "
            f"got {len(ids)} ({len(set(ids))} distinct)",
        )
    return ids


def _checked_clear(clear: bytes, block_size: int, check: TranslateCheck, pan: str | None) -> bytes:
    """Apply ``check`` to a clear value inside the store; return what to re-encrypt."""
    if check is TranslateCheck.ISO9797_M2:
        unpad_iso9797_m2(clear, block_size)  # raises PaddingError; the value stays here
    elif check is TranslateCheck.PIN_ISO0:
        check_pin_block_iso0(clear, pan)
    elif check is TranslateCheck.PIN_ISO0_TO_ISO2:
        if pan is None:
            raise InvalidInputError("pan", "a format 0 PIN block check needs the PAN")
        return pin_block_iso0_to_iso2(clear, pan)
    return clear
