"""EMV RSA certificates: round trips, tampering, framing and length rules.

Round trips use one key per size (generated once) and cover every pair of a
set of sizes chosen to hit the boundaries of Book 2 Tables 6 and 14: with a
1408-bit (176-byte) signer the key field is 140 bytes (issuer) or 134 bytes
(ICC), so 1120/1128 bits and 1072/1080 bits sit exactly on and one byte past
the BB-padding / remainder boundary; 1160 bits is an odd byte length.
"""

from __future__ import annotations

import functools
import itertools
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.emv_certs import (
    ICC_KEY_OVERHEAD,
    ISSUER_KEY_OVERHEAD,
    OdaRecord,
    authenticated_record_data,
    build_icc_certificate,
    build_issuer_certificate,
    build_signed_dynamic_data,
    build_signed_static_data,
    recover_icc_certificate,
    static_data_to_authenticate,
    verify_icc_certificate,
    verify_issuer_certificate,
    verify_signed_dynamic_data,
    verify_signed_static_data,
)
from pipeline.crypto.rsa import RsaPrivateKey, RsaSigner, generate_rsa_key, rsa_public_op
from pipeline.errors import CertificateError, InvalidInputError

SIZES = [1024, 1072, 1080, 1120, 1128, 1152, 1160, 1408, 1984]
PAIRS = [(big, small) for big, small in itertools.product(SIZES, SIZES) if small <= big]
PAN = "4761739001010119"
SERIAL = b"\x00\x00\x01"


@functools.cache
def _key(bits: int, e: int) -> RsaPrivateKey:
    return generate_rsa_key(bits, e)


@functools.cache
def _signer(bits: int, e: int) -> RsaSigner:
    return RsaSigner(_key(bits, e))


def key(bits: int, e: int = 3) -> RsaPrivateKey:
    """One key per (size, exponent) for the whole module (key(b) is key(b, 3))."""
    return _key(bits, e)


def signer(bits: int, e: int = 3) -> RsaSigner:
    return _signer(bits, e)


def _issuer_cert(
    ca_bits: int, issuer_bits: int, ca_e: int = 3, issuer_e: int = 3
) -> tuple[bytes, bytes]:
    issuer = key(issuer_bits, issuer_e)
    return build_issuer_certificate(
        signer(ca_bits, ca_e),
        ca_bits // 8,
        "476173",
        "1230",
        SERIAL,
        issuer.modulus,
        issuer.exponent_bytes,
    )


def _icc_cert(
    issuer_bits: int, icc_bits: int, static: bytes = b"static", icc_e: int = 3
) -> tuple[bytes, bytes]:
    icc = key(icc_bits, icc_e)
    return build_icc_certificate(
        signer(issuer_bits),
        issuer_bits // 8,
        PAN,
        "1229",
        SERIAL,
        icc.modulus,
        icc.exponent_bytes,
        static,
    )


# --- round trips --------------------------------------------------------------


@pytest.mark.parametrize(("ca_bits", "issuer_bits"), PAIRS)
def test_issuer_round_trip_every_size_pair(ca_bits: int, issuer_bits: int) -> None:
    cert, remainder = _issuer_cert(ca_bits, issuer_bits)
    n_ca, n_i = ca_bits // 8, issuer_bits // 8
    assert len(cert) == n_ca
    assert len(remainder) == max(0, n_i - (n_ca - ISSUER_KEY_OVERHEAD))
    ca = key(ca_bits)
    got = verify_issuer_certificate(
        cert, ca.modulus, b"\x03", remainder, b"\x03", pan=PAN, at=date(2030, 12, 31)
    )
    assert got.modulus == key(issuer_bits).modulus
    assert (got.issuer_identifier.hex().upper(), got.expiry, got.serial) == (
        "476173FF",
        "1230",
        SERIAL,
    )


@pytest.mark.parametrize(("issuer_bits", "icc_bits"), PAIRS)
def test_icc_round_trip_every_size_pair(issuer_bits: int, icc_bits: int) -> None:
    cert, remainder = _icc_cert(issuer_bits, icc_bits)
    n_i, n_ic = issuer_bits // 8, icc_bits // 8
    assert len(cert) == n_i
    assert len(remainder) == max(0, n_ic - (n_i - ICC_KEY_OVERHEAD))
    issuer = key(issuer_bits)
    got = verify_icc_certificate(
        cert, issuer.modulus, b"\x03", remainder, b"\x03", b"static", pan=PAN
    )
    assert got.modulus == key(icc_bits).modulus
    assert (got.pan, got.expiry, got.serial) == (PAN, "1229", SERIAL)


