"""AES-256-GCM envelopes (NIST SP 800-38D) for data at rest.

Envelope layout: ``version (1 byte, 0x01) || nonce (12) || ciphertext || tag (16)``;
the version byte is authenticated as associated data together with the
caller's ``aad``.

Example:
    >>> key = bytes(32)
    >>> box = seal(key, b"secret", b"purpose")
    >>> open_(key, box, b"purpose")
    b'secret'
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import InvalidInputError, MacError

__all__ = ["AesGcm", "open_", "seal"]

_VERSION = b"\x01"
_NONCE = 12
_TAG = 16


class AesGcm:
    """One AES-GCM key, context reused across calls (hot paths)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise InvalidInputError(
                "key", f"AES-GCM key must be 16, 24 or 32 bytes, got {len(key)}"
            )
        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never show the key
        return "AesGcm(<key>)"

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt and authenticate ``plaintext`` (fresh random 96-bit nonce)."""
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, _VERSION + aad)

    def open(self, envelope: bytes, aad: bytes = b"") -> bytes:
        """Decrypt an envelope from :meth:`seal`; :class:`MacError` when it does not verify."""
        if len(envelope) < 1 + _NONCE + _TAG or envelope[:1] != _VERSION:
            raise InvalidInputError(
                "envelope", f"not a v1 AES-GCM envelope ({len(envelope)} bytes)"
            )
        nonce = envelope[1 : 1 + _NONCE]
        try:
            return self._aead.decrypt(nonce, envelope[1 + _NONCE :], _VERSION + aad)
        except InvalidTag:
            raise MacError(
                "envelope", "AES-GCM tag does not verify (wrong key, purpose or tampering)"
            ) from None


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """One-shot :meth:`AesGcm.seal`."""
    return AesGcm(key).seal(plaintext, aad)


def open_(key: bytes, envelope: bytes, aad: bytes = b"") -> bytes:
    """One-shot :meth:`AesGcm.open`."""
    return AesGcm(key).open(envelope, aad)
