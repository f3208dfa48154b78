"""PBOC / UnionPay SM2 public-key certificates and signed static data (JR/T 0025.17).

The layout lives in one table, :data:`LAYOUT`, one row per field with the
issuer certificate (tag 90, format 12, 142 bytes) and ICC certificate (tag
9F46, format 14, 148 bytes) side by side:

=====================  ========  ========  ======================================
field                  issuer    ICC       value
=====================  ========  ========  ======================================
format                 1 (12)    1 (14)    certificate format
identifier             4         10        issuer id (leftmost 3-8 PAN digits) /
                                           application PAN, BCD, F-padded right
expiry                 2         2         MMYY, BCD
serial                 3         3         binary, chosen by the signer
signature_algorithm    1 (04)    1 (04)    04 = SM2
encryption_algorithm   1 (00)    1 (00)    "not used, 00"
parameter_indicator    1 (11)    1 (11)    11 = SM2 recommended curve
public_key_length      1 (40)    1 (40)    64 bytes
public_key             64        64        x || y, no 04 prefix
signature              64        64        SM2 r || s (not DER)
=====================  ========  ========  ======================================

Signed data (GB/T 32918.2 with SM3, Z of the *signer's* key, user ID
"1234567812345678"): the issuer certificate's bytes 0..77 signed by the CA key;
the ICC certificate's bytes 0..83 followed by the static data to be
authenticated (the records named by the AFL, then the values of the SDA tag
list, normally the AIP) signed by the issuer key.  Signed static application
data (tag 93, format 13) is ``13 || DAC (2) || r || s`` over ``13 || DAC ||
static data``.  There is no remainder, exponent, header 6A, trailer BC or
hash field: the SM2 signature is appended to data in clear.

Provenance and doubt.  JR/T 0025.17 itself was not available.  The field
order and sizes come from DOMAIN.md section 4 (established from open-source
PBOC terminal code and checked there against a real UnionPay issuer
certificate under the SM CA key RID A000000333 index 18 and its ICC
certificate) and agree with an open-source PBOC terminal kernel whose headers
declare ``SM_IPK_CRTFCT`` / ``SM_ICCPK_CRTFCT`` as exactly these fields, with
the comments "signature algorithm indicator SM2-'04'" and "encryption
algorithm indicator, not used, '00'", and which rejects a key length other
than 64 (``EMVBase_SM_FillIPK``).  The parameter indicator value 11 ("SM2
recommended curve parameters") is documented for the UnionPay SM CA key
parameter DF38 in an open-source POS SDK (``Block04_2``, quoting UnionPay
IST v3.0.6 6.1.5); that the certificates carry the same value rests on
DOMAIN.md's real certificates.  Issue 3's wording "hash indicator 07 (SM3),
public-key algorithm 04 (SM2)" does not match any field of these layouts
(there is no hash-algorithm byte; SM3 is implied by SM2 signing); we follow
DOMAIN.md and the kernel headers, and record the disagreement here.  If a
real certificate disagrees, change :data:`LAYOUT` only.

Verification here checks framing, fixed values, field encodings, the public
key point and the signature; it does not compare the expiry with today's
date or the issuer identifier with the PAN (caller policy, as for RSA).

Example:
    >>> from pipeline.crypto import sm2
    >>> ca_d, ca_pub = sm2.generate_keypair()
    >>> iss_d, iss_pub = sm2.generate_keypair()
    >>> cert = build_pboc_issuer_certificate(ca_d, "622848", "1230", b"\\x00\\x00\\x01", iss_pub)
    >>> len(cert), cert[0]
    (142, 18)
    >>> verify_pboc_issuer_certificate(cert, ca_pub).issuer_identifier
    '622848'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NoReturn

from pipeline.crypto import sm2
from pipeline.errors import CertificateError, InvalidInputError, SignatureError

__all__ = [
    "ICC_CERTIFICATE_SIZE",
    "ISSUER_CERTIFICATE_SIZE",
    "LAYOUT",
    "SSAD_SIZE",
    "CertField",
    "CertKind",
    "PbocIccCertificate",
    "PbocIssuerCertificate",
    "build_pboc_icc_certificate",
    "build_pboc_issuer_certificate",
    "build_pboc_ssad",
    "icc_certificate_body",
    "issuer_certificate_body",
    "verify_pboc_icc_certificate",
    "verify_pboc_issuer_certificate",
    "verify_pboc_ssad",
]


class CertKind(Enum):
    """Which certificate a :data:`LAYOUT` column describes."""

    ISSUER = "issuer"
    ICC = "icc"


@dataclass(frozen=True)
class CertField:
    """One row of :data:`LAYOUT`: a field's size and fixed value (None = variable) per kind."""

    name: str
    issuer_size: int
    icc_size: int
    issuer_value: bytes | None = None
    icc_value: bytes | None = None

    def size(self, kind: CertKind) -> int:
        """Field size in bytes for ``kind``."""
        return self.issuer_size if kind is CertKind.ISSUER else self.icc_size

    def value(self, kind: CertKind) -> bytes | None:
        """The fixed value for ``kind``, or None when the field varies."""
        return self.issuer_value if kind is CertKind.ISSUER else self.icc_value


