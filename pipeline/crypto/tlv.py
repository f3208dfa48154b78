"""BER-TLV encoding and decoding as EMV uses it (EMV 4.x Book 3, Annex B).

EMV data objects are BER-TLV (ISO/IEC 8825-1) with a restricted form:

* **Tag** (Book 3 B1): one byte, or more when bits b5..b1 of the first byte are
  all 1 (``1F``); each subsequent byte has b8 = 1 when another byte follows.
  Bit b6 of the first byte marks a *constructed* object (its value is itself
  TLV, e.g. ``70`` record templates, ``A5`` FCI proprietary template).
* **Length** (Book 3 B2): one byte ``00..7F``; or ``81 xx`` (up to 255);
  or ``82 xx xx`` (up to 65535).  Longer forms and the indefinite form ``80``
  are not used by EMV and are refused.

Encoding always produces the shortest length form.  Decoding is strict: a
truncated tag, length or value, an indefinite length or a length form longer
than ``82`` raises :class:`~pipeline.errors.InvalidInputError` naming the
offset.  Non-minimal length forms (``81 05``) are legal BER and accepted.

Example:
    >>> encode_tlv(bytes.fromhex("9F47"), b"\\x03").hex().upper()
    '9F470103'
    >>> decode_tlv(bytes.fromhex("5A0847617390010101195F24032312319F470103"))[1]
    Tlv(tag=b'_$', value=b'#\\x121')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.errors import InvalidInputError

_MULTI_BYTE_TAG = 0x1F
_MORE_TAG_BYTES = 0x80
_CONSTRUCTED = 0x20
_MAX_TAG_BYTES = 4
_MAX_SHORT_LENGTH = 0x7F
_MAX_LENGTH = 0xFFFF
_LONG_FORM_1 = 0x81
_LONG_FORM_2 = 0x82


@dataclass(frozen=True, slots=True)
class Tlv:
    """One BER-TLV data object: its tag bytes and its value bytes.

    Example:
        >>> Tlv(bytes.fromhex("70"), bytes.fromhex("9F470103")).children()
        [Tlv(tag=b'\\x9fG', value=b'\\x03')]
    """

    tag: bytes
    value: bytes

    @property
    def constructed(self) -> bool:
        """True when the tag's b6 says the value is itself TLV (Book 3 B1)."""
        return bool(self.tag[0] & _CONSTRUCTED)

    def encode(self) -> bytes:
        """Return tag || length || value (Book 3 B1, B2)."""
        return encode_tlv(self.tag, self.value)

    def children(self) -> list[Tlv]:
        """Decode the value of a constructed object into its data objects."""
        if not self.constructed:
            raise InvalidInputError("tlv", f"tag {self.tag.hex().upper()} is primitive")
        return decode_tlv(self.value)


def check_tag(tag: bytes) -> None:
    """Raise unless ``tag`` is one well-formed BER tag (Book 3 B1).

    Example:
        >>> check_tag(bytes.fromhex("9F46"))
        >>> check_tag(bytes.fromhex("9F"))
        Traceback (most recent call last):
        ...
        pipeline.errors.InvalidInputError: tag: 9F announces more tag bytes
    """
    if not isinstance(tag, bytes | bytearray) or not tag:
        raise InvalidInputError("tag", "must be non-empty bytes")
    if len(tag) > _MAX_TAG_BYTES:
        raise InvalidInputError("tag", f"{len(tag)} bytes, at most {_MAX_TAG_BYTES}")
    length = _tag_length(bytes(tag), 0)
    if length is None or length > len(tag):
        raise InvalidInputError("tag", f"{tag.hex().upper()} announces more tag bytes")
    if length < len(tag):
        raise InvalidInputError("tag", f"{tag.hex().upper()} has bytes after its last tag byte")


