"""PIN block format checks (ISO 9564-1:2017 section 9.3.1, format 0).

A format 0 PIN block is the XOR of the PIN field ``0 || N || PIN || F..F``
and the PAN field ``0000 || the 12 rightmost PAN digits excluding the check
digit``.  The key store uses :func:`check_pin_block_iso0` inside itself while
translating, so a PIN block encrypted under the wrong key or corrupted is
refused without the clear value ever leaving the backend.

Example (the published worked example also used by the sample generator):
    >>> check_pin_block_iso0(bytes.fromhex("0412AC89ABCDEF67"), "43219876543210987")
"""

from __future__ import annotations

from pipeline.errors import InvalidInputError

PIN_BLOCK_LENGTH = 8
_MIN_PIN, _MAX_PIN = 4, 12


def pan_field_iso0(pan: str) -> bytes:
    """The PAN field of formats 0 and 3: ``0000`` + the 12 digits before the check digit.

    Example:
        >>> pan_field_iso0("43219876543210987").hex().upper()
        '0000987654321098'
    """
    if not pan.isdigit() or len(pan) < 13:
        raise InvalidInputError("pan", f"must be 13..19 digits, got {len(pan)} characters")
    return bytes.fromhex("0000" + pan[-13:-1])


def check_pin_block_iso0(block: bytes, pan: str | None) -> None:
    """Raise ``InvalidInputError`` unless ``block`` is a format 0 PIN block for ``pan``.

    The message names the failed rule only (control field, length, digit,
    fill), never the PIN or the block.
    """
    _checked_pin_field(block, pan)


def _checked_pin_field(block: bytes, pan: str | None) -> tuple[str, int]:
    """:func:`check_pin_block_iso0`'s checks; returns the PIN field (16 upper-case hex
    digits) and the PIN length, for :func:`pin_block_iso0_to_iso2` (one XOR per block).

    Example:
        >>> _checked_pin_field(bytes.fromhex("0412AC89ABCDEF67"), "43219876543210987")[1]
        4
    """
    if pan is None:
        raise InvalidInputError("pan", "a format 0 PIN block check needs the PAN")
    if len(block) != PIN_BLOCK_LENGTH:
        raise InvalidInputError("pin_block", f"must be 8 bytes, got {len(block)}")
    # block XOR PAN field as one 64-bit integer (the per-byte XOR, in one operation)
    value = int.from_bytes(block, "big") ^ int.from_bytes(pan_field_iso0(pan), "big")
    field = value.to_bytes(PIN_BLOCK_LENGTH, "big").hex().upper()
    if field[0] != "0":
        raise InvalidInputError("pin_block", "control field is not 0 (not a format 0 block)")
    length = int(field[1], 16)
    if not _MIN_PIN <= length <= _MAX_PIN:
        raise InvalidInputError("pin_block", "PIN length is not 4..12")
    if not field[2 : 2 + length].isdigit():
        raise InvalidInputError("pin_block", "PIN field holds a non-decimal digit")
    if field[2 + length :] != "F" * (14 - length):
        raise InvalidInputError("pin_block", "fill is not F")
    return field, length


def pin_block_iso0_to_iso2(block: bytes, pan: str) -> bytes:
    """Re-encode a format 0 PIN block as the ISO 9564-1 format 2 block a card holds.

    EMV CPS 1.1 DGI 8010 carries the offline reference PIN as a format 2
    block (``2 || N || PIN || F..F``), which does not depend on the PAN.  The
    key store calls this inside itself; the clear PIN never leaves it.

    Example:
        >>> pin_block_iso0_to_iso2(bytes.fromhex("0412AC89ABCDEF67"), "43219876543210987").hex()
        '241234ffffffffff'
    """
    field, length = _checked_pin_field(block, pan)
    return bytes.fromhex(("2" + field[1 : 2 + length]).ljust(16, "F"))
