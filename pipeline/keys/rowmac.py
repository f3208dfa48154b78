"""Row MACs of the soft key store: every column of a key row bound under an HMK-derived key.

The TR-31 key block at rest binds usage, algorithm, mode of use,
exportability and ``label@vN`` to the key (X9.143 section 6; PCI PIN
Security Requirement 18-3: key attributes cryptographically bound to the
key), but a row also carries owner, state, custodians, KCV, timestamps,
public key and certificate.  Editing those in SQLite must be detected, so
each row carries ``row_mac`` = HMAC-SHA-256 (RFC 2104) under

    row key = HKDF-SHA-256(HMK, info = "cardprep/row-mac", 32 bytes)   (RFC 5869)

over :func:`row_mac_data`: a domain tag and every column of
:data:`ROW_FIELDS` in that order, each value tagged with its type (null,
integer, text, blob), so that neither a column edit, a type change nor a row
copied to another ``label@vN`` verifies.  Only the HMK holder can compute it.

What it does not do: a row MAC cannot tell an old, once-valid row (a restored
backup of the same ``label@vN``) from the current one, nor notice a deleted
or an added row.  The store-wide inventory MAC (:mod:`pipeline.keys.inventory`)
covers every row's ``row_mac`` and closes those gaps, except for a rollback
of the whole database.

Example:
    >>> key = row_mac_key(bytes(32))
    >>> row = dict.fromkeys(ROW_FIELDS) | {"label": "tk", "version": 1}
    >>> mac = row_mac(key, row)
    >>> check_row_mac(key, row, mac)
    >>> try:
    ...     check_row_mac(key, row | {"owner": "issuer:x"}, mac)
    ... except KeyStoreError as exc:
    ...     print(exc.field, "|", exc.detail[:16])
    tk@v1 | row MAC mismatch
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping

from pipeline.crypto.kdf import hkdf_sha256, hmac_sha256
from pipeline.errors import KeyStoreError

__all__ = [
    "ROW_FIELDS",
    "ROW_MAC_INFO",
    "ROW_MAC_SCHEME",
    "check_row_mac",
    "row_mac",
    "row_mac_data",
    "row_mac_key",
    "tagged_value",
]

#: Every column of a ``keys`` row that carries meaning, in MAC order (all but ``row_mac``).
ROW_FIELDS: tuple[str, ...] = (
    "label", "version", "algorithm", "bits", "usage", "role", "mode", "exportability",
    "owner", "state", "prev_state", "kcv", "kcv_method", "custodians", "source",
    "created_at", "activated_at", "updated_at", "destroy_after", "destroyed_at",
    "key_block", "public_key", "public_exponent", "certificate",
)  # fmt: skip
ROW_MAC_INFO = b"cardprep/row-mac"
#: Name recorded in the audit trail and the store's meta table.
ROW_MAC_SCHEME = "hmac-sha256/hkdf-hmk-row-mac/v1"
_DOMAIN = b"cardprep-key-row/v1\x00"


def row_mac_key(hmk: bytes) -> bytes:
    """The row-MAC key: HKDF-SHA-256(HMK, info "cardprep/row-mac"), 32 bytes (RFC 5869).

    Example:
        >>> len(row_mac_key(bytes(32))), row_mac_key(bytes(32)) != bytes(32)
        (32, True)
    """
    return hkdf_sha256(hmk, ROW_MAC_INFO, 32)


def tagged_value(value: object) -> list[object]:
    """A column value with its SQLite storage class, so a type change alters a MAC.

    Shared with :mod:`pipeline.keys.inventory`.

    Example:
        >>> tagged_value(None), tagged_value(7), tagged_value("a"), tagged_value(b"\\x01")
        (['n'], ['i', 7], ['s', 'a'], ['b', '01'])
    """
    if value is None:
        return ["n"]
    if isinstance(value, bool):  # never stored; refuse rather than read as an integer
        raise KeyStoreError("row", f"unexpected boolean column value {value!r}")
    if isinstance(value, int):
        return ["i", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", bytes(value).hex()]
    if isinstance(value, float):
        return ["f", repr(value)]
    raise KeyStoreError("row", f"unexpected column type {type(value).__name__}")


def row_mac_data(row: Mapping[str, object]) -> bytes:
    """The bytes a row MAC covers: domain tag || JSON of [[column, type, value], ...].

    Example:
        >>> row = dict.fromkeys(ROW_FIELDS) | {"label": "k", "version": 2, "public_key": b"\\x01"}
        >>> row_mac_data(row)[:56]
        b'cardprep-key-row/v1\\x00[["label","s","k"],["version","i",2]'
    """
    fields = [[name, *tagged_value(row[name])] for name in ROW_FIELDS]
    return _DOMAIN + json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def row_mac(key: bytes, row: Mapping[str, object]) -> str:
    """HMAC-SHA-256 of :func:`row_mac_data` under the row key, as lowercase hex."""
    return hmac_sha256(key, row_mac_data(row)).hex()


def check_row_mac(key: bytes, row: Mapping[str, object], mac: object) -> None:
    """Raise :class:`KeyStoreError` ``label@vN: row MAC mismatch`` unless ``mac`` verifies.

    A missing (NULL) or malformed MAC is a mismatch.  The message names only
    the row's label and version.
    """
    expected = row_mac(key, row)
    if not isinstance(mac, str) or not hmac.compare_digest(expected, mac.lower()):
        raise KeyStoreError(
            f"{row.get('label')}@v{row.get('version')}",
            "row MAC mismatch (column edited outside the store?): refused",
        )
