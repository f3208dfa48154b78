"""Card data elements built from an issuer record (EMV 4.x Book 3 Annex A, Book 4 Annex B).

Formats (Book 3 section 4.3 "Data element format conventions"):

* ``n``: numeric, BCD, right-justified with leading zeros (``5F28`` country
  ``840`` -> ``0840``; ``5F34`` PSN ``01`` -> ``01``).
* ``cn``: compressed numeric, BCD left-justified, trailing ``F`` nibbles
  (``5A`` PAN).
* ``b``: binary; ``ans``: alphanumeric special, ASCII of the common character
  set (Book 4 Annex B, ``20``..``7E``).

Data elements:

=========  ===============================================  ===================
tag        content                                          format
=========  ===============================================  ===================
``57``     Track 2 Equivalent Data: PAN, ``D``, expiry       b, max 19 bytes
           YYMM, service code, discretionary, ``F`` pad
``5A``     Application PAN                                  cn, max 10 bytes
``5F20``   Cardholder Name                                  ans 2-26
``5F24``   Application Expiration Date YYMMDD (last day)    n 6
``5F25``   Application Effective Date YYMMDD (first day)    n 6
``5F28``   Issuer Country Code (ISO 3166)                   n 3
``5F30``   Service Code                                     n 3
``5F34``   PAN Sequence Number                              n 2
=========  ===============================================  ===================

Error messages show a PAN only masked (first 6 / last 4).

Example:
    >>> track2_equivalent("4761739001010119", "2512", "201", "000000000").hex().upper()
    '4761739001010119D2512201000000000F'
    >>> application_pan("4761739001010119").hex().upper()
    '4761739001010119'
    >>> expiration_date("2402").hex()
    '240229'
"""

from __future__ import annotations

import calendar
import functools

from pipeline.audit.masking import mask_pan
from pipeline.errors import PreparationError

__all__ = [
    "application_pan",
    "cardholder_name",
    "certificate_expiry",
    "compressed_numeric",
    "effective_date",
    "expiration_date",
    "numeric",
    "pan_sequence_number",
    "service_code",
    "track2_equivalent",
]

MAX_TRACK2_BYTES = 19  # Book 3 Annex A: '57' b, var. up to 19
MAX_PAN_DIGITS = 19
MIN_PAN_DIGITS = 12
NAME_MIN, NAME_MAX = 2, 26  # Book 3 Annex A: '5F20' ans 2-26
_PRINTABLE = frozenset(range(0x20, 0x7F))  # Book 4 Annex B common character set


def _digits(value: str, field: str, *, secret: bool = False) -> str:
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        shown = mask_pan(value) if secret and isinstance(value, str) else repr(value)
        raise PreparationError(field, f"must be decimal digits, got {shown}")
    return value


def numeric(value: str | int, length: int, field: str = "value") -> bytes:
    """EMV format ``n``: BCD, right-justified, leading zeros, ``length`` bytes.

    Example:
        >>> numeric("840", 2).hex(), numeric(3, 1).hex()
        ('0840', '03')
    """
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise PreparationError(field, f"must be digits, got {value!r}")
    _digits(text, field)
    if len(text) > 2 * length:
        raise PreparationError(field, f"{len(text)} digits do not fit in {length} bytes")
    return bytes.fromhex(text.rjust(2 * length, "0"))


def compressed_numeric(digits: str, length: int | None = None, field: str = "value") -> bytes:
    """EMV format ``cn``: BCD left-justified, padded with ``F`` (to ``length`` bytes if given).

    Example:
        >>> compressed_numeric("12345").hex().upper(), compressed_numeric("12", 3).hex().upper()
        ('12345F', '12FFFF')
    """
    _digits(digits, field, secret=True)
    nibbles = len(digits) + (len(digits) % 2)
    size = nibbles // 2 if length is None else length
    if len(digits) > 2 * size:
        raise PreparationError(field, f"{len(digits)} digits do not fit in {size} bytes")
    return bytes.fromhex(digits.ljust(2 * size, "F"))


def _check_pan(pan: str) -> str:
    _digits(pan, "pan", secret=True)
    if not MIN_PAN_DIGITS <= len(pan) <= MAX_PAN_DIGITS:
        raise PreparationError(
            "pan",
            f"must be {MIN_PAN_DIGITS}..{MAX_PAN_DIGITS} digits, got {len(pan)} ({mask_pan(pan)})",
        )
    return pan


def application_pan(pan: str) -> bytes:
    """Tag ``5A``: the PAN as ``cn``, ``F``-padded to a whole byte (Book 3 Annex A).

    Example:
        >>> application_pan("6234560000000000017").hex().upper()
        '6234560000000000017F'
    """
    return compressed_numeric(_check_pan(pan), field="pan")


def _check_yymm(yymm: str, field: str) -> tuple[int, int]:
    _digits(yymm, field)
    if len(yymm) != 4 or not 1 <= int(yymm[2:]) <= 12:
        raise PreparationError(field, f"must be YYMM, got {yymm!r}")
    return 2000 + int(yymm[:2]), int(yymm[2:])


