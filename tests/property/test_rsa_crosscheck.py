"""RsaSigner cross-checked against independent implementations on random inputs.

``cryptography`` (OpenSSL) has no raw RSA private operation, so the cross-check
goes through PKCS #1 v1.5 signatures (RFC 8017 9.2, EMSA-PKCS1-v1_5), which are
raw RSA on a deterministic encoding:

* our ``private_op`` on the encoding we build must verify with OpenSSL;
* OpenSSL's signature opened with our ``rsa_public_op`` must give the encoding;
* ``private_op`` must equal plain Python ``pow(x, d, n)`` and invert the public op.

Keys are generated once per size (hypothesis varies the data, not the keys).
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.rsa import RsaSigner, generate_rsa_key, rsa_public_op

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_SIZES = [(1024, 3), (1152, 65537), (1408, 3), (1984, 65537)]


@functools.cache
def _setup(bits: int, e: int) -> tuple[rsa.RSAPrivateKey, RsaSigner, int, int]:
    ours = generate_rsa_key(bits, e)
    theirs = rsa.RSAPrivateNumbers(
        p=ours.p,
        q=ours.q,
        d=ours.d,
        dmp1=ours.dp,
        dmq1=ours.dq,
        iqmp=ours.qinv,
        public_numbers=rsa.RSAPublicNumbers(e=ours.e, n=ours.n),
    ).private_key()
    return theirs, RsaSigner(ours), ours.n, ours.d


def _emsa_pkcs1_v15(message: bytes, size: int) -> bytes:
    """RFC 8017 9.2 encoding with SHA-256, written out independently of OpenSSL."""
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_SIZES), st.binary(max_size=200))
def test_our_signature_verifies_with_openssl(size: tuple[int, int], message: bytes) -> None:
    theirs, signer, _, _ = _setup(*size)
    signature = signer.private_op(_emsa_pkcs1_v15(message, signer.size_bytes))
    theirs.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_SIZES), st.binary(max_size=200))
def test_openssl_signature_opens_with_our_public_op(size: tuple[int, int], message: bytes) -> None:
    theirs, signer, _, _ = _setup(*size)
    signature = theirs.sign(message, padding.PKCS1v15(), hashes.SHA256())
    opened = rsa_public_op(signer.modulus, signer.exponent_bytes, signature)
    assert opened == _emsa_pkcs1_v15(message, signer.size_bytes)
    assert signer.private_op(opened) == signature


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_SIZES), st.data())
def test_private_op_equals_pow_and_inverts_public_op(
    size: tuple[int, int], data: st.DataObject
) -> None:
    _, signer, n, d = _setup(*size)
    x = data.draw(st.integers(min_value=0, max_value=n - 1))
    block = x.to_bytes(signer.size_bytes, "big")
    out = signer.private_op(block)
    assert out == pow(x, d, n).to_bytes(signer.size_bytes, "big")
    assert rsa_public_op(signer.modulus, signer.exponent_bytes, out) == block
