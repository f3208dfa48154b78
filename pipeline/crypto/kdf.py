"""Key derivation helpers for the key store: scrypt, HKDF-SHA-256, HMAC-SHA-256.

* scrypt: RFC 7914 (used only to turn a *demo* passphrase into a demo HMK).
* HKDF: RFC 5869 with SHA-256 (purpose-separated keys for MACs, tokens and
  data envelopes derived from a stored key).
* HMAC: RFC 2104 / FIPS 198-1 with SHA-256.

Example:
    >>> hkdf_sha256(bytes(16), b"purpose", 16).hex()[:8]
    'e4f928eb'
    >>> len(scrypt_key(b"demo", bytes(16), 32, n=2**10))
    32
"""

from __future__ import annotations

import hashlib
import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pipeline.errors import InvalidInputError

__all__ = ["hkdf_sha256", "hmac_sha256", "scrypt_key"]

#: scrypt cost for demo passphrases (RFC 7914 section 2: N=2^15, r=8, p=1 is
#: the commonly recommended interactive setting; ~32 MiB, ~0.1 s).
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def scrypt_key(
    passphrase: bytes,
    salt: bytes,
    length: int,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> bytes:
    """Derive ``length`` bytes from ``passphrase`` and ``salt`` with scrypt (RFC 7914).

    Example:
        >>> scrypt_key(b"", b"", 64, n=16, r=1, p=1).hex()[:16]  # RFC 7914 section 12
        '77d6576238657b20'
    """
    if length < 1:
        raise InvalidInputError("length", f"must be >= 1, got {length}")
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(passphrase)


def hkdf_sha256(key: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA-256 (RFC 5869): ``length`` bytes from ``key`` bound to ``info``.

    Example:
        >>> ikm = bytes.fromhex("0b" * 22)
        >>> salt = bytes.fromhex("000102030405060708090a0b0c")
        >>> info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
        >>> hkdf_sha256(ikm, info, 42, salt).hex()[:16]  # RFC 5869 A.1
        '3cb25f25faacd57a'
    """
    if not key:
        raise InvalidInputError("key", "must not be empty")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104 / FIPS 198-1), 32 bytes.

    Example:
        >>> hmac_sha256(b"key", b"The quick brown fox jumps over the lazy dog").hex()[:16]
        'f7bc83f430538424'
    """
    return _hmac.new(key, data, hashlib.sha256).digest()
