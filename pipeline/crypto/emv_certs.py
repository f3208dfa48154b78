"""EMV RSA certificates: CA keys, issuer and ICC public-key certificates, SSAD, SDAD.

EMV 4.x Book 2 (Security and Key Management):

* section 5.2 / 11.2.2, Table 29 (in 4.4: Table 26): CA public key checksum;
* section 5.3, Table 6: Issuer Public Key Certificate (tag ``90``, format
  ``02``), remainder ``92``, exponent ``9F32``;
* section 5.4, Table 7: Signed Static Application Data (tag ``93``, format ``03``);
* section 6.3 / 6.4, Table 14: ICC Public Key Certificate (tag ``9F46``,
  format ``04``), remainder ``9F48``, exponent ``9F47``;
* section 6.5, Table 17: Signed Dynamic Application Data (tag ``9F4B``, format ``05``);
* Annex A2.1: RSA with message recovery; Annex B3.1: SHA-1 (indicator ``01``);
* Book 3 section 10.3: the static data to be authenticated.

Every signed block is ``6A || format || data || SHA-1 || BC`` of the signer's
modulus length; the hash covers ``format || data`` and, outside the block,
the remainder, the exponent and (ICC certificate, SSAD) the static data to be
authenticated or (SDAD) the terminal's DDOL data.

Length rules (sections 5.1 and 6.1): ``N_IC <= N_I <= N_CA <= 248``.  The
issuer key field holds ``N_CA - 36`` bytes, the ICC key field ``N_I - 42``;
a shorter key is padded with ``BB``, the rest of a longer one goes in the
remainder.  The standard allows equal lengths (the public Visa test card has
N_IC = N_I = 176), so equality is accepted.

Errors are :class:`~pipeline.errors.CertificateError` naming the failed
field; PANs appear only masked (first 6 / last 4).

Example:
    >>> from pipeline.crypto.rsa import RsaSigner, generate_rsa_key
    >>> ca, issuer = generate_rsa_key(1408, 3), generate_rsa_key(1152, 3)
    >>> cert, rem = build_issuer_certificate(RsaSigner(ca), 176, "476173", "1230",
    ...     b"\\x00\\x00\\x01", issuer.modulus, issuer.exponent_bytes)
    >>> ok = verify_issuer_certificate(cert, ca.modulus, b"\\x03", rem, b"\\x03")
    >>> ok.modulus == issuer.modulus, ok.issuer_identifier.hex()
    (True, '476173ff')
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import NamedTuple

from pipeline.audit.masking import mask_pan
from pipeline.crypto.rsa import RawRsaSigner, rsa_public_op
from pipeline.crypto.tlv import decode_tlv
from pipeline.errors import CertificateError, InvalidInputError

MIN_MODULUS_BYTES = 64  # below this no EMV block fits; real keys are >= 128
MAX_MODULUS_BYTES = 248  # Book 2 sections 5.1 / 6.1: N_CA <= 248
HEADER = 0x6A  # Recovered Data Header
TRAILER = 0xBC  # Recovered Data Trailer
PAD = 0xBB  # padding of the public key field / SSAD pad pattern
HASH_LENGTH = 20  # SHA-1
ISSUER_KEY_OVERHEAD = 36  # Table 6: issuer key field is N_CA - 36 bytes
ICC_KEY_OVERHEAD = 42  # Table 14: ICC key field is N_I - 42 bytes
SSAD_OVERHEAD = 26  # Table 7: pad pattern is N_I - 26 bytes
SDAD_OVERHEAD = 25  # Table 17: pad pattern is N_IC - LDD - 25 bytes
SUPPORTED_EXPONENTS = (b"\x03", b"\x01\x00\x01")  # Annex A2.1.1


class CertificateFormat(IntEnum):
    """Certificate / signed data format byte (Book 2 Tables 6, 7, 14, 17)."""

    ISSUER = 0x02
    SSAD = 0x03
    ICC = 0x04
    SDAD = 0x05


class HashAlgorithm(IntEnum):
    """Hash Algorithm Indicator (Book 2 Annex B3)."""

    SHA1 = 0x01


class PkAlgorithm(IntEnum):
    """Public Key Algorithm Indicator (Book 2 Annex B2)."""

    RSA = 0x01


@dataclass(frozen=True, slots=True)
class CaPublicKey:
    """A certification authority public key as held by a terminal (Book 2 11.2.2)."""

    rid: bytes
    index: bytes
    modulus: bytes
    exponent: bytes
    checksum: bytes
    expiry: str | None = None


@dataclass(frozen=True, slots=True)
class IssuerCertificate:
    """The content of an Issuer Public Key Certificate (Book 2 Table 6).

    ``issuer_identifier`` is the 4 bytes as in the certificate (``476173FF``);
    ``modulus`` is the whole issuer modulus (leftmost part || remainder).
    """

    issuer_identifier: bytes
    expiry: str
    serial: bytes
    hash_algorithm: HashAlgorithm
    pk_algorithm: PkAlgorithm
    modulus: bytes
    exponent: bytes
    hash_result: bytes

    @property
    def issuer_identifier_digits(self) -> str:
        """The identifier's BIN digits with the F padding removed (``'476173'``)."""
        return self.issuer_identifier.hex().upper().rstrip("F")


