"""The precomputed SM2 verifier cross-checked with gmssl and with the plain verifier.

gmssl 3.2.2 is an independent pure-Python SM2.  Its constructor does
``public_key.lstrip("04")``, which also eats leading '0'/'4' digits of x, so
the key is set as an attribute after construction (every random key works).
Its signing nonce is always passed in, from :mod:`secrets`.
"""

from __future__ import annotations

import secrets

import pytest
from gmssl import sm2 as gm_sm2
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto import _sm2_curve as curve
from pipeline.crypto import sm2
from pipeline.errors import SignatureError

N = curve.N
SCALARS = st.integers(min_value=1, max_value=N - 2)
MESSAGES = st.binary(max_size=300)
SETTINGS = settings(max_examples=40, deadline=None)


def _gmssl(d: int | None, public_key: bytes) -> gm_sm2.CryptSM2:
    """gmssl for key ``d`` / ``public_key`` (x || y), key set after construction."""
    crypt = gm_sm2.CryptSM2(private_key=None if d is None else f"{d:064x}", public_key="")
    crypt.public_key = public_key.hex()
    return crypt


def _key(d: int) -> bytes:
    return d.to_bytes(32, "big")


def _verifies(verifier: sm2.Sm2Verifier, message: bytes, signature: bytes) -> bool:
    try:
        verifier.verify(message, signature)
    except SignatureError:
        return False
    return True


@SETTINGS
@given(SCALARS, MESSAGES)
def test_gmssl_signature_verifies_with_the_precomputed_verifier(d: int, message: bytes) -> None:
    public_key = sm2.public_key(_key(d))
    signature_hex = _gmssl(d, public_key).sign_with_sm3(
        message, f"{secrets.randbelow(N - 1) + 1:064x}"
    )
    if signature_hex is None:  # gmssl gives up where GB/T 32918.2 6.1 A5/A6 would retry
        return
    sm2.Sm2Verifier(public_key, precompute=True).verify(message, bytes.fromhex(signature_hex))


@SETTINGS
@given(SCALARS, MESSAGES, st.binary(min_size=64, max_size=64))
def test_precomputed_verifier_agrees_with_gmssl_and_plain_verifier(
    d: int, message: bytes, noise: bytes
) -> None:
    """A valid signature, a random one and one with swapped halves: all three agree."""
    public_key = sm2.public_key(_key(d))
    fast = sm2.Sm2Verifier(public_key, precompute=True)
    plain = sm2.Sm2Verifier(public_key)
    theirs = _gmssl(None, public_key)
    valid = sm2.sign(_key(d), message)
    for signature in (valid, noise, valid[32:] + valid[:32]):
        expected = theirs.verify_with_sm3(signature.hex(), message)
        assert _verifies(fast, message, signature) == _verifies(plain, message, signature)
        assert _verifies(fast, message, signature) == bool(expected)
    assert _verifies(fast, message, valid)


@SETTINGS
@given(SCALARS, MESSAGES, st.integers(min_value=0, max_value=64 * 8 - 1))
def test_any_flipped_signature_bit_fails_the_precomputed_verifier(
    d: int, message: bytes, bit: int
) -> None:
    signature = bytearray(sm2.sign(_key(d), message))
    signature[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        sm2.Sm2Verifier(sm2.public_key(_key(d)), precompute=True).verify(message, bytes(signature))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=N - 1),
    st.integers(min_value=0, max_value=N - 1),
    st.sampled_from([2, 3, 5, 8]),
)
def test_fixed_table_sum_equals_wnaf_ladder(s: int, t: int, width: int) -> None:
    """[s]G + [t]Q from two tables equals the wNAF path, Q = [s + 7]G (so tables may overlap)."""
    q = curve.mul_base((s + 7) % N or 1)
    assert q is not None
    table = curve.FixedBaseTable(q, width=width)
    assert curve.mul_base_add_fixed(s, t, table) == curve.mul_base_add(s, t, q)
