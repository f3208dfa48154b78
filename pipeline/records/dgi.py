"""Data groupings (DGIs) and the STORE DATA commands that carry them (EMV CPS v1.1).

EMV Card Personalization Specification v1.1:

* section 4.2 (data grouping format): a DGI is a 2-byte identifier, a length
  of 1 byte (``00``..``FE``) or 3 bytes (``FF`` followed by 2 bytes) and the
  value.  Record DGIs are ``SFI || record number`` (``0101`` .. ``1E10``) and
  hold the record's tag-70 template.
* section 4.3: secret DGIs are encrypted under the transport key; the
  personalization device re-encrypts them under the card's session DEK.
* section 5.x STORE DATA: ``CLA 80``, ``INS E2``; ``P1`` b8 = 1 in the last
  command, b7-b6 = ``11`` when every DGI in the command is encrypted
  (``00`` when none is); ``P2`` = block sequence number from ``00``; ``Lc``
  one byte.  A DGI longer than one command continues in the next ones.

Example:
    >>> encode_dgi(0x9000, bytes.fromhex("08D7B4")).hex().upper()
    '90000308D7B4'
    >>> [a.hex().upper() for a in store_data_apdus([Dgi(0x9000, b"\\x01\\x02\\x03")])]
    ['80E2800006900003010203']
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from pipeline.errors import InvalidInputError

__all__ = [
    "CLA_STORE_DATA",
    "INS_STORE_DATA",
    "MAX_COMMAND_DATA",
    "Dgi",
    "decode_dgis",
    "dgi_length",
    "encode_dgi",
    "encode_dgis",
    "format_dgi",
    "parse_dgi_id",
    "record_dgi",
    "store_data_apdus",
    "store_data_p1",
]

CLA_STORE_DATA = 0x80
INS_STORE_DATA = 0xE2
MAX_COMMAND_DATA = 255  # short Lc (ISO/IEC 7816-4)
MAX_SHORT_LENGTH = 0xFE  # CPS 4.2: one length byte 00..FE
EXTENDED_LENGTH = 0xFF  # CPS 4.2: FF followed by two length bytes
MAX_LENGTH = 0xFFFF
P1_LAST_BLOCK = 0x80  # b8
P1_ALL_ENCRYPTED = 0x60  # b7-b6 = 11
MAX_SFI = 30
MAX_RECORD = 255


@dataclass(frozen=True, slots=True)
class Dgi:
    """One data grouping: identifier, value and whether the value is under the TK.

    Example:
        >>> Dgi(0x8000, bytes(48), encrypted=True).encode()[:3].hex().upper()
        '800030'
    """

    id: int
    value: bytes
    encrypted: bool = False

    def __post_init__(self) -> None:
        ident, value = self.id, self.value
        # the common case (an int id in range, bytes within the limit) in one test;
        # anything else takes the checks below, which raise as they always did
        if (
            type(ident) is int
            and 0 <= ident <= 0xFFFF
            and type(value) is bytes
            and len(value) <= MAX_LENGTH
        ):
            return
        _check_id(self.id)
        if not isinstance(self.value, bytes):
            raise InvalidInputError(
                f"dgi {self.id:04X}", f"value must be bytes, got {type(self.value).__name__}"
            )
        if len(self.value) > MAX_LENGTH:
            raise InvalidInputError(
                f"dgi {self.id:04X}", f"value of {len(self.value)} bytes exceeds {MAX_LENGTH}"
            )

    @property
    def name(self) -> str:
        """The identifier as 4 upper-case hex digits (``'8000'``)."""
        return format_dgi(self.id)

    def encode(self) -> bytes:
        """``id || length || value`` (CPS 4.2)."""
        return encode_dgi(self.id, self.value)

    def __repr__(self) -> str:  # never print values: records hold the PAN, others secrets
        state = "encrypted" if self.encrypted else "clear"
        return f"Dgi({self.name}, {len(self.value)} bytes, {state})"


def _check_id(dgi: int) -> None:
    if isinstance(dgi, bool) or not isinstance(dgi, int) or not 0 <= dgi <= 0xFFFF:
        raise InvalidInputError("dgi", f"identifier must be 0000..FFFF, got {dgi!r}")


def format_dgi(dgi: int) -> str:
    """A DGI identifier as 4 hex digits.

    Example:
        >>> format_dgi(0x101)
        '0101'
    """
    _check_id(dgi)
    return f"{dgi:04X}"


def parse_dgi_id(text: str | int) -> int:
    """Parse a DGI identifier written as 4 hex digits (``"8201"``) or given as an int.

    Example:
        >>> parse_dgi_id("8201") == 0x8201, parse_dgi_id(0x9000) == 0x9000
        (True, True)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        _check_id(text)
        return text
    if not isinstance(text, str) or len(text) != 4:
        raise InvalidInputError("dgi", f"expected 4 hex digits, got {text!r}")
    try:
        return int(text, 16)
    except ValueError:
        raise InvalidInputError("dgi", f"expected 4 hex digits, got {text!r}") from None