@dataclass(frozen=True, slots=True)
class IccCertificate:
    """The content of an ICC Public Key Certificate (Book 2 Table 14).

    ``pan`` has the F padding stripped.  The ``repr`` masks it.
    """

    pan: str
    expiry: str
    serial: bytes
    hash_algorithm: HashAlgorithm
    pk_algorithm: PkAlgorithm
    modulus: bytes
    exponent: bytes
    hash_result: bytes

    def __repr__(self) -> str:
        return (
            f"IccCertificate(pan={mask_pan(self.pan)!r}, expiry={self.expiry!r}, "
            f"serial={self.serial.hex()!r}, modulus_length={len(self.modulus)})"
        )


@dataclass(frozen=True, slots=True)
class SignedStaticData:
    """The content of Signed Static Application Data (Book 2 Table 7)."""

    hash_algorithm: HashAlgorithm
    data_authentication_code: bytes
    hash_result: bytes


@dataclass(frozen=True, slots=True)
class SignedDynamicData:
    """The content of Signed Dynamic Application Data (Book 2 Table 17)."""

    hash_algorithm: HashAlgorithm
    icc_dynamic_data: bytes
    hash_result: bytes


# --- small spec-named helpers ------------------------------------------------


def _sha1(data: bytes) -> bytes:
    """SHA-1 (Book 2 Annex B3.1): mandated by EMV for these certificates."""
    return hashlib.sha1(data).digest()  # noqa: S324 - EMV Book 2 B3.1 mandates SHA-1


def capk_checksum(rid: bytes, index: bytes, modulus: bytes, exponent: bytes) -> bytes:
    """SHA-1 over RID || index || modulus || exponent (Book 2 11.2.2, Table 29).

    Example:
        >>> capk_checksum(bytes.fromhex("A000000003"), b"\\x94", b"\\xff", b"\\x03").hex()[:8]
        '3efe2e72'
    """
    if len(rid) != 5:
        raise InvalidInputError("rid", f"{len(rid)} bytes, expected 5")
    if len(index) != 1:
        raise InvalidInputError("ca public key index", f"{len(index)} bytes, expected 1")
    return _sha1(bytes(rid) + bytes(index) + bytes(modulus) + bytes(exponent))


def import_ca_public_key(  # noqa: PLR0917 - positional order is the issue 3 contract
    rid: bytes,
    index: bytes,
    modulus: bytes,
    exponent: bytes,
    checksum: bytes,
    expiry: str | None = None,
) -> CaPublicKey:
    """Accept a CA public key only if its checksum matches (Book 2 11.2.2).

    Example:
        >>> import_ca_public_key(bytes.fromhex("A000000003"), b"\\x94", b"\\xff", b"\\x03",
        ...     bytes(20))
        Traceback (most recent call last):
        ...
        pipeline.errors.CertificateError: ca public key checksum: mismatch for RID A000000003 ...
    """
    _check_modulus(modulus, "ca modulus")
    _check_exponent(exponent, "ca exponent")
    if expiry is not None:
        _check_expiry(expiry)
    expected = capk_checksum(rid, index, modulus, exponent)
    if bytes(checksum) != expected:
        raise CertificateError(
            "ca public key checksum",
            f"mismatch for RID {bytes(rid).hex().upper()} index {bytes(index).hex().upper()}",
        )
    return CaPublicKey(bytes(rid), bytes(index), bytes(modulus), bytes(exponent), expected, expiry)


