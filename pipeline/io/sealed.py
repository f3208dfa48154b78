"""Sealed files: a clear, non-secret header and a payload encrypted by the key store.

Valid card records between parse and prepare carry clear PANs, so they are
never written in clear (issue 5, "Cardholder data is encrypted at rest").  A
sealed file is::

    magic  "CPSEAL1\\n"                                   8 bytes
    n      length of the header, 4 bytes big-endian
    header canonical JSON, n bytes (kind, batch id, counts, key ref: no PAN)
    body   store.encrypt_data(key, n || header || payload, purpose=kind)

The header is repeated *inside* the encrypted body and compared on opening,
so a sealed file cannot be swapped for another batch's or shard's file with
the same key and purpose (the store's AEAD binds the purpose; this binds the
rest).  ``key`` is the ``label@vN`` of a data key (usage D0).

Example:
    >>> blob = seal(store, ref, "staging", {"batch_id": "00ab"}, b"...")  # doctest: +SKIP
    >>> open_sealed(store, blob, "staging")                             # doctest: +SKIP
    ({'batch_id': '00ab', 'key': 'demo-data@v1', 'kind': 'staging'}, b'...')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.audit.trail import canonical
from pipeline.errors import CardprepError, InvalidInputError, VerificationError
from pipeline.io.atomic import write_bytes_atomic
from pipeline.keys.model import KeyRef
from pipeline.keys.store import KeyStore

__all__ = [
    "MAGIC",
    "frame_header",
    "open_sealed",
    "read_sealed",
    "read_sealed_header",
    "seal",
    "seal_framed",
    "write_sealed",
]

MAGIC = b"CPSEAL1\n"
_LEN = 4


def _frame(header: Mapping[str, Any]) -> bytes:
    return frame_header(canonical(dict(header)))


def frame_header(head: bytes) -> bytes:
    """``n || header`` for a header already in canonical JSON (``n``: 4 bytes big-endian).

    Example:
        >>> frame_header(b'{"kind":"card"}').hex()[:8]
        '0000000f'
    """
    return len(head).to_bytes(_LEN, "big") + head


def seal_framed(store: KeyStore, key: KeyRef, kind: str, framed: bytes, payload: bytes) -> bytes:
    """The sealed bytes for a header already framed (:func:`frame_header`) and ``payload``.

    :func:`seal` frames its header and calls this; a caller sealing many
    payloads under headers that differ in one field (the card sealer of
    :mod:`pipeline.io.perso`) frames each header itself.
    """
    return MAGIC + framed + store.encrypt_data(key, framed + payload, kind)


def _unframe(data: bytes, where: str) -> tuple[dict[str, Any], int]:
    if len(data) < _LEN:
        raise VerificationError(f"{where} [sealed header]", "truncated header length")
    n = int.from_bytes(data[:_LEN], "big")
    if _LEN + n > len(data):
        raise VerificationError(
            f"{where} [sealed header]", f"header of {n} bytes runs past the end"
        )
    try:
        header = json.loads(data[_LEN : _LEN + n])
    except ValueError:
        raise VerificationError(f"{where} [sealed header]", "header is not JSON") from None
    if not isinstance(header, dict):
        raise VerificationError(f"{where} [sealed header]", "header is not a JSON object")
    return header, _LEN + n


def seal(
    store: KeyStore, key: KeyRef, kind: str, header: Mapping[str, Any], payload: bytes
) -> bytes:
    """Return the sealed-file bytes for ``payload`` (see the module docstring)."""
    full = {**header, "kind": kind, "key": str(key)}
    return seal_framed(store, key, kind, _frame(full), payload)


def read_sealed_header(blob: bytes, where: str = "sealed file") -> dict[str, Any]:
    """The clear header of a sealed blob (no key needed)."""
    if not blob.startswith(MAGIC):
        raise VerificationError(f"{where} [sealed magic]", "not a cardprep sealed file")
    header, _ = _unframe(blob[len(MAGIC) :], where)
    return header


def open_sealed(
    store: KeyStore, blob: bytes, kind: str, where: str = "sealed file"
) -> tuple[dict[str, Any], bytes]:
    """Decrypt a sealed blob of ``kind``; return (header, payload).

    :class:`~pipeline.errors.VerificationError` names ``where`` and the
    failed check (magic, header, kind, decrypt, binding).
    """
    if not blob.startswith(MAGIC):
        raise VerificationError(f"{where} [sealed magic]", "not a cardprep sealed file")
    header, consumed = _unframe(blob[len(MAGIC) :], where)
    if header.get("kind") != kind:
        raise VerificationError(
            f"{where} [sealed kind]", f"is {header.get('kind')!r}, not {kind!r}"
        )
    try:
        ref = KeyRef.parse(str(header.get("key")))
    except InvalidInputError:
        raise VerificationError(f"{where} [sealed key]", "header names no key") from None
    offset = len(MAGIC) + consumed
    try:
        clear = store.decrypt_data(ref, blob[offset:], kind)
    except CardprepError as exc:
        raise VerificationError(
            f"{where} [sealed decrypt]", f"does not decrypt under {ref}: {exc.field}"
        ) from None
    inner, start = _unframe(clear, where)
    if inner != header:
        raise VerificationError(f"{where} [sealed binding]", "clear and sealed headers differ")
    return header, clear[start:]


def write_sealed(  # noqa: PLR0917 (path, store, key, kind, header, payload)
    path: Path,
    store: KeyStore,
    key: KeyRef,
    kind: str,
    header: Mapping[str, Any],
    payload: bytes,
) -> int:
    """Seal ``payload`` and write it atomically to ``path``; return the file size."""
    blob = seal(store, key, kind, header, payload)
    write_bytes_atomic(path, blob)
    return len(blob)


def read_sealed(store: KeyStore, path: Path, kind: str) -> tuple[dict[str, Any], bytes]:
    """Read and open the sealed file at ``path``."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"{path} [read]", f"cannot read ({type(exc).__name__})") from None
    return open_sealed(store, blob, kind, str(path))