def record_dgi(sfi: int, record: int) -> int:
    """The DGI of record ``record`` of file ``sfi``: ``SFI || record`` (CPS 4.2).

    Example:
        >>> format_dgi(record_dgi(2, 1))
        '0201'
    """
    if not 1 <= sfi <= MAX_SFI:
        raise InvalidInputError("sfi", f"must be 1..{MAX_SFI}, got {sfi}")
    if not 1 <= record <= MAX_RECORD:
        raise InvalidInputError("record", f"must be 1..{MAX_RECORD}, got {record}")
    return (sfi << 8) | record


def dgi_length(length: int) -> bytes:
    """Encode a DGI length: 1 byte up to ``FE``, else ``FF`` + 2 bytes (CPS 4.2).

    Example:
        >>> dgi_length(254).hex(), dgi_length(255).hex(), dgi_length(300).hex()
        ('fe', 'ff00ff', 'ff012c')
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise InvalidInputError("length", f"DGI length must be 0..{MAX_LENGTH}, got {length!r}")
    if length <= MAX_SHORT_LENGTH:
        return bytes([length])
    return bytes([EXTENDED_LENGTH]) + length.to_bytes(2, "big")


def encode_dgi(dgi: int, value: bytes) -> bytes:
    """``DGI (2) || length || value`` (CPS 4.2).

    Example:
        >>> encode_dgi(0x0101, bytes.fromhex("7003570100")).hex().upper()
        '0101057003570100'
    """
    _check_id(dgi)
    if not isinstance(value, bytes | bytearray):
        raise InvalidInputError(f"dgi {dgi:04X}", "value must be bytes")
    return dgi.to_bytes(2, "big") + dgi_length(len(value)) + bytes(value)


def encode_dgis(dgis: Iterable[Dgi]) -> bytes:
    """Concatenate the encodings of ``dgis`` in order.

    Example:
        >>> encode_dgis([Dgi(0x9000, b"")]).hex()
        '900000'
    """
    return b"".join(d.encode() for d in dgis)


def decode_dgis(data: bytes, encrypted: Collection[int] = frozenset()) -> list[Dgi]:
    """Decode a concatenation of DGIs (CPS 4.2); ids in ``encrypted`` get the flag.

    The byte stream does not say which DGIs are encrypted, so the caller
    names them (from the product profile).  A truncated identifier, length or
    value raises :class:`~pipeline.errors.InvalidInputError` with the offset.

    Example:
        >>> decode_dgis(bytes.fromhex("8000020102900000"), encrypted={0x8000})
        [Dgi(8000, 2 bytes, encrypted), Dgi(9000, 0 bytes, clear)]
    """
    if not isinstance(data, bytes | bytearray):
        raise InvalidInputError("dgis", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    out: list[Dgi] = []
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise InvalidInputError("dgis", f"offset {offset}: truncated DGI header")
        dgi = int.from_bytes(data[offset : offset + 2], "big")
        first = data[offset + 2]
        position = offset + 3
        if first == EXTENDED_LENGTH:
            if position + 2 > len(data):
                raise InvalidInputError("dgis", f"offset {offset}: truncated extended length")
            length = int.from_bytes(data[position : position + 2], "big")
            position += 2
        else:
            length = first
        if position + length > len(data):
            raise InvalidInputError(
                "dgis", f"offset {offset}: DGI {dgi:04X} value of {length} bytes runs past the end"
            )
        out.append(Dgi(dgi, data[position : position + length], dgi in encrypted))
        offset = position + length
    return out


def store_data_p1(*, last: bool, encrypted: bool) -> int:
    """P1 of a STORE DATA command (CPS: b8 last block, b7-b6 ``11`` all DGIs encrypted).

    Example:
        >>> store_data_p1(last=False, encrypted=True), store_data_p1(last=True, encrypted=True)
        (96, 224)
    """
    return (P1_LAST_BLOCK if last else 0) | (P1_ALL_ENCRYPTED if encrypted else 0)


def _command_payloads(dgis: Sequence[Dgi], max_data: int, pack: bool) -> list[tuple[bytes, bool]]:
    """Cut the DGIs into command data fields, each with its all-encrypted flag.

    One DGI per command (split over several commands when longer than
    ``max_data``); with ``pack``, consecutive DGIs of the same encryption flag
    share a command while they fit, so b7-b6 always describes every DGI in it.
    """
    payloads: list[tuple[bytes, bool]] = []
    for dgi in dgis:
        encoded = dgi.encode()
        if (
            pack
            and payloads
            and payloads[-1][1] == dgi.encrypted
            and len(payloads[-1][0]) + len(encoded) <= max_data
        ):
            payloads[-1] = (payloads[-1][0] + encoded, dgi.encrypted)
            continue
        for start in range(0, len(encoded), max_data):
            payloads.append((encoded[start : start + max_data], dgi.encrypted))
    return payloads


def store_data_apdus(
    dgis: Sequence[Dgi],
    *,
    max_data: int = MAX_COMMAND_DATA,
    pack: bool = False,
    first_sequence: int = 0,
) -> list[bytes]:
    """STORE DATA command APDUs carrying ``dgis`` in order (EMV CPS v1.1).

    ``80 E2 P1 P2 Lc data``: P1 b8 set in the last command only, b7-b6 =
    ``11`` when the command's DGIs are encrypted, P2 the sequence number
    starting at ``first_sequence`` (CPS: ``00``).  A DGI longer than
    ``max_data`` (at most 255) continues in the following commands, whose
    P1 carry the same encryption bits.  More than 256 commands raise
    :class:`~pipeline.errors.InvalidInputError` (P2 is one byte).

    Example (CPS example of an encrypted DGI 8000, 8th command):
        >>> apdus = store_data_apdus([Dgi(0x9000, b"")] * 7 + [Dgi(0x8000, bytes(48), True)] * 2)
        >>> apdus[7][:5].hex().upper(), apdus[8][:5].hex().upper()
        ('80E2600733', '80E2E00833')
    """
    if not 1 <= max_data <= MAX_COMMAND_DATA:
        raise InvalidInputError("max_data", f"must be 1..{MAX_COMMAND_DATA}, got {max_data}")
    if not dgis:
        raise InvalidInputError("dgis", "no DGI to store")
    payloads = _command_payloads(dgis, max_data, pack)
    if first_sequence < 0 or first_sequence + len(payloads) > 256:
        raise InvalidInputError(
            "dgis", f"{len(payloads)} commands from sequence {first_sequence} exceed P2 00..FF"
        )
    apdus: list[bytes] = []
    last_index = len(payloads) - 1
    for index, (data, encrypted) in enumerate(payloads):
        p1 = store_data_p1(last=index == last_index, encrypted=encrypted)
        header = bytes([CLA_STORE_DATA, INS_STORE_DATA, p1, first_sequence + index, len(data)])
        apdus.append(header + data)
    return apdus