#: The PBOC SM2 certificate layout (provenance and doubt: module docstring).
LAYOUT: tuple[CertField, ...] = (
    CertField("format", 1, 1, b"\x12", b"\x14"),
    CertField("identifier", 4, 10),
    CertField("expiry", 2, 2),
    CertField("serial", 3, 3),
    CertField("signature_algorithm", 1, 1, b"\x04", b"\x04"),
    CertField("encryption_algorithm", 1, 1, b"\x00", b"\x00"),
    CertField("parameter_indicator", 1, 1, b"\x11", b"\x11"),
    CertField("public_key_length", 1, 1, b"\x40", b"\x40"),
    CertField("public_key", 64, 64),
    CertField("signature", 64, 64),
)

_SIGNED_FIELDS = LAYOUT[:-1]
ISSUER_CERTIFICATE_SIZE = sum(f.issuer_size for f in LAYOUT)
ICC_CERTIFICATE_SIZE = sum(f.icc_size for f in LAYOUT)
_SSAD_FORMAT = b"\x13"
SSAD_SIZE = 1 + 2 + sm2.SIGNATURE_SIZE


@dataclass(frozen=True)
class PbocIssuerCertificate:
    """The content of a verified issuer certificate (format 12)."""

    issuer_identifier: str
    expiry: str
    serial: bytes
    public_key: bytes


@dataclass(frozen=True)
class PbocIccCertificate:
    """The content of a verified ICC certificate (format 14); ``pan`` is kept out of repr."""

    pan: str = field(repr=False)
    expiry: str
    serial: bytes
    public_key: bytes


# --- field encodings ----------------------------------------------------------------


def _encode_f_padded(name: str, digits: str, size: int, min_digits: int, max_digits: int) -> bytes:
    """Digits as BCD, right-padded with F nibbles to ``size`` bytes (EMV Book 3 4.3 'cn')."""
    if not isinstance(digits, str) or not digits.isascii() or not digits.isdigit():
        raise InvalidInputError(name, "must be a string of decimal digits")
    if not min_digits <= len(digits) <= max_digits:
        raise InvalidInputError(
            name, f"must be {min_digits}..{max_digits} digits, got {len(digits)} digits"
        )
    return bytes.fromhex(digits.ljust(2 * size, "F"))


def _decode_f_padded(name: str, raw: bytes, min_digits: int, max_digits: int) -> str:
    digits = raw.hex().upper().rstrip("F")
    if not digits.isdigit() or not min_digits <= len(digits) <= max_digits:
        raise CertificateError(
            name, f"not {min_digits}..{max_digits} BCD digits right-padded with F"
        )
    return digits


def _encode_expiry(expiry: str) -> bytes:
    """MMYY as 2 BCD bytes, month 01..12 (EMV Book 2 table 13 'certificate expiration date')."""
    if not isinstance(expiry, str) or len(expiry) != 4 or not expiry.isdigit():
        raise InvalidInputError("expiry", "must be 4 digits MMYY")
    if not 1 <= int(expiry[:2]) <= 12:
        raise InvalidInputError("expiry", f"month must be 01..12, got {expiry[:2]}")
    return bytes.fromhex(expiry)


