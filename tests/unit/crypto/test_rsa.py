"""Raw RSA: key generation, CRT components, public op, the blinded signer.

No published raw-RSA vector is used beyond the textbook one (n = 3233); the
signer is cross-checked against plain Python ``pow`` and against OpenSSL's own
PKCS #1 v1.5 verification in tests/property/test_rsa_crosscheck.py.
"""

from __future__ import annotations

import functools
import secrets
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.crypto.rsa import (
    RsaPrivateKey,
    RsaSigner,
    crt_components,
    generate_rsa_key,
    private_key_from_der,
    private_key_to_der,
    rsa_public_op,
)
from pipeline.errors import InvalidInputError, KeyLengthError, SignatureError


@functools.cache
def _key(bits: int, e: int) -> RsaPrivateKey:
    return generate_rsa_key(bits, e)


def key(bits: int, e: int = 3) -> RsaPrivateKey:
    """One key per (size, exponent) for the whole module."""
    return _key(bits, e)


def test_textbook_public_op() -> None:
    """RSA paper-style example (n = 61 * 53 = 3233, e = 17): 65^17 mod 3233 = 2790."""
    assert rsa_public_op((3233).to_bytes(2, "big"), b"\x11", (65).to_bytes(2, "big")) == (
        2790
    ).to_bytes(2, "big")
    textbook = RsaPrivateKey(n=3233, e=17, d=413, p=61, q=53, dp=53, dq=49, qinv=38)
    signer = RsaSigner(textbook)
    assert signer.private_op((2790).to_bytes(2, "big")) == (65).to_bytes(2, "big")


@pytest.mark.parametrize(("bits", "e"), [(1024, 3), (1152, 65537), (1160, 3), (1984, 3)])
def test_generate_sizes_and_exponents(bits: int, e: int) -> None:
    k = key(bits, e)
    assert k.n.bit_length() == bits
    assert k.size_bytes == bits // 8 == len(k.modulus)
    assert k.exponent_bytes == (b"\x03" if e == 3 else b"\x01\x00\x01")
    assert k.e == e


@pytest.mark.parametrize("bits", [1016, 1023, 1025, 1992, 2048, 512])
def test_generate_refuses_bad_sizes(bits: int) -> None:
    with pytest.raises(KeyLengthError, match="bits"):
        generate_rsa_key(bits, 3)


@pytest.mark.parametrize("e", [5, 17, 65539, 1])
def test_generate_refuses_bad_exponent(e: int) -> None:
    with pytest.raises(InvalidInputError, match="exponent"):
        generate_rsa_key(1024, e)


@pytest.mark.parametrize("bits", [1152, 1160])
def test_crt_components_order_and_padding(bits: int) -> None:
    """DGI 8201..8205: q^-1 mod p, d mod (q-1), d mod (p-1), q, p (EMV CPS v1.1)."""
    k = key(bits)
    comps = crt_components(k)
    half = (k.size_bytes + 1) // 2
    assert [len(c) for c in comps] == [half] * 5
    qinv, dq, dp, q, p = (int.from_bytes(c, "big") for c in comps)
    assert p * q == k.n
    assert qinv * q % p == 1
    assert dq == k.d % (q - 1)
    assert dp == k.d % (p - 1)
    # the components alone reproduce a private operation
    x = secrets.randbelow(k.n)
    m1, m2 = pow(x, dp, p), pow(x, dq, q)
    assert m2 + (qinv * (m1 - m2) % p) * q == pow(x, k.d, k.n)


def test_repr_hides_secrets() -> None:
    k = key(1024)
    text = repr(k)
    assert str(k.d) not in text and str(k.p) not in text and str(k.q) not in text
    assert text.startswith("RsaPrivateKey(n=")