@pytest.mark.parametrize(("ca_e", "issuer_e"), [(65537, 3), (3, 65537), (65537, 65537)])
def test_mixed_exponents(ca_e: int, issuer_e: int) -> None:
    cert, remainder = _issuer_cert(1408, 1152, ca_e, issuer_e)
    ca, issuer = key(1408, ca_e), key(1152, issuer_e)
    got = verify_issuer_certificate(
        cert, ca.modulus, ca.exponent_bytes, remainder, issuer.exponent_bytes
    )
    assert got.exponent == issuer.exponent_bytes and got.modulus == issuer.modulus


@settings(max_examples=100, deadline=None)
@given(
    pair=st.sampled_from([(1408, 1152), (1152, 1120), (1160, 1160), (1984, 1072)]),
    pan=st.text("0123456789", min_size=12, max_size=19),
    month=st.integers(1, 12),
    year=st.integers(0, 99),
    serial=st.binary(min_size=3, max_size=3),
    static=st.binary(max_size=600),
    icc_e=st.sampled_from([3, 65537]),
)
def test_icc_round_trip_random_data(
    pair: tuple[int, int], pan: str, month: int, year: int, serial: bytes, static: bytes, icc_e: int
) -> None:
    issuer_bits, icc_bits = pair
    icc = key(icc_bits, icc_e)
    expiry = f"{month:02d}{year:02d}"
    cert, remainder = build_icc_certificate(
        signer(issuer_bits),
        issuer_bits // 8,
        pan,
        expiry,
        serial,
        icc.modulus,
        icc.exponent_bytes,
        static,
    )
    got = verify_icc_certificate(
        cert, key(issuer_bits).modulus, b"\x03", remainder, icc.exponent_bytes, static, pan=pan
    )
    assert (got.pan, got.expiry, got.serial, got.modulus, got.exponent) == (
        pan,
        expiry,
        serial,
        icc.modulus,
        icc.exponent_bytes,
    )