def _check_modulus(modulus: bytes, name: str) -> None:
    if not isinstance(modulus, bytes | bytearray) or not modulus or modulus[0] == 0:
        raise InvalidInputError(name, "must be non-empty bytes without a leading zero")
    if len(modulus) > MAX_MODULUS_BYTES:
        raise CertificateError(f"{name} length", f"{len(modulus)} exceeds {MAX_MODULUS_BYTES}")


def _check_exponent(exponent: bytes, name: str) -> None:
    if bytes(exponent) not in SUPPORTED_EXPONENTS:
        raise CertificateError(name, f"{bytes(exponent).hex().upper()} is not 03 or 010001")


def _check_expiry(expiry: str) -> bytes:
    """MMYY as 2 bytes of BCD (Book 2 Tables 6, 14: n 4)."""
    if not isinstance(expiry, str) or len(expiry) != 4 or not expiry.isdigit():
        raise InvalidInputError("expiry", "must be 4 digits MMYY")
    if not 1 <= int(expiry[:2]) <= 12:
        raise InvalidInputError("expiry", f"month {expiry[:2]} is not 01..12")
    return bytes.fromhex(expiry)


def _check_serial(serial: bytes) -> bytes:
    if not isinstance(serial, bytes | bytearray) or len(serial) != 3:
        raise InvalidInputError("serial", "must be 3 bytes")
    return bytes(serial)


def _f_padded(digits: str, length: int, name: str, lo: int, hi: int) -> bytes:
    """Digits packed as BCD, right-padded with F to ``length`` bytes (cn format)."""
    if not isinstance(digits, str) or not digits.isdigit() or not lo <= len(digits) <= hi:
        raise InvalidInputError(name, f"must be {lo}..{hi} digits")
    return bytes.fromhex(digits.ljust(2 * length, "F"))


def _key_field(modulus: bytes, field_length: int) -> tuple[bytes, bytes]:
    """Split a modulus into the certificate's key field (BB-padded) and the remainder."""
    if len(modulus) <= field_length:
        return bytes(modulus) + bytes([PAD]) * (field_length - len(modulus)), b""
    return bytes(modulus[:field_length]), bytes(modulus[field_length:])


def _check_signer(signer: RawRsaSigner, modulus_len: int, name: str) -> None:
    if signer.size_bytes != modulus_len:
        raise CertificateError(
            f"{name} length", f"signer modulus is {signer.size_bytes} bytes, not {modulus_len}"
        )
    if modulus_len > MAX_MODULUS_BYTES:
        raise CertificateError(f"{name} length", f"{modulus_len} exceeds {MAX_MODULUS_BYTES}")


def _sign_recoverable(signer: RawRsaSigner, body: bytes, hashed_tail: bytes) -> bytes:
    """``6A || body || SHA-1(body || tail) || BC``, signed (Book 2 Annex A2.1.2)."""
    block = bytes([HEADER]) + body + _sha1(body + hashed_tail) + bytes([TRAILER])
    return signer.private_op(block)


def _recover(
    cert: bytes, modulus: bytes, exponent: bytes, fmt: CertificateFormat, what: str
) -> bytes:
    """Recover a block and check length, trailer, header and format (e.g. 5.3 steps 1-4).

    Returns ``format || data`` (the hashed part) followed by the hash result.
    """
    if len(modulus) < MIN_MODULUS_BYTES:
        raise CertificateError(f"{what} length", f"modulus of {len(modulus)} bytes is too short")
    if not isinstance(cert, bytes | bytearray) or len(cert) != len(modulus):
        raise CertificateError(
            f"{what} length", f"{len(cert)} bytes, expected the modulus length {len(modulus)}"
        )
    try:
        recovered = rsa_public_op(modulus, exponent, cert)
    except InvalidInputError as exc:
        raise CertificateError(what, f"cannot be recovered ({exc.detail})") from exc
    if recovered[-1] != TRAILER:
        raise CertificateError(f"{what} trailer", f"{recovered[-1]:02X}, expected BC")
    if recovered[0] != HEADER:
        raise CertificateError(f"{what} header", f"{recovered[0]:02X}, expected 6A")
    if recovered[1] != fmt:
        raise CertificateError(f"{what} format", f"{recovered[1]:02X}, expected {fmt:02X}")
    return recovered[1:-1]


def _indicators(
    hash_byte: int, pk_byte: int | None, what: str
) -> tuple[HashAlgorithm, PkAlgorithm]:
    if hash_byte != HashAlgorithm.SHA1:
        raise CertificateError(f"{what} hash algorithm", f"indicator {hash_byte:02X} not supported")
    if pk_byte is not None and pk_byte != PkAlgorithm.RSA:
        raise CertificateError(f"{what} pk algorithm", f"indicator {pk_byte:02X} not supported")
    return HashAlgorithm.SHA1, PkAlgorithm.RSA


