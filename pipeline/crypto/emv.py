"""EMV / PBOC key derivation and application cryptograms.

EMV 4.x Book 2 Annex A1 (DOMAIN.md section 3):

* ICC master key derivation, Option A (A1.4.1), Option B (A1.4.2), both with
  a double-length 3DES IMK and odd parity on the result; Option C (A1.4.3,
  AES IMK); the PBOC SM4 derivation (one SM4 block over Y || not Y).
* Common session key derivation (A1.3.1) and the application cryptogram
  (A1.2.1: ISO/IEC 9797-1 MAC algorithm 3, padding method 2, 8 bytes);
  ARPC methods 1 and 2 (A1.2.2 / A1.2.3 in Book 2 numbering of EMV 4.3).
* PBOC SM4 session key and AC (from one open-source PBOC tool; no published
  vector exists, see DOMAIN.md).

For the data-preparation hot loop use :class:`IccMkDeriver`, built once per
IMK, which reuses one cipher context for every card.

Example:
    >>> imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> derive_icc_mk(imk, "12345678901234567", "01").hex().upper()
    '73AD54688CEF2934B0979857E3C719F1'
    >>> IccMkDeriver(imk, "B").derive("12345678901234567", "01").hex().upper()
    'AD406D7F6D7570916D75E5DCAB8CF737'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from enum import Enum

from pipeline.audit.masking import mask_pan
from pipeline.crypto.ciphers import (
    INVERT_TABLE,
    ODD_PARITY_TABLE,
    Algorithm,
    BlockCipher,
    fix_parity,
    xor,
)
from pipeline.crypto.mac import RetailMac, iso9797_mac_alg3
from pipeline.crypto.padding import pad_iso9797_m2
from pipeline.errors import InvalidInputError, KeyLengthError

__all__ = [
    "DerivationOption",
    "IccMkDeriver",
    "derive_icc_mk",
    "derive_session_key",
    "derive_session_key_sm4",
    "generate_ac_sm4",
    "generate_arpc_1",
    "generate_arpc_2",
    "generate_arqc",
    "option_b_y",
    "validate_pan",
    "validate_psn",
]

_FF8 = b"\xff" * 8
_FF16 = b"\xff" * 16


class DerivationOption(Enum):
    """ICC master key derivation methods (value: the option string callers pass)."""

    A = "A"  # EMV Book 2 A1.4.1, 3DES
    B = "B"  # EMV Book 2 A1.4.2, 3DES, SHA-1 for PANs over 16 digits
    C = "C"  # EMV Book 2 A1.4.3, AES ("aes" is accepted as an alias)
    SM4 = "sm4"  # PBOC 3.0 / JR/T 0025 SM4 variant of Option A

    @property
    def algorithm(self) -> Algorithm:
        """The block cipher of the IMK for this option."""
        if self is DerivationOption.C:
            return Algorithm.AES
        if self is DerivationOption.SM4:
            return Algorithm.SM4
        return Algorithm.TDES

    @classmethod
    def parse(cls, option: str | DerivationOption) -> DerivationOption:
        """Accept the enum, ``"A"``, ``"B"``, ``"C"``, ``"aes"`` or ``"sm4"`` (any case).

        Example:
            >>> DerivationOption.parse("aes")
            <DerivationOption.C: 'C'>
        """
        if isinstance(option, DerivationOption):
            return option
        text = str(option).strip().upper()
        aliases = {"A": cls.A, "B": cls.B, "C": cls.C, "AES": cls.C, "SM4": cls.SM4}
        if text not in aliases:
            raise InvalidInputError(
                "option", f"unknown ICC MK derivation option {option!r}; use A, B, C/aes or sm4"
            )
        return aliases[text]


# --- input validation ----------------------------------------------------------


def validate_pan(pan: str) -> str:
    """Check that ``pan`` is 12..19 ASCII digits (ISO/IEC 7812); return it.

    The error message shows the PAN masked (first 6 / last 4) only.

    Example:
        >>> validate_pan("4761739001010119")
        '4761739001010119'
    """
    if not isinstance(pan, str):
        raise InvalidInputError("pan", f"expected str, got {type(pan).__name__}")
    if not (pan.isascii() and pan.isdigit()):
        raise InvalidInputError("pan", f"must be digits only, got {mask_pan(pan)!r}")
    if not 12 <= len(pan) <= 19:
        raise InvalidInputError(
            "pan", f"must be 12..19 digits, got {len(pan)} ({mask_pan(pan)!r})"
        )
    return pan


def validate_psn(psn: str | None) -> str:
    """Check that ``psn`` is exactly 2 digits; ``None`` means ``"00"`` (EMV A1.4.1).

    Example:
        >>> validate_psn(None), validate_psn("01")
        ('00', '01')
    """
    if psn is None:
        return "00"
    if not isinstance(psn, str):
        raise InvalidInputError("psn", f"expected str, got {type(psn).__name__}")
    if len(psn) != 2 or not (psn.isascii() and psn.isdigit()):
        raise InvalidInputError("psn", f"must be 2 digits, got {psn!r}")
    return psn


# --- the Y block of A1.4 ----------------------------------------------------------


def _y_option_a(pan: str, psn: str) -> bytes:
    """A1.4.1 step 1: rightmost 16 digits of PAN || PSN, left-padded with 0, packed BCD."""
    return bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))


def option_b_y(pan: str, psn: str) -> bytes:
    """EMV Book 2 A1.4.2 steps 1-3: the 8-byte Y for PANs of more than 16 digits.

    X = PAN || PSN left-padded to an even number of digits; SHA-1 over its
    packed BCD; the decimal nibbles of the digest left to right, then (if
    fewer than 16) the nibbles A..F mapped to 0..5, left to right.

    Example:
        >>> option_b_y("12345678901234567", "01").hex()
        '4201892658095334'
    """
    x = pan + psn
    if len(x) % 2:
        x = "0" + x
    digest = hashlib.sha1(bytes.fromhex(x)).hexdigest()  # noqa: S324 - mandated by A1.4.2
    digits = [d for d in digest if d.isdigit()]
    if len(digits) < 16:
        digits += [str(int(d, 16) - 10) for d in digest if not d.isdigit()]
    return bytes.fromhex("".join(digits[:16]))


def _y_option_c(pan: str, psn: str) -> bytes:
    """A1.4.3: PAN || PSN left-padded with 0 to 32 digits, packed BCD (16 bytes)."""
    return bytes.fromhex((pan + psn).rjust(32, "0"))


# --- ICC master key derivation ---------------------------------------------------------


class IccMkDeriver:
    """ICC master key derivation under one IMK, one cipher context reused for every card.

    ``derive`` gives exactly what :func:`derive_icc_mk` gives, about 7 times
    faster (``bench/bench_derive.py``) because no cipher context is created
    per card.  Not thread-safe: one instance per thread or process.

    Example:
        >>> d = IccMkDeriver(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "A")
        >>> d.derive("12345678901234567", "01").hex().upper()
        '73AD54688CEF2934B0979857E3C719F1'
    """

    __slots__ = ("_cipher", "_derive", "_encrypt", "_key_size", "option")

    def __init__(self, imk: bytes, option: str | DerivationOption = "A") -> None:
        self.option = DerivationOption.parse(option)
        algorithm = self.option.algorithm
        if algorithm is Algorithm.TDES and len(imk) != 16:
            raise KeyLengthError(
                "imk", f"Option {self.option.value} needs a double-length 3DES IMK (16 bytes), "
                f"got {len(imk)}"
            )
        self._cipher = BlockCipher(algorithm, imk)
        self._key_size = len(imk)
        # Every input below is a whole number of blocks by construction.
        self._encrypt = self._cipher.ecb_encryptor()
        self._derive: Callable[[str, str], bytes] = {
            DerivationOption.A: self._option_a,
            DerivationOption.B: self._option_b,
            DerivationOption.C: self._option_c,
            DerivationOption.SM4: self._option_sm4,
        }[self.option]

    def __repr__(self) -> str:
        return f"IccMkDeriver(option={self.option.value}, {self._cipher!r})"

    def derive(self, pan: str, psn: str | None = None) -> bytes:
        """The ICC master key for ``pan`` / ``psn`` (``None`` = ``"00"``)."""
        if psn is None:
            psn = "00"
        # Fast acceptance of well-formed input; the validators raise the errors.
        if not (type(pan) is str and 12 <= len(pan) <= 19 and pan.isdigit() and pan.isascii()):
            pan = validate_pan(pan)
        if not (type(psn) is str and len(psn) == 2 and psn.isdigit() and psn.isascii()):
            psn = validate_psn(psn)
        return self._derive(pan, psn)

    def _option_a(self, pan: str, psn: str) -> bytes:
        y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))
        return self._encrypt(y + y.translate(INVERT_TABLE)).translate(ODD_PARITY_TABLE)

    def _option_b(self, pan: str, psn: str) -> bytes:
        if len(pan) <= 16:
            return self._option_a(pan, psn)
        y = option_b_y(pan, psn)
        return self._encrypt(y + y.translate(INVERT_TABLE)).translate(ODD_PARITY_TABLE)

    def _option_sm4(self, pan: str, psn: str) -> bytes:
        y = _y_option_a(pan, psn)
        return self._encrypt(y + y.translate(INVERT_TABLE))

    def _option_c(self, pan: str, psn: str) -> bytes:
        # Leftmost k bits of AES(Y) || AES(Y xor FF..FF); AES-128: the first block.
        y = _y_option_c(pan, psn)
        if self._key_size == 16:
            return self._encrypt(y)
        return self._encrypt(y + y.translate(INVERT_TABLE))[: self._key_size]


def derive_icc_mk(
    imk: bytes, pan: str, psn: str | None = None, option: str = "A"
) -> bytes:
    """ICC master key from the issuer master key (EMV Book 2 A1.4; PBOC SM4 variant).

    ``option``: ``"A"`` (A1.4.1) or ``"B"`` (A1.4.2) with a 16-byte 3DES IMK,
    result with odd parity; ``"C"``/``"aes"`` (A1.4.3) with an AES IMK, result
    as long as the IMK; ``"sm4"`` with a 16-byte SM4 IMK: SM4-ECB(IMK)[Y ||
    (Y xor FF*8)], Y as in Option A, no parity (DOMAIN.md 3).

    For many cards under one IMK, build an :class:`IccMkDeriver` once instead.

    Example:
        >>> derive_icc_mk(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
        ...               "12345678901234567", "01", option="B").hex().upper()
        'AD406D7F6D7570916D75E5DCAB8CF737'
    """
    return IccMkDeriver(imk, option).derive(pan, psn)


# --- session keys and cryptograms ------------------------------------------------------


def _check_len(field: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise InvalidInputError(field, f"must be {length} bytes, got {len(value)}")


def derive_session_key(mk: bytes, r: bytes) -> bytes:
    """EMV Book 2 A1.3.1 common session key derivation (3DES), odd parity applied.

    SK_L = 3DES(MK)[R with byte 2 = F0], SK_R = 3DES(MK)[R with byte 2 = 0F];
    for AC keys R = ATC || 00*6.  The parity bits do not change any cipher
    result; compare keys by KCV or after :func:`fix_parity`.

    Example:
        >>> derive_session_key(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
        ...                    bytes.fromhex("001C000000000000")).hex().upper()
        'E9FB384AF807B940FEDCEA613461B0C4'
    """
    if len(mk) != 16:
        raise KeyLengthError("mk", f"must be a 16-byte 3DES key, got {len(mk)} bytes")
    _check_len("r", r, 8)
    left = r[:2] + b"\xf0" + r[3:]
    right = r[:2] + b"\x0f" + r[3:]
    return fix_parity(BlockCipher(Algorithm.TDES, mk).encrypt_ecb(left + right))


def generate_arqc(sk: bytes, data: bytes) -> bytes:
    """Application cryptogram (ARQC/TC/AAC), EMV Book 2 A1.2.1: MAC algorithm 3, pad 2, 8 bytes.

    Example:
        >>> generate_arqc(bytes.fromhex("29B33180E567CE38EA4CBC9D753B0E61"),
        ...               bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")).hex().upper()
        'FA624250B008B59A'
    """
    return iso9797_mac_alg3(sk, data, padding=2)


def generate_arpc_1(sk: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC method 1 (EMV Book 2 A1.2.2 in 4.3): 3DES(SK)[ARQC xor (ARC || 00*6)].

    Example:
        >>> generate_arpc_1(bytes.fromhex("29B33180E567CE38EA4CBC9D753B0E61"),
        ...                 bytes.fromhex("FA624250B008B59A"), bytes(2)).hex().upper()
        '45D4255EEF10C920'
    """
    if len(sk) != 16:
        raise KeyLengthError("sk", f"must be a 16-byte 3DES key, got {len(sk)} bytes")
    _check_len("arqc", arqc, 8)
    _check_len("arc", arc, 2)
    return BlockCipher(Algorithm.TDES, sk).encrypt_ecb(xor(arqc, arc + bytes(6)))


def generate_arpc_2(sk: bytes, arqc: bytes, csu: bytes, prop_auth_data: bytes = b"") -> bytes:
    """ARPC method 2: MAC algorithm 3, padding 2, over ARQC || CSU || proprietary data, 4 bytes.

    Example:
        >>> generate_arpc_2(bytes.fromhex("29B33180E567CE38EA4CBC9D753B0E61"),
        ...                 bytes.fromhex("FA624250B008B59A"), bytes(4)).hex().upper()
        'CB56FA40'
    """
    _check_len("arqc", arqc, 8)
    _check_len("csu", csu, 4)
    if len(prop_auth_data) > 8:
        raise InvalidInputError(
            "prop_auth_data", f"must be 0..8 bytes, got {len(prop_auth_data)}"
        )
    return RetailMac(sk).mac(arqc + csu + prop_auth_data)[:4]


def derive_session_key_sm4(mk: bytes, atc: bytes) -> bytes:
    """PBOC SM4 AC session key: SM4(MK)[00*6 || ATC || 00*6 || (ATC xor FFFF)].

    From DOMAIN.md section 3 (one open-source PBOC tool); no published vector.

    Example:
        >>> len(derive_session_key_sm4(bytes(16), b"\\x00\\x01"))
        16
    """
    _check_len("atc", atc, 2)
    if len(mk) != 16:
        raise KeyLengthError("mk", f"must be a 16-byte SM4 key, got {len(mk)} bytes")
    block = bytes(6) + atc + bytes(6) + xor(atc, b"\xff\xff")
    return BlockCipher(Algorithm.SM4, mk).encrypt_ecb(block)


def generate_ac_sm4(sk: bytes, data: bytes, length: int = 8) -> bytes:
    """PBOC SM4 application cryptogram / script MAC: SM4-CBC-MAC, zero IV, pad 80 00...

    Leftmost ``length`` bytes (8 for the AC, 4 for a script MAC).  From
    DOMAIN.md section 3; no published vector.
    """
    if not 4 <= length <= 16:
        raise InvalidInputError("length", f"must be 4..16, got {length}")
    if len(sk) != 16:
        raise KeyLengthError("sk", f"must be a 16-byte SM4 key, got {len(sk)} bytes")
    return BlockCipher(Algorithm.SM4, sk).cbc_mac(pad_iso9797_m2(data, 16))[:length]