def _decode_expiry(raw: bytes) -> str:
    text = raw.hex()
    if not text.isdigit() or not 1 <= int(text[:2]) <= 12:
        raise CertificateError("expiry", f"not BCD MMYY: {text.upper()}")
    return text


def _check_serial(serial: bytes) -> bytes:
    if not isinstance(serial, bytes | bytearray) or len(serial) != 3:
        raise InvalidInputError("serial", "must be 3 bytes")
    return bytes(serial)


def _signer(signer_or_d: sm2.Sm2Signer | bytes, name: str) -> sm2.Sm2Signer:
    if isinstance(signer_or_d, sm2.Sm2Signer):
        return signer_or_d
    if isinstance(signer_or_d, bytes | bytearray):
        return sm2.Sm2Signer(bytes(signer_or_d))
    raise InvalidInputError(name, f"expected Sm2Signer or 32-byte key, got {type(signer_or_d)}")


def _check_public_key(name: str, public_key: bytes) -> bytes:
    """Validate before signing, so a certificate never certifies a non-point."""
    sm2.check_public_key(public_key)
    return bytes(public_key)


# --- building -----------------------------------------------------------------------


def _segments(kind: CertKind) -> tuple[tuple[str, int, bytes | None], ...]:
    """The signed fields of ``kind`` as (name, size, fixed value), runs of fixed fields merged.

    A merged run is named after its first field.  Cut once per kind from
    :data:`LAYOUT`, so that :func:`_body` (once per card) joins six pieces
    instead of walking the nine rows.
    """
    merged: list[tuple[str, int, bytes | None]] = []
    for spec in _SIGNED_FIELDS:
        fixed = spec.value(kind)
        previous = merged[-1][2] if merged else None
        if fixed is not None and previous is not None:
            merged[-1] = (merged[-1][0], merged[-1][1] + len(fixed), previous + fixed)
        else:
            merged.append((spec.name, spec.size(kind), fixed))
    return tuple(merged)


_SEGMENTS = {kind: _segments(kind) for kind in CertKind}


def _body(kind: CertKind, identifier: bytes, expiry: bytes, serial: bytes, key: bytes) -> bytes:
    """The signed part of a certificate, field by field from :data:`LAYOUT`."""
    variable = {"identifier": identifier, "expiry": expiry, "serial": serial, "public_key": key}
    parts = []
    for name, size, fixed in _SEGMENTS[kind]:
        value = fixed if fixed is not None else variable[name]
        assert len(value) == size, name
        parts.append(value)
    return b"".join(parts)


def issuer_certificate_body(
    issuer_identifier: str, expiry: str, serial: bytes, issuer_public_key: bytes
) -> bytes:
    """Bytes 0..77 of a format-12 issuer certificate: what the CA key signs.

    For signers outside this module (an HSM through the key store): the
    certificate is ``body || SM2 signature of body``.

    Example:
        >>> pub = sm2.generate_keypair()[1]
        >>> body = issuer_certificate_body("622848", "1230", b"\\x00\\x00\\x01", pub)
        >>> len(body), body[:5].hex().upper()
        (78, '12622848FF')
    """
    return _body(
        CertKind.ISSUER,
        _encode_f_padded("issuer_identifier", issuer_identifier, 4, 3, 8),
        _encode_expiry(expiry),
        _check_serial(serial),
        _check_public_key("issuer_public_key", issuer_public_key),
    )


def icc_certificate_body(pan: str, expiry: str, serial: bytes, icc_public_key: bytes) -> bytes:
    """Bytes 0..83 of a format-14 ICC certificate; the issuer signs ``body || static data``.

    Example:
        >>> pub = sm2.generate_keypair()[1]
        >>> body = icc_certificate_body("6228480000000000017", "1230", b"\\x00\\x00\\x01", pub)
        >>> len(body), body[16:20].hex()
        (84, '04001140')
    """
    return _body(
        CertKind.ICC,
        _encode_f_padded("pan", pan, 10, 12, 19),
        _encode_expiry(expiry),
        _check_serial(serial),
        _check_public_key("icc_public_key", icc_public_key),
    )


