"""PBOC SM2 certificates (formats 12 / 14) and signed static data (format 13).

No published PBOC SM2 certificate vector is available to us (JR/T 0025.17 is
not public; DOMAIN.md section 4).  These tests therefore check the layout
field by field against the table in DOMAIN.md, round trips, tampering of
every byte, and the signature independently with gmssl (which computes Z
itself) over the bytes DOMAIN.md says are signed.
"""

from __future__ import annotations

import secrets

import pytest
from gmssl import sm2 as gm_sm2

from pipeline.crypto import pboc_certs as pc
from pipeline.crypto import sm2
from pipeline.errors import CertificateError, InvalidInputError, KeyLengthError

PAN = "6228480000000000017"
STATIC = bytes.fromhex("5A0A6228480000000000017F5F24032512315F25031912017C00")
SERIAL = b"\x00\x12\x34"


def _keypair() -> tuple[bytes, bytes]:
    """A key pair whose hex public key gmssl parses correctly (no leading "04" in x)."""
    while True:
        d, pub = sm2.generate_keypair()
        if not pub.hex().startswith("04"):
            return d, pub


CA_D, CA_PUB = _keypair()
ISS_D, ISS_PUB = _keypair()
ICC_D, ICC_PUB = _keypair()


def _issuer_cert() -> bytes:
    return pc.build_pboc_issuer_certificate(CA_D, "622848", "1230", SERIAL, ISS_PUB)


def _icc_cert() -> bytes:
    return pc.build_pboc_icc_certificate(ISS_D, PAN, "1230", SERIAL, ICC_PUB, STATIC)


def _gmssl_verifies(public_key: bytes, signed: bytes, signature: bytes) -> bool:
    checker = gm_sm2.CryptSM2(private_key="", public_key=public_key.hex())
    return bool(checker.verify_with_sm3(signature.hex(), signed))


# --- layout (DOMAIN.md section 4 table) ----------------------------------------------


def test_issuer_certificate_layout() -> None:
    cert = _issuer_cert()
    assert len(cert) == pc.ISSUER_CERTIFICATE_SIZE == 142
    assert cert[0] == 0x12
    assert cert[1:5] == bytes.fromhex("622848FF")
    assert cert[5:7] == bytes.fromhex("1230")
    assert cert[7:10] == SERIAL
    assert cert[10:14] == bytes.fromhex("04001140")
    assert cert[14:78] == ISS_PUB
    assert _gmssl_verifies(CA_PUB, cert[:78], cert[78:])


def test_icc_certificate_layout_and_signed_data() -> None:
    cert = _icc_cert()
    assert len(cert) == pc.ICC_CERTIFICATE_SIZE == 148
    assert cert[0] == 0x14
    assert cert[1:11] == bytes.fromhex("6228480000000000017F")
    assert cert[11:13] == bytes.fromhex("1230")
    assert cert[13:16] == SERIAL
    assert cert[16:20] == bytes.fromhex("04001140")
    assert cert[20:84] == ICC_PUB
    assert _gmssl_verifies(ISS_PUB, cert[:84] + STATIC, cert[84:])
    assert not _gmssl_verifies(ISS_PUB, cert[:84], cert[84:])


def test_layout_table_sizes() -> None:
    assert pc.LAYOUT[0].name == "format"
    assert pc.LAYOUT[-1].name == "signature"
    assert sum(f.size(pc.CertKind.ISSUER) for f in pc.LAYOUT[:-1]) == 78
    assert sum(f.size(pc.CertKind.ICC) for f in pc.LAYOUT[:-1]) == 84


def test_short_pan_is_f_padded() -> None:
    cert = pc.build_pboc_icc_certificate(ISS_D, "622848000000", "0130", SERIAL, ICC_PUB, b"")
    assert cert[1:11] == bytes.fromhex("622848000000FFFFFFFF")
    parsed = pc.verify_pboc_icc_certificate(cert, ISS_PUB, b"")
    assert parsed.pan == "622848000000"
    assert parsed.expiry == "0130"


# --- round trips ------------------------------------------------------------------------


def test_issuer_round_trip() -> None:
    parsed = pc.verify_pboc_issuer_certificate(_issuer_cert(), CA_PUB)
    assert parsed == pc.PbocIssuerCertificate("622848", "1230", SERIAL, ISS_PUB)


