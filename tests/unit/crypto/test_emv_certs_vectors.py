"""EMV RSA known answers: the Visa TEST CAPK 94 chain and two CAPK checksums.

Source: openemv/emv-utils tests/emv_rsa_test.c and src/emv_capk_static_data.h
(copied, with sources, to tests/vectors/emv_rsa.json).

The issuer certificate and the SDAD are verified in full (hash included).
The ICC certificate's and the SSAD's hashes cover the card's static data to be
authenticated, which the source does not publish: for those two we check the
recovered header, format, trailer, every field, the whole ICC modulus and the
recovered hash result against the published value, and we show that the hash
check is live by verifying with a wrong (empty) static data, which must fail.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from pipeline.crypto.emv_certs import (
    CertificateFormat,
    HashAlgorithm,
    PkAlgorithm,
    capk_checksum,
    import_ca_public_key,
    recover_icc_certificate,
    recover_signed_static_data,
    verify_icc_certificate,
    verify_issuer_certificate,
    verify_signed_dynamic_data,
    verify_signed_static_data,
)
from pipeline.crypto.rsa import rsa_public_op
from pipeline.errors import CertificateError
from tests.conftest import load_vectors

VECTORS: Any = load_vectors("emv_rsa")
CHAIN = VECTORS["chain"]["inputs"]
EXPECTED = VECTORS["chain"]["expected"]
VISA_94 = VECTORS["capk"][0]["inputs"]
h = bytes.fromhex


@pytest.mark.parametrize("vector", VECTORS["capk"], ids=lambda v: v["inputs"]["index"])
def test_capk_checksum(vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    checksum = capk_checksum(h(i["rid"]), h(i["index"]), h(i["modulus"]), h(i["exponent"]))
    assert checksum.hex().upper() == vector["expected"]["checksum_sha1"]
    ca = import_ca_public_key(
        h(i["rid"]), h(i["index"]), h(i["modulus"]), h(i["exponent"]), checksum
    )
    assert ca.modulus == h(i["modulus"]) and ca.checksum == checksum


@pytest.mark.parametrize("vector", VECTORS["capk"], ids=lambda v: v["inputs"]["index"])
def test_capk_bad_checksum_refused(vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    bad = bytearray(h(vector["expected"]["checksum_sha1"]))
    bad[-1] ^= 0x01
    with pytest.raises(CertificateError, match="ca public key checksum"):
        import_ca_public_key(
            h(i["rid"]), h(i["index"]), h(i["modulus"]), h(i["exponent"]), bytes(bad)
        )
    modulus = bytearray(h(i["modulus"]))
    modulus[10] ^= 0x80
    good = h(vector["expected"]["checksum_sha1"])
    with pytest.raises(CertificateError, match="ca public key checksum"):
        import_ca_public_key(h(i["rid"]), h(i["index"]), bytes(modulus), h(i["exponent"]), good)


def _issuer() -> Any:
    return verify_issuer_certificate(
        h(CHAIN["issuer_pk_cert_90"]),
        h(VISA_94["modulus"]),
        h(VISA_94["exponent"]),
        h(CHAIN["issuer_pk_remainder_92"]),
        h(CHAIN["issuer_pk_exponent_9F32"]),
        pan=CHAIN["pan_5A"],
        at=date(2025, 1, 1),
    )


def test_issuer_certificate_fields() -> None:
    issuer = _issuer()
    assert issuer.issuer_identifier.hex().upper() == EXPECTED["issuer_identifier"]
    assert issuer.issuer_identifier_digits == "476173"
    assert issuer.expiry == EXPECTED["issuer_cert_expiry_MMYY"]
    assert issuer.serial.hex().upper() == EXPECTED["issuer_cert_serial"]
    assert issuer.hash_algorithm is HashAlgorithm.SHA1
    assert issuer.pk_algorithm is PkAlgorithm.RSA
    assert len(issuer.modulus) == 176
    assert issuer.modulus.hex().upper() == EXPECTED["issuer_pk_modulus"]
    assert issuer.exponent == b"\x03"


def test_issuer_certificate_raw_layout() -> None:
    """Table 6 byte by byte on the recovered block (independent of our parser)."""
    block = rsa_public_op(h(VISA_94["modulus"]), b"\x03", h(CHAIN["issuer_pk_cert_90"]))
    assert block[0] == 0x6A and block[1] == CertificateFormat.ISSUER and block[-1] == 0xBC
    assert block[2:6].hex().upper() == "476173FF"
    assert block[11:13].hex() == "0101" and block[13] == 0xB0 and block[14] == 0x01
    assert block[15 : 15 + 176].hex().upper() == EXPECTED["issuer_pk_modulus"]
    assert set(block[15 + 176 : 248 - 21]) == {0xBB}  # N_CA - 36 - N_I = 36 bytes of BB


def test_issuer_certificate_expired_or_wrong_pan() -> None:
    cert_args = (
        h(CHAIN["issuer_pk_cert_90"]),
        h(VISA_94["modulus"]),
        b"\x03",
        b"",
        b"\x03",
    )
    with pytest.raises(CertificateError, match="issuer certificate expiry"):
        verify_issuer_certificate(*cert_args, at=date(2032, 1, 1))
    verify_issuer_certificate(*cert_args, at=date(2031, 12, 31))
    with pytest.raises(CertificateError, match="issuer identifier") as info:
        verify_issuer_certificate(*cert_args, pan="5413330089020011")
    assert "5413330089020011" not in str(info.value)


def test_icc_certificate_fields() -> None:
    issuer = _issuer()
    icc = recover_icc_certificate(
        h(CHAIN["icc_pk_cert_9F46"]),
        issuer.modulus,
        issuer.exponent,
        h(CHAIN["icc_pk_remainder_9F48"]),
        h(CHAIN["icc_pk_exponent_9F47"]),
    )
    assert icc.pan + "FFFF" == EXPECTED["icc_pan_field"]
    assert icc.pan == CHAIN["pan_5A"]
    assert icc.expiry == EXPECTED["icc_cert_expiry"]
    assert icc.serial.hex() == EXPECTED["icc_cert_serial"]
    assert icc.hash_algorithm is HashAlgorithm.SHA1 and icc.pk_algorithm is PkAlgorithm.RSA
    assert icc.modulus.hex().upper() == EXPECTED["icc_pk_modulus"]
    assert icc.hash_result.hex().upper() == EXPECTED["icc_cert_hash"]
    assert "4761739001010119" not in repr(icc)


def test_icc_certificate_hash_is_checked() -> None:
    """The true static data is unpublished: any other static data must fail the hash."""
    issuer = _issuer()
    with pytest.raises(CertificateError, match="icc certificate hash"):
        verify_icc_certificate(
            h(CHAIN["icc_pk_cert_9F46"]),
            issuer.modulus,
            issuer.exponent,
            h(CHAIN["icc_pk_remainder_9F48"]),
            h(CHAIN["icc_pk_exponent_9F47"]),
            b"",
        )


def test_signed_static_data_fields() -> None:
    issuer = _issuer()
    ssad = recover_signed_static_data(
        h(CHAIN["signed_static_app_data_93"]), issuer.modulus, b"\x03"
    )
    assert ssad.data_authentication_code.hex().upper() == EXPECTED["data_auth_code"]
    assert ssad.hash_result.hex().upper() == EXPECTED["ssad_hash"]
    with pytest.raises(CertificateError, match="ssad hash"):
        verify_signed_static_data(
            h(CHAIN["signed_static_app_data_93"]), issuer.modulus, b"\x03", b""
        )


def test_signed_dynamic_data() -> None:
    issuer = _issuer()
    icc = recover_icc_certificate(
        h(CHAIN["icc_pk_cert_9F46"]),
        issuer.modulus,
        b"\x03",
        h(CHAIN["icc_pk_remainder_9F48"]),
        b"\x03",
    )
    sdad = verify_signed_dynamic_data(
        h(CHAIN["sdad_9F4B"]), icc.modulus, b"\x03", h(CHAIN["ddol_data_9F37"])
    )
    assert sdad.icc_dynamic_data.hex().upper() == "0200AE"
    assert sdad.hash_result.hex().upper() == EXPECTED["sdad_hash"]
    with pytest.raises(CertificateError, match="sdad hash"):
        verify_signed_dynamic_data(h(CHAIN["sdad_9F4B"]), icc.modulus, b"\x03", b"\x00\x00\x00\x00")
