"""The TEST ONLY demo PKI: every chain it produces verifies back to the CA key.

No public vector applies (the keys are random); the chain is checked with the
independent verifiers of pipeline.crypto.emv_certs and, for the issuer
certificate, by recomputing the Table 6 hash from the raw recovered block.
"""

from __future__ import annotations

import functools
import hashlib

import pytest

from pipeline.crypto.demo_pki import DEMO_RID, TEST_ONLY_LABEL, DemoPki, generate_demo_pki
from pipeline.crypto.emv_certs import build_icc_certificate, capk_checksum
from pipeline.crypto.rsa import generate_rsa_key, rsa_public_op
from pipeline.errors import CertificateError


@functools.cache
def pki() -> DemoPki:
    return generate_demo_pki()


def test_defaults_and_label() -> None:
    p = pki()
    assert p.label == TEST_ONLY_LABEL and "TEST ONLY" in p.label
    assert p.ca_key.size_bytes == 248 and p.issuer_key.size_bytes == 176
    assert p.ca_public_key.rid == DEMO_RID
    assert p.ca_public_key.checksum == capk_checksum(
        DEMO_RID, p.ca_public_key.index, p.ca_key.modulus, p.ca_key.exponent_bytes
    )
    assert p.issuer_remainder == b""  # 176 <= 248 - 36


def test_repr_hides_private_keys() -> None:
    text = repr(pki())
    assert str(pki().ca_key.d) not in text and str(pki().issuer_key.p) not in text
    assert "ca_key" not in text and "issuer_key" not in text


def test_issuer_certificate_verifies_and_hash_recomputes() -> None:
    p = pki()
    issuer = p.verify_issuer()
    assert issuer.modulus == p.issuer_key.modulus
    assert issuer.issuer_identifier_digits == "476173" and issuer.expiry == "1230"
    block = rsa_public_op(p.ca_public_key.modulus, b"\x03", p.issuer_certificate)
    hashed = block[1:-21] + p.issuer_remainder + p.issuer_exponent
    assert hashlib.sha1(hashed).digest() == block[-21:-1]


def test_full_chain_to_icc() -> None:
    p = pki()
    icc = generate_rsa_key(1152, 65537)
    static = bytes.fromhex("5A0847617390010101195F2403301231")
    cert, remainder = build_icc_certificate(
        p.issuer_signer(),
        p.issuer_key.size_bytes,
        "4761739001010119",
        "1230",
        b"\x00\x00\x07",
        icc.modulus,
        icc.exponent_bytes,
        static,
    )
    got = p.verify_icc(cert, remainder, icc.exponent_bytes, static)
    assert got.modulus == icc.modulus
    with pytest.raises(CertificateError, match="icc certificate hash"):
        p.verify_icc(cert, remainder, icc.exponent_bytes, static + b"\x00")


def test_small_and_remainder_configuration() -> None:
    """A 1024-bit CA with a 1024-bit issuer key forces a 36-byte remainder."""
    p = generate_demo_pki(
        ca_bits=1024, issuer_bits=1024, issuer_identifier="54133300", expiry="0627"
    )
    assert len(p.issuer_remainder) == 36
    assert p.verify_issuer().issuer_identifier.hex() == "54133300"


def test_issuer_longer_than_ca_refused() -> None:
    with pytest.raises(CertificateError, match="demo pki lengths"):
        generate_demo_pki(ca_bits=1024, issuer_bits=1152)