@settings(max_examples=50, deadline=None)
@given(
    dac=st.binary(min_size=2, max_size=2),
    static=st.binary(max_size=400),
    bits=st.sampled_from([1024, 1160, 1408]),
)
def test_ssad_round_trip(dac: bytes, static: bytes, bits: int) -> None:
    ssad = build_signed_static_data(signer(bits), bits // 8, dac, static)
    got = verify_signed_static_data(ssad, key(bits).modulus, b"\x03", static)
    assert got.data_authentication_code == dac


@settings(max_examples=50, deadline=None)
@given(dynamic=st.binary(min_size=1, max_size=32), ddol=st.binary(max_size=40))
def test_sdad_round_trip(dynamic: bytes, ddol: bytes) -> None:
    sdad = build_signed_dynamic_data(signer(1152), 144, dynamic, ddol)
    assert (
        verify_signed_dynamic_data(sdad, key(1152).modulus, b"\x03", ddol).icc_dynamic_data
        == dynamic
    )


# --- tampering ----------------------------------------------------------------


def test_every_flipped_bit_of_an_issuer_certificate_is_refused() -> None:
    cert, remainder = _issuer_cert(1024, 1024)
    ca = key(1024)
    for position in range(len(cert)):
        for bit in range(8):
            bad = bytearray(cert)
            bad[position] ^= 1 << bit
            with pytest.raises(CertificateError):
                verify_issuer_certificate(bytes(bad), ca.modulus, b"\x03", remainder, b"\x03")


def test_every_flipped_bit_of_an_icc_certificate_is_refused() -> None:
    cert, remainder = _icc_cert(1152, 1152)
    issuer = key(1152)
    for position in range(len(cert)):
        for bit in range(8):
            bad = bytearray(cert)
            bad[position] ^= 1 << bit
            with pytest.raises(CertificateError):
                verify_icc_certificate(
                    bytes(bad), issuer.modulus, b"\x03", remainder, b"\x03", b"static"
                )


def test_tampered_remainder_exponent_or_static_data_fail_the_hash() -> None:
    cert, remainder = _icc_cert(1152, 1152)
    issuer = key(1152).modulus
    for position in range(len(remainder)):
        bad = bytearray(remainder)
        bad[position] ^= 0x01
        with pytest.raises(CertificateError, match="icc certificate hash"):
            verify_icc_certificate(cert, issuer, b"\x03", bytes(bad), b"\x03", b"static")
    with pytest.raises(CertificateError, match="icc certificate hash"):
        verify_icc_certificate(cert, issuer, b"\x03", remainder, b"\x03", b"statiC")
    with pytest.raises(CertificateError, match="icc certificate hash"):
        verify_icc_certificate(cert, issuer, b"\x03", remainder, b"\x05", b"static")


def test_ssad_and_sdad_tampering() -> None:
    ssad = build_signed_static_data(signer(1024), 128, b"\xda\xc0", b"records")
    sdad = build_signed_dynamic_data(signer(1024), 128, b"\x02\x00\xae", b"\x7f\xbc\x40\x49")
    for position in range(128):
        bad = bytearray(ssad)
        bad[position] ^= 0x10
        with pytest.raises(CertificateError):
            verify_signed_static_data(bytes(bad), key(1024).modulus, b"\x03", b"records")
        bad = bytearray(sdad)
        bad[position] ^= 0x10
        with pytest.raises(CertificateError):
            verify_signed_dynamic_data(bytes(bad), key(1024).modulus, b"\x03", b"\x7f\xbc\x40\x49")


# --- framing: a block signed by the right key but malformed -------------------


def _forge_issuer(change: int, value: int) -> bytes:
    """Recover a good issuer certificate, change one byte of the block, re-sign it."""
    cert, _ = _issuer_cert(1408, 1024)
    block = bytearray(rsa_public_op(key(1408).modulus, b"\x03", cert))
    block[change] = value
    return signer(1408).private_op(bytes(block))


@pytest.mark.parametrize(
    ("position", "value", "field"),
    [
        (0, 0x6B, "issuer certificate header"),
        (1, 0x04, "issuer certificate format"),
        (-1, 0xBD, "issuer certificate trailer"),
        (11, 0x02, "issuer certificate hash algorithm"),
        (12, 0x02, "issuer certificate pk algorithm"),
        (13, 177, "issuer certificate lengths"),
        (13, 0, "issuer certificate lengths"),
        (14, 0x03, "issuer certificate exponent length"),
        (6, 0x13, "issuer certificate expiry"),
        (3, 0x74, "issuer certificate hash"),  # identifier changed, framing intact
        (-5, 0x00, "issuer certificate hash"),  # hash result changed
    ],
)
def test_malformed_issuer_block_names_the_field(position: int, value: int, field: str) -> None:
    forged = _forge_issuer(position, value)
    with pytest.raises(CertificateError, match=f"^{field}:"):
        verify_issuer_certificate(forged, key(1408).modulus, b"\x03", b"", b"\x03")


def test_icc_forged_pan_field_refused() -> None:
    cert, remainder = _icc_cert(1152, 1024)
    block = bytearray(rsa_public_op(key(1152).modulus, b"\x03", cert))
    block[2] = 0xA7
    forged = signer(1152).private_op(bytes(block))
    with pytest.raises(CertificateError, match="icc certificate pan"):
        recover_icc_certificate(forged, key(1152).modulus, b"\x03", remainder, b"\x03")


def test_wrong_lengths_on_verify() -> None:
    cert, remainder = _issuer_cert(1408, 1152)
    ca = key(1408).modulus
    with pytest.raises(CertificateError, match="issuer certificate length"):
        verify_issuer_certificate(cert[1:], ca, b"\x03", remainder, b"\x03")
    with pytest.raises(CertificateError, match="issuer certificate exponent length"):
        verify_issuer_certificate(cert, ca, b"\x03", remainder, b"\x01\x00\x01")
    with pytest.raises(CertificateError, match="issuer certificate remainder length"):
        verify_issuer_certificate(cert, ca, b"\x03", remainder + b"\x00", b"\x03")
    with pytest.raises(CertificateError, match="issuer certificate remainder length"):
        verify_issuer_certificate(cert, ca, b"\x03", remainder[:-1], b"\x03")
    no_remainder, _ = _issuer_cert(1408, 1024)
    with pytest.raises(CertificateError, match="issuer certificate remainder length"):
        verify_issuer_certificate(no_remainder, ca, b"\x03", b"\x01", b"\x03")
    with pytest.raises(CertificateError, match="issuer certificate"):
        verify_issuer_certificate(b"\xff" * 176, ca, b"\x03", remainder, b"\x03")


def test_icc_pan_mismatch_is_masked() -> None:
    cert, remainder = _icc_cert(1152, 1024)
    with pytest.raises(CertificateError, match="icc certificate pan") as info:
        verify_icc_certificate(
            cert, key(1152).modulus, b"\x03", remainder, b"\x03", b"static", pan="4761739001010127"
        )
    assert PAN not in str(info.value) and "4761739001010127" not in str(info.value)
    assert "476173******0119" in str(info.value)


def test_icc_expiry_checked_when_asked() -> None:
    cert, remainder = _icc_cert(1152, 1024)
    args = (cert, key(1152).modulus, b"\x03", remainder, b"\x03", b"static")
    verify_icc_certificate(*args, at=date(2029, 12, 31))
    with pytest.raises(CertificateError, match="icc certificate expiry"):
        verify_icc_certificate(*args, at=date(2030, 1, 1))


# --- length rules and input checks on build -----------------------------------


def test_issuer_key_longer_than_ca_key_refused() -> None:
    with pytest.raises(CertificateError, match="issuer certificate lengths"):
        _issuer_cert(1152, 1160)


def test_icc_key_longer_than_issuer_key_refused() -> None:
    with pytest.raises(CertificateError, match="icc certificate lengths"):
        _icc_cert(1152, 1160)


def test_signer_length_mismatch_refused() -> None:
    issuer = key(1024)
    with pytest.raises(CertificateError, match="ca modulus length"):
        build_issuer_certificate(
            signer(1408), 248, "476173", "1230", SERIAL, issuer.modulus, b"\x03"
        )
    with pytest.raises(CertificateError, match="issuer modulus length"):
        build_icc_certificate(signer(1408), 144, PAN, "1230", SERIAL, issuer.modulus, b"\x03", b"")
    with pytest.raises(CertificateError, match="issuer modulus length"):
        build_signed_static_data(signer(1408), 144, b"\xda\xc0", b"")


def test_oversized_modulus_refused() -> None:
    with pytest.raises(CertificateError, match="issuer modulus length"):
        build_issuer_certificate(
            signer(1984), 248, "476173", "1230", SERIAL, b"\xff" * 249, b"\x03"
        )


@pytest.mark.parametrize("exponent", [b"\x05", b"\x00\x03", b"\x01\x00\x03", b""])
def test_unsupported_exponent_refused(exponent: bytes) -> None:
    with pytest.raises(CertificateError, match="issuer exponent"):
        build_issuer_certificate(
            signer(1408), 176, "476173", "1230", SERIAL, key(1024).modulus, exponent
        )
    with pytest.raises(CertificateError, match="icc exponent"):
        build_icc_certificate(
            signer(1408), 176, PAN, "1230", SERIAL, key(1024).modulus, exponent, b""
        )


@pytest.mark.parametrize(
    ("identifier", "expiry", "serial", "field"),
    [
        ("47", "1230", SERIAL, "issuer identifier"),
        ("476173901", "1230", SERIAL, "issuer identifier"),
        ("47A173", "1230", SERIAL, "issuer identifier"),
        ("476173", "1330", SERIAL, "expiry"),
        ("476173", "0030", SERIAL, "expiry"),
        ("476173", "123", SERIAL, "expiry"),
        ("476173", "12a0", SERIAL, "expiry"),
        ("476173", "1230", b"\x00\x01", "serial"),
    ],
)
def test_bad_issuer_fields_refused(identifier: str, expiry: str, serial: bytes, field: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field}:"):
        build_issuer_certificate(
            signer(1408), 176, identifier, expiry, serial, key(1024).modulus, b"\x03"
        )


@pytest.mark.parametrize("pan", ["47617390010", "47617390010101190000", "476173900101011X", ""])
def test_bad_pan_refused_without_echoing_it(pan: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^pan:") as info:
        build_icc_certificate(
            signer(1408), 176, pan, "1230", SERIAL, key(1024).modulus, b"\x03", b""
        )
    assert not pan or pan not in str(info.value)


def test_bad_dac_and_dynamic_data_refused() -> None:
    with pytest.raises(InvalidInputError, match="data authentication code"):
        build_signed_static_data(signer(1024), 128, b"\xda", b"")
    with pytest.raises(InvalidInputError, match="icc dynamic data"):
        build_signed_dynamic_data(signer(1024), 128, bytes(104), b"")


# --- static data to be authenticated (Book 3 10.3) ----------------------------


def test_static_data_to_authenticate_rules() -> None:
    """SFI 1..10: the 70 template's value; SFI 11..30: the whole record; then the AIP."""
    r1 = bytes.fromhex("700A5A084761739001010119")
    r2 = bytes.fromhex("70055F24031230")
    r11 = bytes.fromhex("7003DF0101")
    data = static_data_to_authenticate([(1, r1), (2, r2), (11, r11)], b"\x82", b"\x19\x80")
    assert data == r1[2:] + r2[2:] + r11 + b"\x19\x80"
    assert static_data_to_authenticate([(3, r2)]) == r2[2:]


@pytest.mark.parametrize(
    ("records", "tag_list", "aip", "field"),
    [
        ([(1, bytes.fromhex("5A0112"))], b"", b"", "record"),
        ([(1, bytes.fromhex("7001AA7001BB"))], b"", b"", "record"),
        ([(0, bytes.fromhex("7001AA"))], b"", b"", "sfi"),
        ([(31, bytes.fromhex("7001AA"))], b"", b"", "sfi"),
        ([], b"\x9f\x36", b"\x19\x80", "sda tag list"),
        ([], b"\x82", b"\x19", "aip"),
        # a malformed template was reported as "tlv: ..."; it now names the record too
        ([(1, bytes.fromhex("7005AA"))], b"", b"", r"record: SFI 1: malformed .*\(tlv: offset 2"),
    ],
)
def test_static_data_to_authenticate_refuses(
    records: list[tuple[int, bytes]], tag_list: bytes, aip: bytes, field: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field}:"):
        static_data_to_authenticate(records, tag_list, aip)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (OdaRecord(2, 1, bytes.fromhex("5A0112")), "record 0201: ODA record in SFI 1..10 is not"),
        (OdaRecord(10, 0xA3, b""), "record 0AA3: ODA record in SFI 1..10 is not"),
        (OdaRecord(3, 2, bytes.fromhex("7001AA7001BB")), "record 0302: data after the tag-70"),
        (OdaRecord(1, 0x10, bytes.fromhex("7005AA")), r"record 0110: malformed .*\(tlv: "),
        (OdaRecord(31, 1, bytes.fromhex("7001AA")), "sfi: 31 is not 1..30"),
    ],
)
def test_static_data_errors_name_the_record(record: OdaRecord, message: str) -> None:
    """With the record number known, errors say ``record SSRR`` (as READ RECORD P2/P1 would)."""
    with pytest.raises(InvalidInputError, match=f"^{message}"):
        static_data_to_authenticate([(1, bytes.fromhex("7001AA")), record], b"\x82", b"\x19\x80")
    with pytest.raises(InvalidInputError, match=f"^{message}"):
        authenticated_record_data(record)