def _recovered_expiry(raw: bytes, what: str) -> str:
    text = raw.hex()
    if not text.isdigit() or not 1 <= int(text[:2]) <= 12:
        raise CertificateError(f"{what} expiry", f"{text.upper()} is not MMYY")
    return text


def _check_not_expired(expiry: str, at: date, what: str) -> None:
    """Book 2 5.3 step 9 / 6.4 step 9: the last day of MMYY must be >= today.

    YY 00..49 means 20YY, 50..99 means 19YY (Book 3 / Book 4 date convention).
    """
    month, yy = int(expiry[:2]), int(expiry[2:])
    year = 2000 + yy if yy < 50 else 1900 + yy
    last = date(year, month, calendar.monthrange(year, month)[1])
    if last < at:
        raise CertificateError(f"{what} expiry", f"{expiry} is before {at.isoformat()}")


def _modulus_from_field(field: bytes, key_length: int, remainder: bytes, what: str) -> bytes:
    """Join the key field and the remainder (Book 2 5.3 step 12 / 6.4 step 12)."""
    if key_length > len(field):
        needed = key_length - len(field)
        if len(remainder) != needed:
            raise CertificateError(
                f"{what} remainder length", f"{len(remainder)} bytes, expected {needed}"
            )
        return field + bytes(remainder)
    if remainder:
        raise CertificateError(f"{what} remainder length", f"{len(remainder)} bytes, expected 0")
    return field[:key_length]


def _check_hash(recovered_hash: bytes, hashed: bytes, what: str) -> None:
    if _sha1(hashed) != recovered_hash:
        raise CertificateError(f"{what} hash", "recovered hash result does not match the data")


# --- issuer public key certificate (Book 2 5.3, Table 6) ---------------------


def build_issuer_certificate(  # noqa: PLR0917 - positional order is the issue 3 contract
    ca_signer: RawRsaSigner,
    ca_modulus_len: int,
    issuer_identifier: str,
    expiry: str,
    serial: bytes,
    issuer_modulus: bytes,
    issuer_exponent: bytes,
) -> tuple[bytes, bytes]:
    """Sign an Issuer Public Key Certificate; return (tag 90, tag 92) (Book 2 Table 6).

    ``issuer_identifier`` is the 3..8 leftmost PAN digits (F-padded to 4 bytes).
    Requires ``N_I <= N_CA <= 248`` (section 5.1).

    Example:
        >>> from pipeline.crypto.rsa import RsaSigner, generate_rsa_key
        >>> ca, iss = generate_rsa_key(1024, 3), generate_rsa_key(1024, 3)
        >>> cert, rem = build_issuer_certificate(RsaSigner(ca), 128, "476173", "1230",
        ...     b"\\x00\\x00\\x01", iss.modulus, b"\\x03")
        >>> len(cert), len(rem)
        (128, 36)
    """
    what = "issuer certificate"
    _check_signer(ca_signer, ca_modulus_len, "ca modulus")
    _check_modulus(issuer_modulus, "issuer modulus")
    _check_exponent(issuer_exponent, "issuer exponent")
    if len(issuer_modulus) > ca_modulus_len:
        raise CertificateError(
            f"{what} lengths",
            f"issuer modulus {len(issuer_modulus)} bytes exceeds CA modulus {ca_modulus_len}",
        )
    field, remainder = _key_field(issuer_modulus, ca_modulus_len - ISSUER_KEY_OVERHEAD)
    body = (
        bytes([CertificateFormat.ISSUER])
        + _f_padded(issuer_identifier, 4, "issuer identifier", 3, 8)
        + _check_expiry(expiry)
        + _check_serial(serial)
        + bytes([HashAlgorithm.SHA1, PkAlgorithm.RSA, len(issuer_modulus), len(issuer_exponent)])
        + field
    )
    cert = _sign_recoverable(ca_signer, body, remainder + bytes(issuer_exponent))
    return cert, remainder


def recover_issuer_certificate(
    cert: bytes, ca_modulus: bytes, ca_exponent: bytes, remainder: bytes, issuer_exponent: bytes
) -> IssuerCertificate:
    """Recover and parse an Issuer PK Certificate without the hash check (5.3 steps 1-4, 10-12).

    Use :func:`verify_issuer_certificate` to accept a certificate.
    """
    return _open_issuer(cert, ca_modulus, ca_exponent, remainder, issuer_exponent)[0]