def test_inconsistent_key_refused() -> None:
    k = key(1024)
    with pytest.raises(InvalidInputError, match="rsa key"):
        RsaPrivateKey(k.n, k.e, k.d, k.p, k.q, k.dp, k.dq, k.qinv + 1)
    with pytest.raises(InvalidInputError, match="rsa key"):
        RsaPrivateKey(k.n + 2, k.e, k.d, k.p, k.q, k.dp, k.dq, k.qinv)
    with pytest.raises(InvalidInputError, match="rsa key"):
        RsaPrivateKey(k.n, k.e, k.d, k.p, k.q, k.dp + 1, k.dq, k.qinv)


def test_der_round_trip() -> None:
    k = key(1152, 65537)
    assert private_key_from_der(private_key_to_der(k)) == k


def test_der_refuses_garbage_and_non_rsa() -> None:
    with pytest.raises(InvalidInputError, match="rsa key"):
        private_key_from_der(b"\x30\x03\x02\x01\x00")
    ec_der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidInputError, match="not an RSA key"):
        private_key_from_der(ec_der)


def test_public_op_refuses_bad_input() -> None:
    k = key(1024)
    with pytest.raises(InvalidInputError, match="block"):
        rsa_public_op(k.modulus, b"\x03", bytes(127))
    with pytest.raises(InvalidInputError, match="not less than the modulus"):
        rsa_public_op(k.modulus, b"\x03", b"\xff" * 128)
    with pytest.raises(InvalidInputError, match="modulus"):
        rsa_public_op(k.modulus[:-1] + b"\x02", b"\x03", bytes(128))
    with pytest.raises(InvalidInputError, match="modulus"):
        rsa_public_op(b"\x00" + k.modulus[1:], b"\x03", bytes(128))
    with pytest.raises(InvalidInputError, match="exponent"):
        rsa_public_op(k.modulus, b"\x02", bytes(128))
    with pytest.raises(InvalidInputError, match="exponent"):
        rsa_public_op(k.modulus, b"", bytes(128))


@pytest.mark.parametrize(("bits", "e"), [(1024, 3), (1408, 3), (1152, 65537), (1984, 3)])
def test_private_op_matches_pow_and_inverts_public_op(bits: int, e: int) -> None:
    k = key(bits, e)
    signer = RsaSigner(k)
    assert signer.modulus == k.modulus and signer.exponent_bytes == k.exponent_bytes
    for _ in range(40):  # crosses the 32-use blinding refresh
        x = secrets.randbelow(k.n)
        block = x.to_bytes(k.size_bytes, "big")
        out = signer.private_op(block)
        assert out == pow(x, k.d, k.n).to_bytes(k.size_bytes, "big")
        assert rsa_public_op(k.modulus, k.exponent_bytes, out) == block


def test_private_op_refuses_bad_blocks() -> None:
    k = key(1024)
    signer = RsaSigner(k)
    with pytest.raises(InvalidInputError, match="block"):
        signer.private_op(bytes(127))
    with pytest.raises(InvalidInputError, match="not less than the modulus"):
        signer.private_op(k.modulus)


def test_blinding_pair_changes_every_use() -> None:
    signer = RsaSigner(key(1024))
    before = signer._blind
    signer.private_op(bytes(127) + b"\x05")
    assert signer._blind != before


def test_fault_is_caught_by_verify_after_sign() -> None:
    """A corrupted CRT half (Boneh-DeMillo-Lipton fault) must not escape."""
    k = key(1024)
    faulty = RsaSigner(k)
    faulty._dp = faulty._dp + 2  # simulate a fault in one half-exponentiation
    block = b"\x6a" + bytes(126) + b"\xbc"
    with pytest.raises(SignatureError, match="verify-after-sign"):
        faulty.private_op(block)
    unchecked = RsaSigner(k, verify=False)
    unchecked._dp = unchecked._dp + 2
    assert unchecked.private_op(block) != RsaSigner(k).private_op(block)


def test_signer_is_thread_safe() -> None:
    k = key(1024)
    signer = RsaSigner(k)
    inputs = [secrets.randbelow(k.n) for _ in range(200)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = signer.private_op(inputs[i].to_bytes(128, "big"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(inputs):
        assert results[i] == pow(x, k.d, k.n).to_bytes(128, "big")
