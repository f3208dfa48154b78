"""TR-31 / ANSI X9.143 key blocks: parse, unwrap (A, B, C, D) and wrap (B, D).

Layout (ANSI X9.143-2021 section 6, TR-31:2018 section 5): a 16-character
ASCII header

=====  ======  ===============================================
chars  field   values
=====  ======  ===============================================
0      version A, C (variant binding), B (3DES derivation), D (AES derivation)
1-4    length  total key block length, 4 decimal digits
5-6    usage   K0 KEK, K1 KBPK, E0..E6 EMV keys, D0 data, P0 PIN ...
7      algo    T 3DES, A AES, D DES, H HMAC, R RSA, E EC ...
8      mode    E encrypt, D decrypt, B both, C MAC both, N none, X derive ...
9-10   kvn     key version number, 2 alphanumerics (00 = none)
11     export  E exportable, N non-exportable, S sensitive
12-13  nopt    number of optional blocks, 2 decimal digits
14-15  rfu     00
=====  ======  ===============================================

then the optional blocks (2-character id, 2 hex digit length that covers the
whole block, or ``00`` + 2 hex digit length-of-length + the length, then the
data), padded with a ``PB`` block to a multiple of the cipher block size; then
the hex-encoded encrypted payload (2-byte key length in bits, key, padding)
and the hex-encoded MAC.

Binding methods:

* **A, C** (key variant, TR-31:2018 5.3.1): KBEK = KBPK xor 45.., KBMK = KBPK
  xor 4D..; payload 3DES-CBC under KBEK with IV = the first 8 header bytes;
  MAC = leftmost 4 bytes of 3DES CBC-MAC (ISO/IEC 9797-1 algorithm 1) under
  KBMK over header || encrypted payload.
* **B** (3DES key derivation, 5.3.2.1) and **D** (AES key derivation,
  5.3.2.3): KBEK / KBMK from the KBPK by NIST SP 800-108 counter mode with
  CMAC; MAC = CMAC under KBMK over header || clear payload (8 bytes for B, 16
  for D); the payload is CBC-encrypted under KBEK with the MAC as IV.

Policy (PCI PIN / DOMAIN.md 2): a KBPK weaker than the key it protects is
refused with :class:`~pipeline.errors.KeyBlockStrengthError` on wrap *and*
unwrap (strength: 2-key 3DES 80 bits, 3-key 3DES 112, AES its key size, per
NIST SP 800-57 part 1 table 2).  Errors name the field and the offending
non-secret value, never key material.

Example:
    >>> kbpk = bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB")
    >>> block = ("B0096M3TC00E0000B6CD513680EF255FC0DC590726FD0129A7CF6602E7F27163"
    ...          "1AB4EE7350642F11181AF4CC12F12FD9")
    >>> header, key = unwrap(kbpk, block)
    >>> header.key_usage, header.algorithm, key.hex().upper()
    ('M3', 'T', 'EEEEEEEEEEEEEEEE')
    >>> unwrap(kbpk, wrap(kbpk, "B0000D0TB00N0000", bytes(16)))[1] == bytes(16)
    True
"""

from __future__ import annotations

import hmac
import re
import secrets
import string
from dataclasses import dataclass
from enum import Enum

from pipeline.crypto.ciphers import Algorithm, BlockCipher, key_lengths
from pipeline.crypto.mac import cmac
from pipeline.errors import (
    InvalidInputError,
    KeyBlockError,
    KeyBlockHeaderError,
    KeyBlockMacError,
    KeyBlockStrengthError,
    KeyLengthError,
)

__all__ = ["Header", "Version", "key_strength_bits", "unwrap", "wrap"]

_HEADER_LEN = 16
_ALNUM = re.compile(r"[0-9A-Z]+\Z")
_BLOCK_ID = re.compile(r"[0-9A-Z]{2}\Z")
_HEX = re.compile(r"[0-9A-F]*\Z")
_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))


class Version(Enum):
    """Key block version id (first header character)."""

    A = "A"
    B = "B"
    C = "C"
    D = "D"

    @property
    def block_size(self) -> int:
        """Cipher block size of the binding method: 16 for D (AES), else 8 (3DES)."""
        return 16 if self is Version.D else 8

    @property
    def mac_size(self) -> int:
        """MAC length in bytes: 4 (A, C), 8 (B), 16 (D)."""
        return {Version.A: 4, Version.C: 4, Version.B: 8, Version.D: 16}[self]

    @property
    def kbpk_algorithm(self) -> Algorithm:
        """Algorithm of the key block protection key."""
        return Algorithm.AES if self is Version.D else Algorithm.TDES