def _open_issuer(
    cert: bytes, ca_modulus: bytes, ca_exponent: bytes, remainder: bytes, issuer_exponent: bytes
) -> tuple[IssuerCertificate, bytes]:
    what = "issuer certificate"
    _check_modulus(ca_modulus, "ca modulus")
    data = _recover(cert, ca_modulus, ca_exponent, CertificateFormat.ISSUER, what)
    hash_alg, pk_alg = _indicators(data[10], data[11], what)
    key_length, exponent_length = data[12], data[13]
    if not 0 < key_length <= len(ca_modulus):
        raise CertificateError(f"{what} lengths", f"issuer key {key_length} exceeds CA modulus")
    if exponent_length != len(issuer_exponent):
        raise CertificateError(
            f"{what} exponent length",
            f"certificate says {exponent_length}, exponent has {len(issuer_exponent)}",
        )
    field = data[14 : len(ca_modulus) - ISSUER_KEY_OVERHEAD + 14]
    parsed = IssuerCertificate(
        issuer_identifier=data[1:5],
        expiry=_recovered_expiry(data[5:7], what),
        serial=data[7:10],
        hash_algorithm=hash_alg,
        pk_algorithm=pk_alg,
        modulus=_modulus_from_field(field, key_length, remainder, what),
        exponent=bytes(issuer_exponent),
        hash_result=data[-HASH_LENGTH:],
    )
    return parsed, data


def verify_issuer_certificate(
    cert: bytes,
    ca_modulus: bytes,
    ca_exponent: bytes,
    remainder: bytes,
    issuer_exponent: bytes,
    *,
    pan: str | None = None,
    at: date | None = None,
) -> IssuerCertificate:
    """Recover and verify an Issuer Public Key Certificate (Book 2 5.3, steps 1-12).

    Checks length, trailer ``BC``, header ``6A``, format ``02``, indicators,
    lengths and the SHA-1 over fields 2..10 || remainder || exponent.  With
    ``pan``, also step 8 (issuer identifier = leftmost PAN digits); with
    ``at``, also step 9 (not expired on that date).
    """
    what = "issuer certificate"
    recovered, data = _open_issuer(cert, ca_modulus, ca_exponent, remainder, issuer_exponent)
    _check_hash(
        recovered.hash_result, data[:-HASH_LENGTH] + bytes(remainder) + bytes(issuer_exponent), what
    )
    if pan is not None and not pan.startswith(recovered.issuer_identifier_digits):
        raise CertificateError(
            f"{what} issuer identifier",
            f"{recovered.issuer_identifier_digits} does not start PAN {mask_pan(pan)}",
        )
    if at is not None:
        _check_not_expired(recovered.expiry, at, what)
    return recovered


# --- ICC public key certificate (Book 2 6.3/6.4, Table 14) -------------------


def build_icc_certificate(  # noqa: PLR0917 - positional order is the issue 3 contract
    issuer_signer: RawRsaSigner,
    issuer_modulus_len: int,
    pan: str,
    expiry: str,
    serial: bytes,
    icc_modulus: bytes,
    icc_exponent: bytes,
    static_data: bytes,
) -> tuple[bytes, bytes]:
    """Sign an ICC Public Key Certificate; return (tag 9F46, tag 9F48) (Book 2 Table 14).

    The hash covers fields 2..10 || remainder || exponent || ``static_data``
    (the static data to be authenticated, Book 3 10.3, including the AIP when
    the SDA tag list names it).  Requires ``N_IC <= N_I`` (section 6.1).
    """
    what = "icc certificate"
    _check_signer(issuer_signer, issuer_modulus_len, "issuer modulus")
    _check_modulus(icc_modulus, "icc modulus")
    _check_exponent(icc_exponent, "icc exponent")
    if len(icc_modulus) > issuer_modulus_len:
        raise CertificateError(
            f"{what} lengths",
            f"ICC modulus {len(icc_modulus)} bytes exceeds issuer modulus {issuer_modulus_len}",
        )
    field, remainder = _key_field(icc_modulus, issuer_modulus_len - ICC_KEY_OVERHEAD)
    body = (
        bytes([CertificateFormat.ICC])
        + _f_padded(pan, 10, "pan", 12, 19)
        + _check_expiry(expiry)
        + _check_serial(serial)
        + bytes([HashAlgorithm.SHA1, PkAlgorithm.RSA, len(icc_modulus), len(icc_exponent)])
        + field
    )
    cert = _sign_recoverable(
        issuer_signer, body, remainder + bytes(icc_exponent) + bytes(static_data)
    )
    return cert, remainder