def build_pboc_issuer_certificate(
    ca_d: sm2.Sm2Signer | bytes,
    issuer_identifier: str,
    expiry: str,
    serial: bytes,
    issuer_public_key: bytes,
) -> bytes:
    """Issuer public-key certificate, format 12 (tag 90), signed by the CA key (142 bytes).

    ``issuer_identifier`` is 3..8 digits (the leftmost PAN digits); ``expiry``
    is MMYY.  Pass an :class:`~pipeline.crypto.sm2.Sm2Signer` to reuse one.

    Example:
        >>> ca_d, ca_pub = sm2.generate_keypair()
        >>> _, iss_pub = sm2.generate_keypair()
        >>> len(build_pboc_issuer_certificate(ca_d, "622848", "1230", b"\\x00\\x00\\x01", iss_pub))
        142
    """
    body = issuer_certificate_body(issuer_identifier, expiry, serial, issuer_public_key)
    return body + _signer(ca_d, "ca_d").sign(body)


def build_pboc_icc_certificate(  # noqa: PLR0917 - positional order is the issue-3 contract
    issuer_signer_or_d: sm2.Sm2Signer | bytes,
    pan: str,
    expiry: str,
    serial: bytes,
    icc_public_key: bytes,
    static_data: bytes,
) -> bytes:
    """ICC public-key certificate, format 14 (tag 9F46), signed by the issuer key (148 bytes).

    ``static_data`` is the static data to be authenticated followed by the
    values of the SDA tag list (normally the AIP), as for EMV RSA; the
    certificate must therefore be built after the records are final.

    Example:
        >>> signer = sm2.Sm2Signer(sm2.generate_keypair()[0])
        >>> _, icc_pub = sm2.generate_keypair()
        >>> cert = build_pboc_icc_certificate(
        ...     signer, "6228480000000000017", "1230", b"\\x00\\x00\\x01", icc_pub, b"\\x7c\\x00")
        >>> len(cert), cert[0]
        (148, 20)
    """
    if not isinstance(static_data, bytes | bytearray):
        raise InvalidInputError("static_data", "expected bytes")
    body = icc_certificate_body(pan, expiry, serial, icc_public_key)
    return body + _signer(issuer_signer_or_d, "issuer_signer_or_d").sign(body + static_data)


# --- verification -------------------------------------------------------------------


def _slices(kind: CertKind) -> tuple[tuple[str, int, int, bytes | None], ...]:
    """(name, start, end, fixed value) per :data:`LAYOUT` row for ``kind``."""
    rows = []
    offset = 0
    for spec in LAYOUT:
        rows.append((spec.name, offset, offset + spec.size(kind), spec.value(kind)))
        offset += spec.size(kind)
    return tuple(rows)


def _fixed_runs(kind: CertKind) -> tuple[tuple[int, int, bytes], ...]:
    """(start, end, value) of each run of adjacent fixed fields of ``kind``."""
    runs: list[tuple[int, int, bytes]] = []
    for _, start, end, fixed in _slices(kind):
        if fixed is None:
            continue
        if runs and runs[-1][1] == start:
            first, _, value = runs[-1]
            runs[-1] = (first, end, value + fixed)
        else:
            runs.append((start, end, fixed))
    return tuple(runs)


# Cut once from LAYOUT: the ICC certificate is split for every card's self-check.
_SLICES = {kind: _slices(kind) for kind in CertKind}
#: Per kind, what _split needs in one look-up (an Enum's hash is a Python call):
#: the certificate size, the fixed runs, the variable fields' (name, start, end).
_CUTS = {
    kind: (
        _SLICES[kind][-1][2],
        _fixed_runs(kind),
        tuple((name, start, end) for name, start, end, fixed in _SLICES[kind] if fixed is None),
    )
    for kind in CertKind
}


