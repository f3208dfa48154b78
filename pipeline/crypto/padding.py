"""ISO/IEC 9797-1 padding methods 1 and 2.

Method 1: append zero bytes until the length is a multiple of the block size
(nothing is added to data that is already aligned, except that empty data
becomes one zero block).  Method 2: append ``80`` then zero bytes to the next
multiple of the block size (always adds at least one byte); EMV Book 2 A1.2.1
and the 80 00.. padding of EMV CPS secret DGIs.

Example:
    >>> pad_iso9797_m2(b"\\x01\\x02", 8).hex()
    '0102800000000000'
    >>> unpad_iso9797_m2(bytes.fromhex("0102800000000000"), 8).hex()
    '0102'
    >>> pad_iso9797_m1(b"\\x01", 8).hex()
    '0100000000000000'
"""

from __future__ import annotations

from pipeline.errors import InvalidInputError, PaddingError

__all__ = ["pad_iso9797_m1", "pad_iso9797_m2", "unpad_iso9797_m2"]


def _check_block_size(block_size: int) -> None:
    if block_size not in (8, 16):
        raise InvalidInputError("block_size", f"must be 8 or 16, got {block_size}")


def pad_iso9797_m1(data: bytes, block_size: int = 8) -> bytes:
    """ISO/IEC 9797-1:2011 6.1.2 padding method 1: zero bytes to a block boundary.

    Empty data is padded to one block of zeros.  Method 1 cannot be removed
    unambiguously; there is no unpad.
    """
    _check_block_size(block_size)
    if not data:
        return bytes(block_size)
    return bytes(data) + bytes(-len(data) % block_size)


def pad_iso9797_m2(data: bytes, block_size: int = 8) -> bytes:
    """ISO/IEC 9797-1:2011 6.1.3 padding method 2: ``80`` then zeros to a block boundary."""
    _check_block_size(block_size)
    data = bytes(data) + b"\x80"
    return data + bytes(-len(data) % block_size)


def unpad_iso9797_m2(data: bytes, block_size: int = 8) -> bytes:
    """Remove padding method 2; :class:`PaddingError` if it is absent or malformed."""
    _check_block_size(block_size)
    if not data or len(data) % block_size:
        raise PaddingError(
            "data", f"length {len(data)} is not a positive multiple of {block_size}"
        )
    stripped = bytes(data).rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= block_size:
        raise PaddingError("data", "ISO/IEC 9797-1 method 2 padding (80 00..) not found")
    return stripped[:-1]