def test_icc_round_trip_with_signer_object() -> None:
    signer = sm2.Sm2Signer(ISS_D)
    cert = pc.build_pboc_icc_certificate(signer, PAN, "1230", SERIAL, ICC_PUB, STATIC)
    parsed = pc.verify_pboc_icc_certificate(cert, ISS_PUB, STATIC)
    assert parsed == pc.PbocIccCertificate(PAN, "1230", SERIAL, ICC_PUB)
    assert PAN not in repr(parsed)


def test_chain_ca_issuer_icc() -> None:
    """The issuer key recovered from its certificate verifies the ICC certificate."""
    issuer = pc.verify_pboc_issuer_certificate(_issuer_cert(), CA_PUB)
    icc = pc.verify_pboc_icc_certificate(_icc_cert(), issuer.public_key, STATIC)
    assert icc.public_key == ICC_PUB


@pytest.mark.parametrize("identifier", ["622", "6228", "62284812"])
def test_issuer_identifier_lengths(identifier: str) -> None:
    cert = pc.build_pboc_issuer_certificate(CA_D, identifier, "1230", SERIAL, ISS_PUB)
    assert pc.verify_pboc_issuer_certificate(cert, CA_PUB).issuer_identifier == identifier


def test_ssad_round_trip_and_layout() -> None:
    ssad = pc.build_pboc_ssad(ISS_D, b"\xda\xc1", STATIC)
    assert len(ssad) == pc.SSAD_SIZE == 67
    assert ssad[:3] == bytes.fromhex("13DAC1")
    assert _gmssl_verifies(ISS_PUB, ssad[:3] + STATIC, ssad[3:])
    assert pc.verify_pboc_ssad(ssad, ISS_PUB, STATIC) == b"\xda\xc1"


# --- tampering --------------------------------------------------------------------------


def test_every_issuer_byte_flip_is_rejected() -> None:
    cert = _issuer_cert()
    for index in range(len(cert)):
        tampered = bytearray(cert)
        tampered[index] ^= 1 << secrets.randbelow(8)
        with pytest.raises(CertificateError):
            pc.verify_pboc_issuer_certificate(bytes(tampered), CA_PUB)


def test_every_icc_byte_flip_is_rejected() -> None:
    cert = _icc_cert()
    for index in range(len(cert)):
        tampered = bytearray(cert)
        tampered[index] ^= 1 << secrets.randbelow(8)
        with pytest.raises(CertificateError):
            pc.verify_pboc_icc_certificate(bytes(tampered), ISS_PUB, STATIC)


def test_every_ssad_byte_flip_is_rejected() -> None:
    ssad = pc.build_pboc_ssad(ISS_D, b"\x00\x01", STATIC)
    for index in range(len(ssad)):
        tampered = bytearray(ssad)
        tampered[index] ^= 0x80
        with pytest.raises(CertificateError):
            pc.verify_pboc_ssad(bytes(tampered), ISS_PUB, STATIC)


def test_changed_static_data_is_rejected() -> None:
    with pytest.raises(CertificateError, match=r"^signature: does not verify under the issuer"):
        pc.verify_pboc_icc_certificate(_icc_cert(), ISS_PUB, STATIC[:-1] + b"\x01")
    with pytest.raises(CertificateError, match=r"^signature"):
        pc.verify_pboc_ssad(pc.build_pboc_ssad(ISS_D, b"\x00\x01", STATIC), ISS_PUB, b"")


def test_wrong_signer_key_is_rejected() -> None:
    with pytest.raises(CertificateError, match=r"^signature: does not verify under the ca key"):
        pc.verify_pboc_issuer_certificate(_issuer_cert(), ISS_PUB)


# --- errors name the field --------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, 0x14, "format"),
        (10, 0x01, "signature_algorithm"),
        (11, 0x04, "encryption_algorithm"),
        (12, 0x00, "parameter_indicator"),
        (13, 0x41, "public_key_length"),
        (5, 0x13, "expiry"),
        (1, 0xA2, "identifier"),
        (14, 0x00, "public_key"),
    ],
)
def test_issuer_field_errors(offset: int, value: int, field: str) -> None:
    cert = bytearray(_issuer_cert())
    if cert[offset] == value:
        value ^= 0x01
    cert[offset] = value
    with pytest.raises(CertificateError) as caught:
        pc.verify_pboc_issuer_certificate(bytes(cert), CA_PUB)
    assert caught.value.field in (field, "signature")
    if field != "public_key":
        assert caught.value.field == field