def recover_icc_certificate(
    cert: bytes,
    issuer_modulus: bytes,
    issuer_exponent: bytes,
    remainder: bytes,
    icc_exponent: bytes,
) -> IccCertificate:
    """Recover and parse an ICC PK Certificate without the hash check (6.4 steps 1-4, 10-12).

    Use :func:`verify_icc_certificate` to accept a certificate.
    """
    return _open_icc(cert, issuer_modulus, issuer_exponent, remainder, icc_exponent)[0]


def _open_icc(
    cert: bytes,
    issuer_modulus: bytes,
    issuer_exponent: bytes,
    remainder: bytes,
    icc_exponent: bytes,
) -> tuple[IccCertificate, bytes]:
    what = "icc certificate"
    _check_modulus(issuer_modulus, "issuer modulus")
    data = _recover(cert, issuer_modulus, issuer_exponent, CertificateFormat.ICC, what)
    hash_alg, pk_alg = _indicators(data[16], data[17], what)
    key_length, exponent_length = data[18], data[19]
    if not 0 < key_length <= len(issuer_modulus):
        raise CertificateError(f"{what} lengths", f"ICC key {key_length} exceeds issuer modulus")
    if exponent_length != len(icc_exponent):
        raise CertificateError(
            f"{what} exponent length",
            f"certificate says {exponent_length}, exponent has {len(icc_exponent)}",
        )
    pan_text = data[1:11].hex().upper().rstrip("F")
    if not pan_text.isdigit():
        raise CertificateError(f"{what} pan", "recovered PAN field is not F-padded digits")
    field = data[20 : len(issuer_modulus) - ICC_KEY_OVERHEAD + 20]
    parsed = IccCertificate(
        pan=pan_text,
        expiry=_recovered_expiry(data[11:13], what),
        serial=data[13:16],
        hash_algorithm=hash_alg,
        pk_algorithm=pk_alg,
        modulus=_modulus_from_field(field, key_length, remainder, what),
        exponent=bytes(icc_exponent),
        hash_result=data[-HASH_LENGTH:],
    )
    return parsed, data


def verify_icc_certificate(  # noqa: PLR0917 - positional order is the issue 3 contract
    cert: bytes,
    issuer_modulus: bytes,
    issuer_exponent: bytes,
    remainder: bytes,
    icc_exponent: bytes,
    static_data: bytes,
    *,
    pan: str | None = None,
    at: date | None = None,
) -> IccCertificate:
    """Recover and verify an ICC Public Key Certificate (Book 2 6.4, steps 1-12).

    As :func:`verify_issuer_certificate`; the hash also covers
    ``static_data``.  With ``pan``, step 8 (recovered PAN = application PAN);
    with ``at``, step 9 (not expired).
    """
    what = "icc certificate"
    recovered, data = _open_icc(cert, issuer_modulus, issuer_exponent, remainder, icc_exponent)
    _check_hash(
        recovered.hash_result,
        data[:-HASH_LENGTH] + bytes(remainder) + bytes(icc_exponent) + bytes(static_data),
        what,
    )
    if pan is not None and recovered.pan != pan:
        raise CertificateError(
            f"{what} pan", f"recovered {mask_pan(recovered.pan)} differs from {mask_pan(pan)}"
        )
    if at is not None:
        _check_not_expired(recovered.expiry, at, what)
    return recovered


# --- Signed Static Application Data (Book 2 5.4, Table 7) --------------------


def build_signed_static_data(
    issuer_signer: RawRsaSigner, issuer_modulus_len: int, dac: bytes, static_data: bytes
) -> bytes:
    """Sign Static Application Data for SDA; return tag 93 (Book 2 5.4, Table 7).

    ``dac`` is the 2-byte Data Authentication Code; the hash covers
    ``03 || 01 || DAC || BB.. || static_data``.
    """
    _check_signer(issuer_signer, issuer_modulus_len, "issuer modulus")
    if not isinstance(dac, bytes | bytearray) or len(dac) != 2:
        raise InvalidInputError("data authentication code", "must be 2 bytes")
    body = (
        bytes([CertificateFormat.SSAD, HashAlgorithm.SHA1])
        + bytes(dac)
        + bytes([PAD]) * (issuer_modulus_len - SSAD_OVERHEAD)
    )
    return _sign_recoverable(issuer_signer, body, bytes(static_data))