def encode_length(length: int) -> bytes:
    """Encode a BER length in its shortest EMV form (Book 3 B2).

    Example:
        >>> encode_length(5).hex(), encode_length(200).hex(), encode_length(300).hex()
        ('05', '81c8', '82012c')
    """
    if length < 0 or length > _MAX_LENGTH:
        raise InvalidInputError("length", f"{length} is outside 0..{_MAX_LENGTH}")
    if length <= _MAX_SHORT_LENGTH:
        return bytes([length])
    if length <= 0xFF:
        return bytes([_LONG_FORM_1, length])
    return bytes([_LONG_FORM_2]) + length.to_bytes(2, "big")


def encode_tlv(tag: bytes, value: bytes) -> bytes:
    """Return ``tag || length || value`` (Book 3 B1, B2).

    Example:
        >>> encode_tlv(b"\\x5a", bytes.fromhex("4761739001010119")).hex().upper()
        '5A084761739001010119'
    """
    check_tag(tag)
    if not isinstance(value, bytes | bytearray):
        raise InvalidInputError("value", f"expected bytes, got {type(value).__name__}")
    return bytes(tag) + encode_length(len(value)) + bytes(value)


def encode_tlvs(items: Iterable[Tlv]) -> bytes:
    """Concatenate the encodings of ``items`` in order.

    Example:
        >>> encode_tlvs([Tlv(b"\\x82", b"\\x19\\x80")]).hex()
        '82021980'
    """
    return b"".join(item.encode() for item in items)


def decode_tlv(data: bytes) -> list[Tlv]:
    """Decode a sequence of BER-TLV objects (one level; see :meth:`Tlv.children`).

    Raises :class:`InvalidInputError` with the offset of the first malformed
    byte (Book 3 B1, B2).

    Example:
        >>> decode_tlv(bytes.fromhex("82021980940408010101"))
        [Tlv(tag=b'\\x82', value=b'\\x19\\x80'), Tlv(tag=b'\\x94', value=b'\\x08\\x01\\x01\\x01')]
    """
    if not isinstance(data, bytes | bytearray):
        raise InvalidInputError("tlv", f"expected bytes, got {type(data).__name__}")
    return list(_iter_tlv(bytes(data)))


def find_tlv(data: bytes, tag: bytes) -> Tlv | None:
    """Return the first object with ``tag``, searching constructed values depth-first.

    Example:
        >>> find_tlv(bytes.fromhex("70065F2403231231"), bytes.fromhex("5F24")).value.hex()
        '231231'
    """
    for item in decode_tlv(data):
        if item.tag == tag:
            return item
        if item.constructed:
            found = find_tlv(item.value, tag)
            if found is not None:
                return found
    return None


def _tag_length(data: bytes, offset: int) -> int | None:
    """Length of the tag starting at ``offset``, or None when it runs past the end."""
    if data[offset] & _MULTI_BYTE_TAG != _MULTI_BYTE_TAG:
        return 1
    position = offset + 1
    while position < len(data) and position - offset < _MAX_TAG_BYTES:
        if not data[position] & _MORE_TAG_BYTES:
            return position - offset + 1
        position += 1
    return None


def _iter_tlv(data: bytes) -> Iterator[Tlv]:
    offset = 0
    while offset < len(data):
        tag_length = _tag_length(data, offset)
        if tag_length is None:
            raise InvalidInputError("tlv", f"offset {offset}: truncated or over-long tag")
        tag = data[offset : offset + tag_length]
        position = offset + tag_length
        if position >= len(data):
            raise InvalidInputError("tlv", f"offset {position}: missing length of {tag.hex()}")
        first = data[position]
        if first <= _MAX_SHORT_LENGTH:
            length, position = first, position + 1
        elif first in (_LONG_FORM_1, _LONG_FORM_2):
            count = first - 0x80
            if position + 1 + count > len(data):
                raise InvalidInputError("tlv", f"offset {position}: truncated length")
            length = int.from_bytes(data[position + 1 : position + 1 + count], "big")
            position += 1 + count
        else:
            raise InvalidInputError(
                "tlv", f"offset {position}: unsupported length byte {first:02X}"
            )
        if position + length > len(data):
            raise InvalidInputError(
                "tlv", f"offset {position}: value of {length} bytes runs past the end"
            )
        yield Tlv(tag, data[position : position + length])
        offset = position + length