def test_static_data_same_bytes_from_records_and_pairs() -> None:
    """An OdaRecord and an (SFI, record) pair contribute the same bytes; None means no 9F4A."""
    r1, r11 = bytes.fromhex("70035A0112"), bytes.fromhex("7001AA")
    typed = [OdaRecord(1, 1, r1), OdaRecord(11, 7, r11)]
    assert static_data_to_authenticate(typed, None, b"\x19\x80") == r1[2:] + r11
    assert static_data_to_authenticate(typed, b"\x82", b"\x19\x80") == (
        static_data_to_authenticate([(1, r1), (11, r11)], b"\x82", b"\x19\x80")
    )


class _PowSigner:
    """A RawRsaSigner that is not an RsaSigner (shape of an HSM / key-store adapter)."""

    def __init__(self, k: RsaPrivateKey) -> None:
        self._k = k
        self.size_bytes = k.size_bytes

    def private_op(self, block: bytes) -> bytes:
        return pow(int.from_bytes(block, "big"), self._k.d, self._k.n).to_bytes(
            self.size_bytes, "big"
        )


def test_builders_accept_any_raw_signer() -> None:
    issuer, icc = key(1408), key(1152)
    args = (176, PAN, "1230", SERIAL, icc.modulus, b"\x03", b"static")
    cert, remainder = build_icc_certificate(_PowSigner(issuer), *args)
    # raw RSA is deterministic: the blinded in-process signer gives the same bytes
    assert (cert, remainder) == build_icc_certificate(signer(1408), *args)
    got = verify_icc_certificate(cert, issuer.modulus, b"\x03", remainder, b"\x03", b"static")
    assert got.modulus == icc.modulus
