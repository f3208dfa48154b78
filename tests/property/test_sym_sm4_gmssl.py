"""Property tests: SM4 block cipher and the PBOC SM4 derivations against gmssl's SM4.

gmssl (pure Python, test-only) is an independent SM4 implementation.  The
PBOC derivation *layouts* (DOMAIN.md 3) come from one open-source tool and
have no published vector; these tests pin our code to that layout computed
with a different SM4, they cannot prove the layout itself.
"""

from __future__ import annotations

from gmssl.sm4 import SM4_ENCRYPT, CryptSM4
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.emv import (
    derive_icc_mk,
    derive_session_key_sm4,
    generate_ac_sm4,
)
from pipeline.crypto.kcv import kcv

keys16 = st.binary(min_size=16, max_size=16)
pans = st.integers(min_value=12, max_value=19).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)
)
psns = st.none() | st.text(alphabet="0123456789", min_size=2, max_size=2)
SETTINGS = settings(max_examples=100, deadline=None)


def gm_ecb(key: bytes, data: bytes) -> bytes:
    c = CryptSM4(padding_mode=None)  # neither PKCS7 nor ZERO: no padding
    c.set_key(key, SM4_ENCRYPT)
    return bytes(c.crypt_ecb(data))


def gm_cbc_mac(key: bytes, data: bytes) -> bytes:
    padded = data + b"\x80" + bytes(-(len(data) + 1) % 16)
    chain = bytes(16)
    for i in range(0, len(padded), 16):
        chain = gm_ecb(key, bytes(a ^ b for a, b in zip(chain, padded[i : i + 16], strict=True)))
    return chain


@SETTINGS
@given(key=keys16, blocks=st.integers(1, 4), data=st.data())
def test_sm4_ecb_matches_gmssl(key: bytes, blocks: int, data: st.DataObject) -> None:
    plain = data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))
    assert BlockCipher(Algorithm.SM4, key).encrypt_ecb(plain) == gm_ecb(key, plain)


@SETTINGS
@given(imk=keys16, pan=pans, psn=psns)
def test_sm4_icc_mk_with_gmssl(imk: bytes, pan: str, psn: str | None) -> None:
    y = bytes.fromhex((pan + (psn or "00"))[-16:].rjust(16, "0"))
    expected = gm_ecb(imk, y + bytes(b ^ 0xFF for b in y))
    assert derive_icc_mk(imk, pan, psn, option="sm4") == expected


@SETTINGS
@given(mk=keys16, atc=st.binary(min_size=2, max_size=2), data=st.binary(max_size=64))
def test_sm4_session_key_and_ac_with_gmssl(mk: bytes, atc: bytes, data: bytes) -> None:
    inv = bytes(b ^ 0xFF for b in atc)
    sk = gm_ecb(mk, bytes(6) + atc + bytes(6) + inv)
    assert derive_session_key_sm4(mk, atc) == sk
    assert generate_ac_sm4(sk, data) == gm_cbc_mac(sk, data)[:8]
    assert generate_ac_sm4(sk, data, length=4) == gm_cbc_mac(sk, data)[:4]


@SETTINGS
@given(key=keys16)
def test_sm4_kcv_with_gmssl(key: bytes) -> None:
    assert kcv(key, "sm4") == gm_ecb(key, bytes(16))[:3]