def recover_signed_static_data(
    ssad: bytes, issuer_modulus: bytes, issuer_exponent: bytes
) -> SignedStaticData:
    """Recover SSAD fields without the hash check (Book 2 5.4 steps 1-4)."""
    return _open_ssad(ssad, issuer_modulus, issuer_exponent)[0]


def _open_ssad(
    ssad: bytes, issuer_modulus: bytes, issuer_exponent: bytes
) -> tuple[SignedStaticData, bytes]:
    data = _recover(ssad, issuer_modulus, issuer_exponent, CertificateFormat.SSAD, "ssad")
    hash_alg, _ = _indicators(data[1], None, "ssad")
    return SignedStaticData(hash_alg, data[2:4], data[-HASH_LENGTH:]), data


def verify_signed_static_data(
    ssad: bytes, issuer_modulus: bytes, issuer_exponent: bytes, static_data: bytes
) -> SignedStaticData:
    """Recover and verify Signed Static Application Data (Book 2 5.4 steps 1-7)."""
    recovered, data = _open_ssad(ssad, issuer_modulus, issuer_exponent)
    _check_hash(recovered.hash_result, data[:-HASH_LENGTH] + bytes(static_data), "ssad")
    return recovered


# --- Signed Dynamic Application Data (Book 2 6.5, Table 17) ------------------


def build_signed_dynamic_data(
    icc_signer: RawRsaSigner, icc_modulus_len: int, icc_dynamic_data: bytes, terminal_data: bytes
) -> bytes:
    """Sign Dynamic Application Data (DDA, format 05); return tag 9F4B (Book 2 Table 17).

    Used by tests and by card simulators; ``terminal_data`` is the DDOL data.
    """
    _check_signer(icc_signer, icc_modulus_len, "icc modulus")
    pad = icc_modulus_len - len(icc_dynamic_data) - SDAD_OVERHEAD
    if len(icc_dynamic_data) > 255 or pad < 0:
        raise InvalidInputError("icc dynamic data", f"{len(icc_dynamic_data)} bytes is too long")
    body = (
        bytes([CertificateFormat.SDAD, HashAlgorithm.SHA1, len(icc_dynamic_data)])
        + bytes(icc_dynamic_data)
        + bytes([PAD]) * pad
    )
    return _sign_recoverable(icc_signer, body, bytes(terminal_data))


def verify_signed_dynamic_data(
    sdad: bytes, icc_modulus: bytes, icc_exponent: bytes, terminal_data: bytes
) -> SignedDynamicData:
    """Recover and verify Signed Dynamic Application Data (Book 2 6.5.2 steps 1-8)."""
    data = _recover(sdad, icc_modulus, icc_exponent, CertificateFormat.SDAD, "sdad")
    hash_alg, _ = _indicators(data[1], None, "sdad")
    ldd = data[2]
    if 3 + ldd > len(data) - HASH_LENGTH:
        raise CertificateError("sdad dynamic data length", f"{ldd} does not fit the block")
    hash_result = data[-HASH_LENGTH:]
    _check_hash(hash_result, data[:-HASH_LENGTH] + bytes(terminal_data), "sdad")
    return SignedDynamicData(hash_alg, data[3 : 3 + ldd], hash_result)


# --- static data to be authenticated (Book 3 10.3) ---------------------------

AIP_TAG = b"\x82"  # the only tag the SDA Tag List (9F4A) may hold
RECORD_TEMPLATE_TAG = 0x70  # READ RECORD response template
LAST_TEMPLATE_SFI = 10  # SFIs 1..10 hold tag-70 templates; 11..30 are signed whole
MAX_SFI = 30