def expiration_date(expiry_yymm: str) -> bytes:
    """Tag ``5F24``: YYMMDD with DD the last day of the month (Book 3 Annex A, n 6).

    Example:
        >>> expiration_date("2512").hex(), expiration_date("2802").hex()
        ('251231', '280229')
    """
    _digits(expiry_yymm, "expiry")  # a non-string never reaches the (hashing) cache
    return _expiration_date(expiry_yymm)


@functools.lru_cache(maxsize=1024)
def _expiration_date(expiry_yymm: str) -> bytes:
    """:func:`expiration_date` remembered per YYMM (a batch has few); errors are not cached."""
    year, month = _check_yymm(expiry_yymm, "expiry")
    day = calendar.monthrange(year, month)[1]
    return bytes.fromhex(f"{expiry_yymm}{day:02d}")


def effective_date(effective_yymm: str) -> bytes:
    """Tag ``5F25``: YYMMDD with DD ``01`` (Book 3 Annex A, n 6).

    Example:
        >>> effective_date("2301").hex()
        '230101'
    """
    _digits(effective_yymm, "effective")  # a non-string never reaches the cache
    return _effective_date(effective_yymm)


@functools.lru_cache(maxsize=1024)
def _effective_date(effective_yymm: str) -> bytes:
    """:func:`effective_date` remembered per YYMM; errors are not cached."""
    _check_yymm(effective_yymm, "effective")
    return bytes.fromhex(f"{effective_yymm}01")


def certificate_expiry(expiry_yymm: str) -> str:
    """Certificate Expiration Date field ``MMYY`` from a card expiry ``YYMM`` (Book 2 Table 14).

    Example:
        >>> certificate_expiry("2512")
        '1225'
    """
    _check_yymm(expiry_yymm, "expiry")
    return expiry_yymm[2:] + expiry_yymm[:2]


def pan_sequence_number(psn: str) -> bytes:
    """Tag ``5F34``: the PSN, ``n 2`` in one byte.

    Example:
        >>> pan_sequence_number("01").hex()
        '01'
    """
    if not isinstance(psn, str) or len(psn) != 2:
        raise PreparationError("psn", f"must be 2 digits, got {psn!r}")
    return numeric(psn, 1, "psn")


def service_code(code: str) -> bytes:
    """Tag ``5F30``: the 3-digit service code as ``n 3`` in two bytes.

    Example:
        >>> service_code("201").hex()
        '0201'
    """
    if not isinstance(code, str) or len(code) != 3:
        raise PreparationError("service_code", f"must be 3 digits, got {code!r}")
    return numeric(code, 2, "service_code")


def cardholder_name(name: str) -> bytes:
    """Tag ``5F20``: ``ans 2-26`` in the common character set (Book 4 Annex B).

    Example:
        >>> cardholder_name("DOE/JOHN")
        b'DOE/JOHN'
    """
    if not isinstance(name, str):
        raise PreparationError("name", f"expected str, got {type(name).__name__}")
    # ASCII and printable is exactly 20..7E (str.isprintable): no per-character scan
    bad = (
        []
        if str.isascii(name) and str.isprintable(name)
        else sorted({f"U+{ord(c):04X}" for c in name if ord(c) not in _PRINTABLE})
    )
    if bad:
        raise PreparationError("name", f"characters outside the common set: {', '.join(bad)}")
    data = name.encode("ascii")
    if not NAME_MIN <= len(data) <= NAME_MAX:
        raise PreparationError("name", f"length must be {NAME_MIN}..{NAME_MAX}, got {len(data)}")
    return data


def track2_equivalent(pan: str, expiry_yymm: str, code: str, discretionary: str = "") -> bytes:
    """Tag ``57``: PAN ``D`` YYMM service code discretionary, ``F``-padded (Book 3 Annex A).

    The separator is the nibble ``D``; an odd number of nibbles gets one
    trailing ``F``.  The discretionary data must be digits; the whole value is
    at most 19 bytes (37 nibbles + pad).

    Example:
        >>> track2_equivalent("6234560000000000017", "2812", "220").hex().upper()
        '6234560000000000017D2812220F'
    """
    _check_pan(pan)
    _check_yymm(expiry_yymm, "expiry")
    if not isinstance(code, str) or len(code) != 3:
        raise PreparationError("service_code", f"must be 3 digits, got {code!r}")
    _digits(code, "service_code")
    if discretionary:
        _digits(discretionary, "discretionary", secret=True)
    nibbles = f"{pan}D{expiry_yymm}{code}{discretionary}"
    if len(nibbles) % 2:
        nibbles += "F"
    if len(nibbles) // 2 > MAX_TRACK2_BYTES:
        raise PreparationError(
            "discretionary",
            f"track 2 equivalent would be {len(nibbles) // 2} bytes, at most {MAX_TRACK2_BYTES}",
        )
    return bytes.fromhex(nibbles)