def test_icc_format_byte_on_issuer_certificate() -> None:
    with pytest.raises(CertificateError, match=r"^certificate: issuer certificate must be 142"):
        pc.verify_pboc_issuer_certificate(_icc_cert(), CA_PUB)
    with pytest.raises(CertificateError, match=r"^certificate: icc certificate must be 148"):
        pc.verify_pboc_icc_certificate(_issuer_cert(), ISS_PUB, STATIC)


def test_bad_signer_public_key() -> None:
    with pytest.raises(CertificateError, match=r"^ca_public_key"):
        pc.verify_pboc_issuer_certificate(_issuer_cert(), CA_PUB[:-1] + b"\x00")


def test_certified_key_not_on_curve() -> None:
    cert = bytearray(_issuer_cert())
    cert[77] ^= 0x01  # last byte of y
    with pytest.raises(CertificateError, match=r"^public_key: point is not on the SM2 curve"):
        pc.verify_pboc_issuer_certificate(bytes(cert), CA_PUB)


def test_ssad_errors() -> None:
    with pytest.raises(CertificateError, match=r"^ssad: must be 67 bytes"):
        pc.verify_pboc_ssad(b"\x13\x00\x01", ISS_PUB, STATIC)
    ssad = bytearray(pc.build_pboc_ssad(ISS_D, b"\x00\x01", STATIC))
    ssad[0] = 0x03
    with pytest.raises(CertificateError, match=r"^format: expected 13"):
        pc.verify_pboc_ssad(bytes(ssad), ISS_PUB, STATIC)


