"""SM3 cryptographic hash (GB/T 32905-2016), through ``cryptography`` (OpenSSL).

Example:
    >>> sm3(b"abc").hex().upper()
    '66C7F0F462EEEDD9D1F2D46BDC10E4E24167C4875CF2F7A2297DA02B8F4BA8E0'
    >>> sm3_concat(b"a", b"bc") == sm3(b"abc")
    True
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from pipeline.errors import InvalidInputError

__all__ = ["DIGEST_SIZE", "sm3", "sm3_concat"]

#: SM3 digest length in bytes (GB/T 32905-2016 section 5: 256 bits).
DIGEST_SIZE = 32

_SM3 = hashes.SM3()


def sm3(data: bytes) -> bytes:
    """SM3 digest of ``data`` (GB/T 32905-2016 section 5), 32 bytes.

    Example:
        >>> len(sm3(b""))
        32
    """
    return sm3_concat(data)


def sm3_concat(*parts: bytes) -> bytes:
    """SM3 of the concatenation of ``parts`` without building the joined bytes.

    Example:
        >>> sm3_concat(b"message ", b"digest") == sm3(b"message digest")
        True
    """
    ctx = hashes.Hash(_SM3)
    for index, part in enumerate(parts):
        if not isinstance(part, bytes | bytearray | memoryview):
            raise InvalidInputError(f"data[{index}]", f"expected bytes, got {type(part).__name__}")
        ctx.update(part)
    return ctx.finalize()
