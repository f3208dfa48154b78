"""Key check values (pipeline.crypto.kcv)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.kcv import KcvMethod, kcv, kcv_function, kcv_method_for
from pipeline.errors import InvalidInputError, KeyLengthError
from tests.conftest import load_vectors

VECTORS = load_vectors("kcv")


def test_tdes_kcvs() -> None:
    v = next(v for v in VECTORS if v["name"].startswith("TDES KCV"))
    for key, expected in zip(v["inputs"]["keys"], v["expected"]["kcvs"], strict=True):
        assert kcv(bytes.fromhex(key)).hex().upper() == expected
        assert kcv(bytes.fromhex(key), KcvMethod.TDES).hex().upper() == expected
    assert kcv(bytes.fromhex(v["inputs"]["keys"][0]), length=2).hex().upper() == "08D7"


def test_aes_kcv_cmac_x9_24() -> None:
    v = next(v for v in VECTORS if v["name"].startswith("AES KCV"))
    key = bytes.fromhex(v["inputs"]["key"])
    assert kcv(key, "aes-cmac", 5).hex().upper() == v["expected"]["kcv5"]
    assert kcv(key, "aes-cmac").hex().upper() == v["expected"]["kcv3"]


def test_aes_kcv_gp_convention_differs() -> None:
    """Amd D KCV (AES of 16 x 01): our computation noted in the vector file, and
    independently confirmed by the GlobalPlatformPro kdf3 KCVs in test_sym_gp."""
    v = next(v for v in VECTORS if v["name"].startswith("AES KCV"))
    key = bytes.fromhex(v["inputs"]["key"])
    gp = kcv(key, "aes-gp")
    assert gp.hex().upper() == v["our_computation"]["gp_amdD_kcv3_ecb_of_01s"]
    assert gp != kcv(key, "aes-cmac")


def test_sm4_kcv_is_sm4_of_zeros() -> None:
    """No authoritative SM4 KCV convention: SM4-ECB of zeros, 3 bytes (project rule)."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert kcv(key, "sm4") == BlockCipher(Algorithm.SM4, key).encrypt_ecb(bytes(16))[:3]
    assert kcv(key, "sm4") != kcv(key, "tdes")


def test_method_for_algorithm() -> None:
    assert kcv_method_for(Algorithm.TDES) is KcvMethod.TDES
    assert kcv_method_for(Algorithm.AES) is KcvMethod.AES_CMAC
    assert kcv_method_for(Algorithm.SM4) is KcvMethod.SM4


def test_kcv_errors() -> None:
    with pytest.raises(InvalidInputError, match="method"):
        kcv(bytes(16), "des")
    with pytest.raises(InvalidInputError, match="length"):
        kcv(bytes(16), "tdes", 9)
    with pytest.raises(InvalidInputError, match="length"):
        kcv(bytes(16), "aes-cmac", 0)
    with pytest.raises(KeyLengthError):
        kcv(bytes(32), "tdes")
    with pytest.raises(KeyLengthError):
        kcv(bytes(24), "sm4")


# --- ECB KCVs of bytes keys (primitive's unchecked path, issue 7) equal the definition --

_ECB_DEFINITIONS = [  # method, cryptography algorithm for a key (independent), lengths, block
    ("tdes", lambda k: TripleDES(k + k[:8] if len(k) == 16 else k), (16, 24), bytes(8)),
    ("aes-gp", algorithms.AES, (16, 24, 32), b"\x01" * 16),
    ("sm4", algorithms.SM4, (16,), bytes(16)),
]


@pytest.mark.parametrize(("method", "algorithm", "lengths", "block"), _ECB_DEFINITIONS)
@given(seed=st.binary(min_size=32, max_size=32))
@settings(max_examples=30, deadline=None)
def test_ecb_kcvs_of_bytes_keys_are_the_block_under_the_key(
    method: str, algorithm: Any, lengths: tuple[int, ...], block: bytes, seed: bytes
) -> None:
    """X9.24-1 / Amd D: E_K(block), leftmost bytes; bytes keys, bytearray keys, enum methods."""
    for size in lengths:
        key = seed[:size]
        full = Cipher(algorithm(key), modes.ECB()).encryptor().update(block)
        for length in (1, 3, len(block)):
            assert kcv(key, method, length) == full[:length]
            assert kcv(bytearray(key), method, length) == full[:length]
            assert kcv(key, KcvMethod(method), length) == full[:length]
        assert kcv(key, method, True) == full[:1]  # as the checked path: a bool is an int


@pytest.mark.parametrize(("method", "algorithm", "lengths", "block"), _ECB_DEFINITIONS)
def test_ecb_kcv_refusals_on_the_fast_path(
    method: str, algorithm: Any, lengths: tuple[int, ...], block: bytes
) -> None:
    key = bytes(range(lengths[0]))
    for bad in (0, len(block) + 1, "3", None):
        with pytest.raises(InvalidInputError, match="length"):
            kcv(key, method, bad)  # type: ignore[arg-type]
    with pytest.raises(KeyLengthError):
        kcv(bytes(max(lengths) + 1), method)


# --- kcv_function: the method and length checked once (issue 7) ----------------------------


@pytest.mark.parametrize("method", ["tdes", "aes-gp", "sm4", "aes-cmac", KcvMethod.TDES])
@given(seed=st.binary(min_size=16, max_size=16))
@settings(max_examples=20, deadline=None)
def test_kcv_function_equals_kcv(method: str, seed: bytes) -> None:
    for length in (1, 3, 8):
        compute = kcv_function(method, length)
        assert compute(seed) == kcv(seed, method, length)
        assert compute(bytearray(seed)) == kcv(seed, method, length)
    assert kcv_function(method)(seed) == kcv(seed, method)


def test_kcv_function_refuses_as_kcv() -> None:
    with pytest.raises(InvalidInputError, match="method"):
        kcv_function("des")
    for method, bad in (("tdes", 9), ("tdes", 0), ("sm4", "3"), ("aes-cmac", 0), ("aes-cmac", 17)):
        with pytest.raises(InvalidInputError, match="length"):
            kcv_function(method, bad)  # type: ignore[arg-type]
    with pytest.raises(KeyLengthError):
        kcv_function("tdes")(bytes(32))  # the key length is still checked per key
    with pytest.raises(KeyLengthError):
        kcv_function("sm4")(bytes(24))