# --- builder input validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"issuer_identifier": "62"}, "issuer_identifier"),
        ({"issuer_identifier": "622848123"}, "issuer_identifier"),
        ({"issuer_identifier": "62284A"}, "issuer_identifier"),
        ({"expiry": "1330"}, "expiry"),
        ({"expiry": "0030"}, "expiry"),
        ({"expiry": "12/30"}, "expiry"),
        ({"serial": b"\x00\x01"}, "serial"),
    ],
)
def test_issuer_builder_rejects(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "ca_d": CA_D,
        "issuer_identifier": "622848",
        "expiry": "1230",
        "serial": SERIAL,
        "issuer_public_key": ISS_PUB,
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=rf"^{field}:"):
        pc.build_pboc_issuer_certificate(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("pan", ["62284800000", "62284800000000000171", "62284800000000001X"])
def test_icc_builder_rejects_pan(pan: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^pan:") as caught:
        pc.build_pboc_icc_certificate(ISS_D, pan, "1230", SERIAL, ICC_PUB, STATIC)
    assert pan not in str(caught.value)


def test_builder_rejects_bad_keys() -> None:
    with pytest.raises(InvalidInputError, match=r"^public_key: point is not on"):
        pc.build_pboc_icc_certificate(ISS_D, PAN, "1230", SERIAL, bytes(64), STATIC)
    with pytest.raises(KeyLengthError, match=r"^d:"):
        pc.build_pboc_icc_certificate(ISS_D[:31], PAN, "1230", SERIAL, ICC_PUB, STATIC)
    with pytest.raises(InvalidInputError, match=r"^issuer_signer_or_d"):
        pc.build_pboc_icc_certificate("key", PAN, "1230", SERIAL, ICC_PUB, STATIC)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"^dac"):
        pc.build_pboc_ssad(ISS_D, b"\x00", STATIC)


def test_bodies_for_external_signers() -> None:
    """A signer outside the module (an HSM) signs body (|| static data); the result verifies."""
    issuer_body = pc.issuer_certificate_body("622848", "1230", SERIAL, ISS_PUB)
    assert issuer_body == _issuer_cert()[:78]
    issuer_cert = issuer_body + sm2.sign(CA_D, issuer_body)
    assert pc.verify_pboc_issuer_certificate(issuer_cert, CA_PUB).public_key == ISS_PUB
    icc_body = pc.icc_certificate_body(PAN, "1230", SERIAL, ICC_PUB)
    assert icc_body == _icc_cert()[:84]
    icc_cert = icc_body + sm2.sign(ISS_D, icc_body + STATIC)
    assert pc.verify_pboc_icc_certificate(icc_cert, ISS_PUB, STATIC).pan == PAN


# --- a reusable (precomputed) verifier in place of the signer's public key --------------


ISS_VERIFIER = sm2.Sm2Verifier(ISS_PUB, precompute=True)


def test_icc_certificate_and_ssad_verify_with_a_reused_precomputed_verifier() -> None:
    for _ in range(5):
        _, icc_pub = sm2.generate_keypair()
        serial = secrets.token_bytes(3)
        cert = pc.build_pboc_icc_certificate(ISS_D, PAN, "1230", serial, icc_pub, STATIC)
        parsed = pc.verify_pboc_icc_certificate(cert, ISS_VERIFIER, STATIC)
        assert parsed == pc.verify_pboc_icc_certificate(cert, ISS_PUB, STATIC)
        assert (parsed.public_key, parsed.serial, parsed.pan) == (icc_pub, serial, PAN)
    ssad = pc.build_pboc_ssad(ISS_D, b"\xda\xc1", STATIC)
    assert pc.verify_pboc_ssad(ssad, ISS_VERIFIER, STATIC) == b"\xda\xc1"
    ca_verifier = sm2.Sm2Verifier(CA_PUB, precompute=True)
    assert pc.verify_pboc_issuer_certificate(_issuer_cert(), ca_verifier).public_key == ISS_PUB


def test_every_icc_byte_flip_is_rejected_by_the_precomputed_verifier() -> None:
    cert = _icc_cert()
    for index in range(len(cert)):
        tampered = bytearray(cert)
        tampered[index] ^= 1 << secrets.randbelow(8)
        with pytest.raises(CertificateError):
            pc.verify_pboc_icc_certificate(bytes(tampered), ISS_VERIFIER, STATIC)
    with pytest.raises(CertificateError, match=r"^signature: does not verify under the issuer"):
        pc.verify_pboc_icc_certificate(cert, ISS_VERIFIER, STATIC[:-1] + b"\x01")


def test_verifier_of_another_key_is_rejected() -> None:
    with pytest.raises(CertificateError, match=r"^signature: does not verify under the issuer"):
        pc.verify_pboc_icc_certificate(
            _icc_cert(), sm2.Sm2Verifier(CA_PUB, precompute=True), STATIC
        )


def test_verifier_with_another_user_id_is_refused() -> None:
    """Certificates are signed under the default ID; another ID is a caller error."""
    with pytest.raises(InvalidInputError, match=r"^issuer_verifier: must use the default"):
        pc.verify_pboc_icc_certificate(_icc_cert(), sm2.Sm2Verifier(ISS_PUB, b"ALICE"), STATIC)


# --- the precomputed cuts agree with LAYOUT ------------------------------------------------


@pytest.mark.parametrize("kind", list(pc.CertKind))
def test_merged_segments_and_cuts_follow_the_layout(kind: pc.CertKind) -> None:
    # _body joins merged runs of fixed fields, _split checks them: both must be LAYOUT itself.
    walked = b"".join(
        spec.value(kind) or bytes([0xA0 + i]) * spec.size(kind)
        for i, spec in enumerate(pc.LAYOUT[:-1])
    )
    variable = {
        spec.name: bytes([0xA0 + i]) * spec.size(kind)
        for i, spec in enumerate(pc.LAYOUT[:-1])
        if spec.value(kind) is None
    }
    arguments = {("key" if name == "public_key" else name): v for name, v in variable.items()}
    assert pc._body(kind, **arguments) == walked
    fields = pc._split(kind, walked + bytes(64))
    assert fields == {**variable, "signature": bytes(64)}


def test_icc_fixed_field_errors_name_the_first_wrong_field() -> None:
    cert = bytearray(_icc_cert())
    cert[18] = 0x12  # parameter_indicator
    cert[19] = 0x41  # public_key_length
    with pytest.raises(CertificateError, match=r"^parameter_indicator: expected 11, got 12$"):
        pc.verify_pboc_icc_certificate(bytes(cert), ISS_PUB, STATIC)
    cert[16] = 0x03
    with pytest.raises(CertificateError, match=r"^signature_algorithm: expected 04, got 03$"):
        pc.verify_pboc_icc_certificate(bytes(cert), ISS_PUB, STATIC)
    cert[0] = 0x12
    with pytest.raises(CertificateError, match=r"^format: expected 14, got 12$"):
        pc.verify_pboc_icc_certificate(bytes(cert), ISS_PUB, STATIC)