class OdaRecord(NamedTuple):
    """One record the AFL marks for offline data authentication (Book 3 10.2 / 10.3).

    An ``(sfi, number, data)`` triple: ``data`` is the record as READ RECORD
    returns it (tag ``70``, length, value); ``number`` is the record number
    when the caller knows it, and errors then name the record as
    ``record SSRR`` (SFI and record number in hex).  A named tuple rather than
    a dataclass because one is built per ODA record of every prepared card.

    Example:
        >>> OdaRecord(2, 1, bytes.fromhex("70035A0112")).label
        'record 0201'
    """

    sfi: int
    number: int | None
    data: bytes

    @property
    def label(self) -> str:
        """``record SSRR`` when the number is known, else ``record``."""
        if self.number is None:
            return "record"
        return f"record {self.sfi:02X}{self.number:02X}"

    def error(self, detail: str) -> InvalidInputError:
        """An error naming this record (by SFI in the detail when its number is unknown)."""
        if self.number is None:
            return InvalidInputError(self.label, f"SFI {self.sfi}: {detail}")
        return InvalidInputError(self.label, detail)


def authenticated_record_data(record: OdaRecord) -> bytes:
    """What one ODA record contributes to the static data to be authenticated (Book 3 10.3).

    SFI 1..10: the record must be exactly one tag-``70`` template and only its
    value is used (the ``70`` tag and its length are stripped); anything else
    makes offline data authentication fail.  SFI 11..30: the whole record,
    tag and length included.

    Example:
        >>> authenticated_record_data(OdaRecord(2, 1, bytes.fromhex("70035A0112"))).hex()
        '5a0112'
        >>> authenticated_record_data(OdaRecord(11, 1, bytes.fromhex("70035A0112"))).hex()
        '70035a0112'
        >>> authenticated_record_data(OdaRecord(2, 1, bytes.fromhex("70035A01125A00")))
        Traceback (most recent call last):
        ...
        pipeline.errors.InvalidInputError: record 0201: data after the tag-70 template
    """
    sfi, data = record.sfi, record.data
    if not 1 <= sfi <= MAX_SFI:
        raise InvalidInputError("sfi", f"{sfi} is not 1..{MAX_SFI}")
    if sfi > LAST_TEMPLATE_SFI:
        return bytes(data)
    if not data or data[0] != RECORD_TEMPLATE_TAG:
        raise record.error("ODA record in SFI 1..10 is not a tag-70 template")
    try:
        items = decode_tlv(data)
    except InvalidInputError as exc:
        raise record.error(f"malformed tag-70 template ({exc})") from None
    if len(items) != 1:
        raise record.error("data after the tag-70 template")
    return items[0].value


def static_data_to_authenticate(
    records: Iterable[OdaRecord | tuple[int, bytes]],
    sda_tag_list: bytes | None = b"",
    aip: bytes = b"",
) -> bytes:
    """The input to the SSAD / ICC certificate hash (EMV Book 3 section 10.3).

    ``records`` are the records the AFL marks for offline data authentication,
    in AFL order, each as an :class:`OdaRecord` or an ``(SFI, record)`` pair
    (record number unknown), the record as READ RECORD returns it (tag ``70``,
    length, value).  Each contributes :func:`authenticated_record_data`: for
    SFI 1..10 only the value of the ``70`` template, for SFI 11..30 the whole
    record.  Then, if the SDA Tag List (``9F4A``) is present (``None`` or
    empty when absent; it may only be ``82``), the 2-byte value of the AIP.

    Errors are :class:`~pipeline.errors.InvalidInputError` naming the record
    (``record SSRR`` when its number is known), ``sfi``, ``sda tag list`` or
    ``aip``.  :func:`pipeline.prep.static_data.static_data_to_authenticate`
    walks the AFL and calls this function.

    Example:
        >>> records = [(1, bytes.fromhex("70035A0112")), (11, bytes.fromhex("7001AA"))]
        >>> static_data_to_authenticate(records, b"\\x82", b"\\x19\\x80").hex()
        '5a01127001aa1980'
        >>> truncated = OdaRecord(2, 1, bytes.fromhex("7005AA"))
        >>> static_data_to_authenticate([truncated])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pipeline.errors.InvalidInputError: record 0201: malformed tag-70 template (tlv: ...)
    """
    parts = [
        authenticated_record_data(
            record if isinstance(record, OdaRecord) else OdaRecord(record[0], None, record[1])
        )
        for record in records
    ]
    if sda_tag_list:
        tag_list = bytes(sda_tag_list)
        if tag_list != AIP_TAG:
            raise InvalidInputError(
                "sda tag list", f"9F4A holds {tag_list.hex().upper()}; only tag 82 (AIP) is allowed"
            )
        if len(aip) != 2:
            raise InvalidInputError("aip", f"82 (AIP) must be 2 bytes, got {len(aip)}")
        parts.append(bytes(aip))
    return b"".join(parts)