def _split(kind: CertKind, cert: bytes) -> dict[str, bytes]:
    """Cut ``cert`` by :data:`LAYOUT` into its variable fields; check its size and fixed fields."""
    if not isinstance(cert, bytes | bytearray):
        raise CertificateError("certificate", f"expected bytes, got {type(cert).__name__}")
    expected, runs, variable = _CUTS[kind]
    if len(cert) != expected:
        raise CertificateError(
            "certificate", f"{kind.value} certificate must be {expected} bytes, got {len(cert)}"
        )
    raw = bytes(cert)
    for start, end, fixed in runs:
        if raw[start:end] != fixed:
            _raise_fixed_field_error(kind, raw)
    return {name: raw[start:end] for name, start, end in variable}


def _raise_fixed_field_error(kind: CertKind, raw: bytes) -> NoReturn:
    """Raise CertificateError naming the first fixed field of ``raw`` that differs."""
    for name, start, end, fixed in _SLICES[kind]:
        value = raw[start:end]
        if fixed is not None and value != fixed:
            raise CertificateError(
                name, f"expected {fixed.hex().upper()}, got {value.hex().upper()}"
            )
    raise AssertionError("a fixed run differs but none of its fields does")  # unreachable


def _verifier(key_or_verifier: bytes | sm2.Sm2Verifier, whose: str) -> sm2.Sm2Verifier:
    """The caller's reusable verifier, or a one-off one for a 64-byte public key.

    Certificates are signed under the default user ID (module docstring), so
    a verifier built for another ID is refused rather than failing every
    signature.
    """
    if isinstance(key_or_verifier, sm2.Sm2Verifier):
        if key_or_verifier.uid != sm2.DEFAULT_UID:
            raise InvalidInputError(
                f"{whose}_verifier", "must use the default user ID 1234567812345678"
            )
        return key_or_verifier
    try:
        return sm2.Sm2Verifier(key_or_verifier)
    except InvalidInputError as exc:
        raise CertificateError(f"{whose}_public_key", exc.detail) from exc


def _verify_signature(
    signer: bytes | sm2.Sm2Verifier, signed: bytes, signature: bytes, whose: str
) -> None:
    verifier = _verifier(signer, whose)
    try:
        verifier.verify(signed, signature)
    except SignatureError as exc:
        raise CertificateError("signature", f"does not verify under the {whose} key") from exc


def _certified_key(fields: dict[str, bytes]) -> bytes:
    key = fields["public_key"]
    try:
        sm2.check_public_key(key)
    except InvalidInputError as exc:
        raise CertificateError("public_key", exc.detail) from exc
    return key


def verify_pboc_issuer_certificate(
    cert: bytes, ca_public_key: bytes | sm2.Sm2Verifier
) -> PbocIssuerCertificate:
    """Check an issuer certificate (format 12) against the CA public key and return its content.

    ``ca_public_key`` is 64 bytes x || y or a reusable
    :class:`~pipeline.crypto.sm2.Sm2Verifier` for it (default user ID).
    Raises CertificateError naming the first field that is wrong.

    Example:
        >>> ca_d, ca_pub = sm2.generate_keypair()
        >>> _, iss_pub = sm2.generate_keypair()
        >>> serial = b"\\x00\\x00\\x01"
        >>> cert = build_pboc_issuer_certificate(ca_d, "622848", "1230", serial, iss_pub)
        >>> verify_pboc_issuer_certificate(cert, ca_pub).public_key == iss_pub
        True
    """
    fields = _split(CertKind.ISSUER, cert)
    identifier = _decode_f_padded("identifier", fields["identifier"], 3, 8)
    expiry = _decode_expiry(fields["expiry"])
    key = _certified_key(fields)
    _verify_signature(ca_public_key, bytes(cert[:-64]), fields["signature"], "ca")
    return PbocIssuerCertificate(identifier, expiry, fields["serial"], key)


