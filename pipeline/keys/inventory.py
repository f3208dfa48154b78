"""The inventory MAC of the soft key store: which rows exist, as of the last write by the store.

A row MAC (:mod:`pipeline.keys.rowmac`) proves a row was written by the HMK
holder, not that it is the *current* row: an old copy of ``label@vN`` (taken
before a suspension or a destruction, still carrying its key block) verifies,
and a deleted row leaves nothing to check.  The inventory MAC closes that
gap.  The store keeps, in its ``meta`` table under :data:`INVENTORY_META`,

    inventory MAC = HMAC-SHA-256 (RFC 2104) under
    HKDF-SHA-256(HMK, info = "cardprep/inventory-mac", 32 bytes)   (RFC 5869)

over :func:`inventory_data`: a domain tag, then every ``meta`` entry but the
inventory MAC itself, the ``(label, version, row_mac)`` of every ``keys``
row and every column of every ``destruction_evidence`` row, each value
tagged with its SQLite storage class (:func:`~pipeline.keys.rowmac.tagged_value`),
each section in a canonical order.  Because each row's ``row_mac`` covers
all of its columns, the inventory MAC fixes the exact content of the whole
key table.  The store rewrites it in the same transaction as every change
and checks it when it opens, on :meth:`~pipeline.keys.soft.SoftKeyStore.refresh`,
on every write and whenever another process's change is seen; so a row
added, removed or restored, or a ``meta`` or evidence entry edited, outside
the store is refused.

What it does not do: the database rolled back *as a whole* (every row and
the inventory MAC from one older backup) is a consistent older store; only
an anchor outside the database (the audit trail kept elsewhere, an HSM
counter) can tell it from the current one.

Example:
    >>> key = inventory_mac_key(bytes(32))
    >>> meta = {"schema_version": "2", "hmk_kcv": "0A1B2C3D4E"}
    >>> keys = [("tk", 1, "aa" * 32)]
    >>> mac = inventory_mac(key, meta.items(), keys, [])
    >>> check_inventory_mac(key, meta.items(), keys, [], mac)
    >>> try:
    ...     check_inventory_mac(key, meta.items(), [], [], mac)
    ... except KeyStoreError as exc:
    ...     print(exc.field, "|", exc.detail[:26])
    inventory | key inventory MAC mismatch
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Sequence

from pipeline.crypto.kdf import hkdf_sha256, hmac_sha256
from pipeline.errors import KeyStoreError
from pipeline.keys.rowmac import tagged_value

__all__ = [
    "EVIDENCE_FIELDS",
    "INVENTORY_MAC_INFO",
    "INVENTORY_META",
    "INVENTORY_MISMATCH",
    "INVENTORY_SCHEME",
    "check_inventory_mac",
    "inventory_data",
    "inventory_mac",
    "inventory_mac_key",
]

INVENTORY_MAC_INFO = b"cardprep/inventory-mac"
#: Name recorded in the audit trail (``store.create`` / ``store.migrate``).
INVENTORY_SCHEME = "hmac-sha256/hkdf-hmk-inventory-mac/v1"
#: The ``meta`` entry holding the inventory MAC (hex); never covered by itself.
INVENTORY_META = "inventory_mac"
#: Every column of a ``destruction_evidence`` row, in MAC order.
EVIDENCE_FIELDS: tuple[str, ...] = (
    "label", "version", "kcv", "kcv_method", "scheduled_by", "destroyed_by",
    "destroyed_at", "key_block_sha256", "method",
)  # fmt: skip
#: The refusal detail: what is wrong in general terms, never a key or a MAC value.
INVENTORY_MISMATCH = (
    "key inventory MAC mismatch: a row was added, removed or restored, or a meta or "
    "destruction-evidence entry edited, outside the store: refused"
)
_DOMAIN = b"cardprep-key-inventory/v1\x00"


def inventory_mac_key(hmk: bytes) -> bytes:
    """The inventory key: HKDF-SHA-256(HMK, info "cardprep/inventory-mac"), 32 bytes (RFC 5869).

    Example:
        >>> from pipeline.keys.rowmac import row_mac_key
        >>> key = inventory_mac_key(bytes(32))
        >>> len(key), key != row_mac_key(bytes(32))
        (32, True)
    """
    return hkdf_sha256(hmk, INVENTORY_MAC_INFO, 32)


def _canonical(entries: Iterable[Sequence[object]]) -> list[str]:
    """Each entry as compact JSON of its tagged values, sorted (a canonical order for any types)."""
    encoded = (
        json.dumps([tagged_value(v) for v in entry], separators=(",", ":"), ensure_ascii=True)
        for entry in entries
    )
    return sorted(encoded)


def inventory_data(
    meta: Iterable[tuple[object, object]],
    keys: Iterable[Sequence[object]],
    evidence: Iterable[Sequence[object]],
) -> bytes:
    """The bytes an inventory MAC covers: domain tag || meta || keys || evidence sections.

    ``meta`` is (name, value) pairs (an :data:`INVENTORY_META` entry is left
    out); ``keys`` is ``(label, version, row_mac)`` per row; ``evidence`` is
    each evidence row's :data:`EVIDENCE_FIELDS` values.  Order of the input
    does not matter; a changed, added, removed or re-typed value changes the bytes.

    Example:
        >>> inventory_data([("schema_version", "2")], [("tk", 1, "ab")], [])
        b'cardprep-key-inventory/v1\\x00meta\\n[["s","schema_version"],["s","2"]]\\nkeys\\n[["s","tk"],["i",1],["s","ab"]]\\nevidence\\n'
    """
    sections = (
        ("meta", _canonical(entry for entry in meta if entry[0] != INVENTORY_META)),
        ("keys", _canonical(keys)),
        ("evidence", _canonical(evidence)),
    )
    text = "".join(f"{name}\n" + "".join(f"{line}\n" for line in lines) for name, lines in sections)
    return _DOMAIN + text.encode()


def inventory_mac(
    key: bytes,
    meta: Iterable[tuple[object, object]],
    keys: Iterable[Sequence[object]],
    evidence: Iterable[Sequence[object]],
) -> str:
    """HMAC-SHA-256 of :func:`inventory_data` under the inventory key, as lowercase hex."""
    return hmac_sha256(key, inventory_data(meta, keys, evidence)).hex()


def check_inventory_mac(
    key: bytes,
    meta: Iterable[tuple[object, object]],
    keys: Iterable[Sequence[object]],
    evidence: Iterable[Sequence[object]],
    mac: object,
) -> None:
    """Raise :class:`KeyStoreError` ``inventory: key inventory MAC mismatch`` unless it verifies.

    A missing (None) or malformed MAC is a mismatch.  The message names no
    row, key or MAC value.
    """
    expected = inventory_mac(key, meta, keys, evidence)
    if not isinstance(mac, str) or not hmac.compare_digest(expected, mac.lower()):
        raise KeyStoreError("inventory", INVENTORY_MISMATCH)