def _header_error(field: str, value: str, why: str) -> KeyBlockHeaderError:
    return KeyBlockHeaderError(field, f"{why}, got {value!r}")


def _check_field(field: str, value: str, length: int, allowed: str | None = None) -> None:
    if len(value) != length or not _ALNUM.match(value):
        raise _header_error(field, value, f"must be {length} alphanumeric character(s)")
    if allowed is not None and value not in allowed:
        raise _header_error(field, value, f"must be one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Header:
    """A parsed key block header (without the length, which :meth:`render` takes).

    ``blocks`` holds the optional blocks in order as ``(id, value)`` pairs,
    including a ``PB`` padding block when one was present.

    Example:
        >>> h = Header.parse("D0112P0AE00E0000")
        >>> h.version, h.key_usage, h.algorithm, h.mode_of_use, h.exportability
        ('D', 'P0', 'A', 'E', 'E')
        >>> Header("B", "E0", "T", "X", blocks=(("KS", "00604B120F9292800000"),)).render(96)
        'B0096E0TX00N0100KS1800604B120F9292800000'
    """

    version: str
    key_usage: str
    algorithm: str
    mode_of_use: str
    key_version: str = "00"
    exportability: str = "N"
    blocks: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.version not in {v.value for v in Version}:
            raise _header_error("version", self.version, "supported versions are A, B, C, D")
        _check_field("key_usage", self.key_usage, 2)
        _check_field("algorithm", self.algorithm, 1)
        _check_field("mode_of_use", self.mode_of_use, 1)
        _check_field("key_version", self.key_version, 2)
        _check_field("exportability", self.exportability, 1, "ENS")
        if not isinstance(self.blocks, tuple):
            raise _header_error("blocks", type(self.blocks).__name__, "must be a tuple")
        for block_id, value in self.blocks:
            if not _BLOCK_ID.match(block_id):
                raise _header_error("optional block id", block_id, "must be 2 alphanumerics")
            if not set(value) <= _PRINTABLE:
                raise _header_error(
                    f"optional block {block_id}", "<non-printable>", "must be printable ASCII"
                )
        ids = [block_id for block_id, _ in self.blocks]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise _header_error("optional block id", dup, "appears more than once")
        if len(self.blocks) > 99:
            raise _header_error("blocks", str(len(self.blocks)), "at most 99 optional blocks")

    # --- accessors -------------------------------------------------------------

    def block(self, block_id: str) -> str | None:
        """Value of the first optional block ``block_id``, or ``None``."""
        for bid, value in self.blocks:
            if bid == block_id:
                return value
        return None

    @property
    def kc(self) -> str | None:
        """KC block: KCV of the wrapped key (X9.143 6.3.6.5), e.g. ``"0100" + kcv``."""
        return self.block("KC")

    @property
    def kp(self) -> str | None:
        """KP block: KCV of the KBPK (X9.143 6.3.6.6)."""
        return self.block("KP")

    @property
    def version_enum(self) -> Version:
        """The version as a :class:`Version`."""
        return Version(self.version)

    # --- text form -------------------------------------------------------------

    def render(self, length: int) -> str:
        """The header text (fixed part and optional blocks) for a key block of ``length``."""
        if not 0 <= length <= 9999:
            raise _header_error("length", str(length), "must be 0..9999")
        fixed = (
            f"{self.version}{length:04d}{self.key_usage}{self.algorithm}{self.mode_of_use}"
            f"{self.key_version}{self.exportability}{len(self.blocks):02d}00"
        )
        return fixed + "".join(_render_block(bid, value) for bid, value in self.blocks)

    @classmethod
    def parse(cls, text: str) -> Header:
        """Parse a header, or the header of a whole key block.

        Raises :class:`~pipeline.errors.KeyBlockHeaderError` naming the field.
        """
        header, _length, _end = _parse_header(text)
        return header


def _render_block(block_id: str, value: str) -> str:
    total = 4 + len(value)
    if total <= 0xFF:
        return f"{block_id}{total:02X}{value}"
    # Extended length (X9.143 6.3.6): "00", length of the length, the length.
    total = 2 + 2 + 2 + 4 + len(value)
    if total > 0xFFFF:
        raise _header_error(f"optional block {block_id}", str(len(value)), "value too long")
    return f"{block_id}0004{total:04X}{value}"


def _parse_header(text: str) -> tuple[Header, int, int]:
    """Return (header, declared key block length, index just past the optional blocks)."""
    if not isinstance(text, str):
        raise _header_error("key_block", type(text).__name__, "expected str")
    if not set(text) <= _PRINTABLE:
        raise KeyBlockHeaderError("key_block", "contains non-printable characters")
    if len(text) < _HEADER_LEN:
        raise _header_error("header", str(len(text)), "must be at least 16 characters")
    version = text[0]
    if version not in {v.value for v in Version}:
        raise _header_error("version", version, "supported versions are A, B, C, D")
    length_text = text[1:5]
    if not length_text.isdigit():
        raise _header_error("length", length_text, "must be 4 decimal digits")
    count_text = text[12:14]
    if not count_text.isdigit():
        raise _header_error("optional block count", count_text, "must be 2 decimal digits")
    if text[14:16] != "00":
        raise _header_error("reserved", text[14:16], "must be '00'")
    blocks: list[tuple[str, str]] = []
    pos = _HEADER_LEN
    for _ in range(int(count_text)):
        block_id = text[pos : pos + 2]
        if not _BLOCK_ID.match(block_id):
            raise _header_error("optional block id", block_id, "must be 2 alphanumerics")
        len_text = text[pos + 2 : pos + 4]
        if len(len_text) != 2 or not _HEX.match(len_text):
            raise _header_error(f"optional block {block_id} length", len_text, "must be 2 hex")
        start = pos + 4
        block_len = int(len_text, 16)
        if block_len == 0:  # extended length
            lol_text = text[pos + 4 : pos + 6]
            if len(lol_text) != 2 or not _HEX.match(lol_text) or int(lol_text, 16) == 0:
                raise _header_error(
                    f"optional block {block_id} length of length", lol_text, "must be 2 hex > 0"
                )
            lol = int(lol_text, 16)
            ext_text = text[pos + 6 : pos + 6 + lol]
            if len(ext_text) != lol or not _HEX.match(ext_text):
                raise _header_error(
                    f"optional block {block_id} extended length", ext_text, "must be hex"
                )
            start = pos + 6 + lol
            block_len = int(ext_text, 16)
        if block_len < start - pos or pos + block_len > len(text):
            raise _header_error(
                f"optional block {block_id} length", str(block_len), "does not fit the block"
            )
        blocks.append((block_id, text[start : pos + block_len]))
        pos += block_len
    header = Header(
        version=version,
        key_usage=text[5:7],
        algorithm=text[7],
        mode_of_use=text[8],
        key_version=text[9:11],
        exportability=text[11],
        blocks=tuple(blocks),
    )
    return header, int(length_text), pos


# --- strength policy ------------------------------------------------------------------


def key_strength_bits(algorithm: str, key_len: int) -> int | None:
    """Security strength in bits (NIST SP 800-57 pt 1 table 2) of a key, or ``None``.

    ``algorithm`` is the X9.143 algorithm code: ``T`` (3DES: 16 bytes 80 bits,
    24 bytes 112), ``A`` (AES: the key size), ``D`` (DES: 56).  Other codes
    (RSA, EC, HMAC ...) have no symmetric strength and return ``None``.

    Example:
        >>> key_strength_bits("T", 16), key_strength_bits("A", 32), key_strength_bits("R", 600)
        (80, 256, None)
    """
    if algorithm == "T":
        return {8: 56, 16: 80, 24: 112}.get(key_len)
    if algorithm == "A":
        return key_len * 8 if key_len in (16, 24, 32) else None
    if algorithm == "D":
        return 56
    return None


def _check_strength(version: Version, kbpk_len: int, header: Header, key_len: int) -> None:
    protector = key_strength_bits("A" if version is Version.D else "T", kbpk_len)
    protected = key_strength_bits(header.algorithm, key_len)
    if protector is not None and protected is not None and protector < protected:
        raise KeyBlockStrengthError(
            "kbpk",
            f"{protector}-bit KBPK (version {version.value}, {kbpk_len} bytes) may not protect a "
            f"{protected}-bit key (algorithm {header.algorithm}, {key_len} bytes)",
        )


# --- key binding methods ----------------------------------------------------------------


def _check_kbpk(version: Version, kbpk: bytes) -> None:
    if not isinstance(kbpk, bytes | bytearray):
        raise InvalidInputError("kbpk", f"expected bytes, got {type(kbpk).__name__}")
    allowed = key_lengths(version.kbpk_algorithm)
    if len(kbpk) not in allowed:
        raise KeyLengthError(
            "kbpk",
            f"version {version.value} needs a {version.kbpk_algorithm.value} KBPK of "
            f"{' or '.join(map(str, allowed))} bytes, got {len(kbpk)}",
        )


def _variant_keys(kbpk: bytes) -> tuple[bytes, bytes]:
    """TR-31:2018 5.3.1: KBEK = KBPK xor 45.., KBMK = KBPK xor 4D.. (versions A, C)."""
    return bytes(b ^ 0x45 for b in kbpk), bytes(b ^ 0x4D for b in kbpk)


def _derived_keys(version: Version, kbpk: bytes) -> tuple[bytes, bytes]:
    """TR-31:2018 5.3.2 / X9.143 6.3.2: KBEK and KBMK by SP 800-108 counter mode with CMAC.

    Derivation data (8 bytes): counter || key usage (0000 encryption, 0001
    MAC) || 00 || algorithm (0000 2-key 3DES, 0001 3-key 3DES, 0002/3/4
    AES-128/192/256) || output length in bits.
    """
    algorithm = version.kbpk_algorithm
    if algorithm is Algorithm.TDES:
        algo_id = {16: 0x0000, 24: 0x0001}[len(kbpk)]
    else:
        algo_id = {16: 0x0002, 24: 0x0003, 32: 0x0004}[len(kbpk)]
    bits = len(kbpk) * 8
    bs = algorithm.block_size
    rounds = -(-len(kbpk) // bs)

    def derive(usage: int) -> bytes:
        out = b"".join(
            cmac(
                algorithm,
                kbpk,
                bytes([i]) + usage.to_bytes(2, "big") + b"\x00"
                + algo_id.to_bytes(2, "big") + bits.to_bytes(2, "big"),
            )
            for i in range(1, rounds + 1)
        )
        return out[: len(kbpk)]

    return derive(0x0000), derive(0x0001)


def _split_body(version: Version, key_block: str, header_end: int) -> tuple[bytes, bytes]:
    body = key_block[header_end:]
    mac_hex = version.mac_size * 2
    if not _HEX.match(body):
        raise KeyBlockError("key_block", "payload and MAC must be upper-case hex characters")
    enc_hex = body[:-mac_hex]
    if len(body) <= mac_hex or len(enc_hex) % (2 * version.block_size):
        raise KeyBlockError(
            "key_block",
            f"encrypted payload of {len(enc_hex)} hex characters is not a positive multiple of "
            f"the {version.block_size}-byte block",
        )
    return bytes.fromhex(enc_hex), bytes.fromhex(body[-mac_hex:])


def _payload_key(payload: bytes) -> bytes:
    bits = int.from_bytes(payload[:2], "big")
    if bits % 8 or bits == 0 or bits // 8 > len(payload) - 2:
        raise KeyBlockError(
            "key length",
            f"payload key length {bits} bits is invalid for a {len(payload)}-byte payload",
        )
    return payload[2 : 2 + bits // 8]


def _mac_failed() -> KeyBlockMacError:
    return KeyBlockMacError("mac", "key block MAC does not verify (wrong KBPK or altered block)")


def unwrap(kbpk: bytes, key_block: str) -> tuple[Header, bytes]:
    """Verify and decrypt a TR-31 / X9.143 key block of version A, B, C or D.

    Returns the header and the clear key.  Raises KeyBlockHeaderError (header
    malformed), KeyBlockError (payload malformed), KeyBlockMacError (MAC
    fails: wrong KBPK or tampering), KeyBlockStrengthError (KBPK weaker than
    the key), KeyLengthError (KBPK of the wrong length for the version).
    """
    header, declared, header_end = _parse_header(key_block)
    if declared != len(key_block):
        raise _header_error(
            "length", key_block[1:5], f"does not match the key block length {len(key_block)}"
        )
    version = header.version_enum
    if header_end % version.block_size:
        raise _header_error(
            "header",
            str(header_end),
            f"length must be a multiple of {version.block_size} (PB block missing?)",
        )
    _check_kbpk(version, kbpk)
    ciphertext, mac = _split_body(version, key_block, header_end)
    header_bytes = key_block[:header_end].encode("ascii")
    if version in (Version.A, Version.C):
        kbek, kbmk = _variant_keys(kbpk)
        expected = BlockCipher(Algorithm.TDES, kbmk).cbc_mac(header_bytes + ciphertext)[:4]
        if not hmac.compare_digest(expected, mac):
            raise _mac_failed()
        payload = BlockCipher(Algorithm.TDES, kbek).decrypt_cbc(ciphertext, header_bytes[:8])
    else:
        kbek, kbmk = _derived_keys(version, kbpk)
        algorithm = version.kbpk_algorithm
        payload = BlockCipher(algorithm, kbek).decrypt_cbc(ciphertext, mac)
        expected = cmac(algorithm, kbmk, header_bytes + payload)
        if not hmac.compare_digest(expected, mac):
            raise _mac_failed()
    key = _payload_key(payload)
    _check_strength(version, len(kbpk), header, len(key))
    return header, key


_MASK_TO = {"T": 24, "A": 32}
_PB_CHARS = string.ascii_uppercase + string.digits


def _with_padding_block(header: Header, block_size: int) -> Header:
    """Drop any PB block and add one so the header is a multiple of ``block_size``."""
    blocks = tuple((bid, v) for bid, v in header.blocks if bid != "PB")
    base = Header(
        header.version, header.key_usage, header.algorithm, header.mode_of_use,
        header.key_version, header.exportability, blocks,
    )
    size = len(base.render(0))
    if size % block_size == 0:
        return base
    fill = -(size + 4) % block_size
    if len(blocks) >= 99:
        raise _header_error("blocks", "99", "no room for the PB padding block")
    pad = "".join(secrets.choice(_PB_CHARS) for _ in range(fill))
    return Header(
        base.version, base.key_usage, base.algorithm, base.mode_of_use,
        base.key_version, base.exportability, (*blocks, ("PB", pad)),
    )


def wrap(kbpk: bytes, header: Header | str, key: bytes) -> str:
    """Wrap ``key`` under ``kbpk`` into a version B or D key block.

    ``header`` is a :class:`Header` or header text (the length field is
    recomputed; a whole key block is accepted and only its header used).  A
    PB block is added where the optional blocks need padding.  A 3DES key is
    length-masked to 24 bytes and an AES key to 32 bytes with random bytes
    from :mod:`secrets`, as is the block padding.
    """
    if isinstance(header, str):
        header = Header.parse(header)
    version = header.version_enum
    if version not in (Version.B, Version.D):
        raise _header_error("version", header.version, "wrap supports versions B and D only")
    _check_kbpk(version, kbpk)
    if not isinstance(key, bytes | bytearray) or not key:
        raise InvalidInputError("key", "must be non-empty bytes")
    if header.algorithm == "T" and len(key) not in (8, 16, 24):
        raise KeyLengthError("key", f"3DES key must be 8, 16 or 24 bytes, got {len(key)}")
    if header.algorithm == "A" and len(key) not in (16, 24, 32):
        raise KeyLengthError("key", f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    if len(key) > 0xFFF:
        raise KeyLengthError("key", f"at most 4095 bytes, got {len(key)}")
    _check_strength(version, len(kbpk), header, len(key))

    bs = version.block_size
    header = _with_padding_block(header, bs)
    masked = max(len(key), _MASK_TO.get(header.algorithm, 0))
    pad_len = (masked - len(key)) + (-(2 + masked) % bs)
    payload = (len(key) * 8).to_bytes(2, "big") + bytes(key) + secrets.token_bytes(pad_len)

    header_len = len(header.render(0))
    total = header_len + 2 * len(payload) + 2 * version.mac_size
    header_text = header.render(total)
    algorithm = version.kbpk_algorithm
    kbek, kbmk = _derived_keys(version, bytes(kbpk))
    mac = cmac(algorithm, kbmk, header_text.encode("ascii") + payload)
    ciphertext = BlockCipher(algorithm, kbek).encrypt_cbc(payload, mac)
    return header_text + ciphertext.hex().upper() + mac.hex().upper()