def verify_pboc_icc_certificate(
    cert: bytes, issuer_public_key: bytes | sm2.Sm2Verifier, static_data: bytes
) -> PbocIccCertificate:
    """Check an ICC certificate (format 14) against the issuer key and the static data.

    ``issuer_public_key`` is 64 bytes x || y, or, when the same issuer key
    checks every card of a batch, one reusable
    ``sm2.Sm2Verifier(issuer_public_key, precompute=True)`` (default user
    ID): it validates the key and computes Z once, and its fixed-base table
    makes each check ~4x faster (``bench/bench_sm2.py``).

    Example:
        >>> iss_d, iss_pub = sm2.generate_keypair()
        >>> _, icc_pub = sm2.generate_keypair()
        >>> cert = build_pboc_icc_certificate(
        ...     iss_d, "6228480000000000017", "1230", b"\\x00\\x00\\x01", icc_pub, b"\\x7c\\x00")
        >>> verify_pboc_icc_certificate(cert, iss_pub, b"\\x7c\\x00").public_key == icc_pub
        True
        >>> verifier = sm2.Sm2Verifier(iss_pub, precompute=True)
        >>> verify_pboc_icc_certificate(cert, verifier, b"\\x7c\\x00").public_key == icc_pub
        True
    """
    if not isinstance(static_data, bytes | bytearray):
        raise InvalidInputError("static_data", "expected bytes")
    fields = _split(CertKind.ICC, cert)
    pan = _decode_f_padded("identifier", fields["identifier"], 12, 19)
    expiry = _decode_expiry(fields["expiry"])
    key = _certified_key(fields)
    signed = bytes(cert[:-64]) + bytes(static_data)
    _verify_signature(issuer_public_key, signed, fields["signature"], "issuer")
    return PbocIccCertificate(pan, expiry, fields["serial"], key)


# --- signed static application data (tag 93, format 13) ----------------------------


def build_pboc_ssad(
    issuer_signer_or_d: sm2.Sm2Signer | bytes, dac: bytes, static_data: bytes
) -> bytes:
    """Signed static application data, format 13: ``13 || DAC || r || s`` (67 bytes).

    The signature covers ``13 || DAC || static data`` (static data including
    the SDA tag list values, as for the ICC certificate).

    Example:
        >>> iss_d, iss_pub = sm2.generate_keypair()
        >>> ssad = build_pboc_ssad(iss_d, b"\\xda\\xc1", b"\\x7c\\x00")
        >>> verify_pboc_ssad(ssad, iss_pub, b"\\x7c\\x00").hex()
        'dac1'
    """
    if not isinstance(dac, bytes | bytearray) or len(dac) != 2:
        raise InvalidInputError("dac", "must be 2 bytes")
    if not isinstance(static_data, bytes | bytearray):
        raise InvalidInputError("static_data", "expected bytes")
    head = _SSAD_FORMAT + bytes(dac)
    signer = _signer(issuer_signer_or_d, "issuer_signer_or_d")
    return head + signer.sign(head + bytes(static_data))


def verify_pboc_ssad(
    ssad: bytes, issuer_public_key: bytes | sm2.Sm2Verifier, static_data: bytes
) -> bytes:
    """Check format-13 signed static data; return the 2-byte data authentication code.

    ``issuer_public_key`` may be a reusable verifier, as for
    :func:`verify_pboc_icc_certificate`.

    Example:
        >>> iss_d, iss_pub = sm2.generate_keypair()
        >>> verify_pboc_ssad(build_pboc_ssad(iss_d, b"\\x00\\x01", b""), iss_pub, b"")
        b'\\x00\\x01'
    """
    if not isinstance(ssad, bytes | bytearray):
        raise CertificateError("ssad", f"expected bytes, got {type(ssad).__name__}")
    if len(ssad) != SSAD_SIZE:
        raise CertificateError("ssad", f"must be {SSAD_SIZE} bytes, got {len(ssad)}")
    if ssad[:1] != _SSAD_FORMAT:
        raise CertificateError("format", f"expected 13, got {ssad[:1].hex().upper()}")
    if not isinstance(static_data, bytes | bytearray):
        raise InvalidInputError("static_data", "expected bytes")
    _verify_signature(issuer_public_key, bytes(ssad[:3]) + bytes(static_data), ssad[3:], "issuer")
    return bytes(ssad[1:3])
