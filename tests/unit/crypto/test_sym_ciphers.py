"""Block ciphers, padding and parity (pipeline.crypto.ciphers / padding)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline.crypto.ciphers import Algorithm, BlockCipher, fix_parity, has_odd_parity, xor
from pipeline.crypto.padding import pad_iso9797_m1, pad_iso9797_m2, unpad_iso9797_m2
from pipeline.errors import InvalidInputError, KeyLengthError, PaddingError
from tests.conftest import load_vectors

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def _vector(name_prefix: str) -> dict:
    return next(v for v in load_vectors("sym_ciphers") if v["name"].startswith(name_prefix))


def test_sm4_block_gbt32907_example_1() -> None:
    v = _vector("SM4 single block")
    c = BlockCipher(Algorithm.SM4, bytes.fromhex(v["inputs"]["key"]))
    ct = c.encrypt_ecb(bytes.fromhex(v["inputs"]["plaintext"]))
    assert ct.hex().upper() == v["expected"]["ciphertext"]
    assert c.decrypt_ecb(ct).hex().upper() == v["inputs"]["plaintext"]


def test_tdes_two_key_is_k1_k2_k1() -> None:
    two = BlockCipher(Algorithm.TDES, IMK)
    three = BlockCipher(Algorithm.TDES, IMK + IMK[:8])
    block = bytes(range(16))
    assert two.encrypt_ecb(block) == three.encrypt_ecb(block)
    assert two.encrypt_ecb(bytes(8)).hex().upper() == "08D7B4FB629D0885"  # KCV vector, full block


def test_context_reuse_gives_identical_results() -> None:
    c = BlockCipher(Algorithm.AES, bytes(16))
    first = c.encrypt_ecb(b"\x01" * 32)
    for _ in range(3):
        assert c.encrypt_ecb(b"\x01" * 32) == first
    assert first[:16] == first[16:]


@pytest.mark.parametrize(
    ("algorithm", "key_len"),
    [(Algorithm.TDES, 16), (Algorithm.TDES, 24), (Algorithm.AES, 16), (Algorithm.AES, 24),
     (Algorithm.AES, 32), (Algorithm.SM4, 16)],
)
def test_cbc_matches_library_cbc(algorithm: Algorithm, key_len: int) -> None:
    key = bytes((7 * i + 3) & 0xFF for i in range(key_len))
    bs = algorithm.block_size
    iv = bytes(range(bs))
    data = bytes((5 * i) & 0xFF for i in range(bs * 5))
    if algorithm is Algorithm.TDES:
        prim = TripleDES(key + key[:8] if key_len == 16 else key)
    elif algorithm is Algorithm.AES:
        prim = algorithms.AES(key)
    else:
        prim = algorithms.SM4(key)
    enc = Cipher(prim, modes.CBC(iv)).encryptor()
    expected = enc.update(data) + enc.finalize()
    c = BlockCipher(algorithm, key)
    assert c.encrypt_cbc(data, iv) == expected
    assert c.decrypt_cbc(expected, iv) == data
    assert c.cbc_mac(data, iv) == expected[-bs:]
    assert c.encrypt_cbc(b"") == b"" and c.decrypt_cbc(b"") == b""


@pytest.mark.parametrize(
    ("algorithm", "bad_len"),
    [(Algorithm.TDES, 8), (Algorithm.TDES, 32), (Algorithm.AES, 8), (Algorithm.AES, 20),
     (Algorithm.SM4, 24), (Algorithm.SM4, 0)],
)
def test_bad_key_length(algorithm: Algorithm, bad_len: int) -> None:
    with pytest.raises(KeyLengthError, match=f"got {bad_len}"):
        BlockCipher(algorithm, bytes(bad_len))


def test_bad_data_length_and_iv() -> None:
    c = BlockCipher(Algorithm.TDES, IMK)
    for call in (c.encrypt_ecb, c.decrypt_ecb, c.encrypt_cbc, c.decrypt_cbc, c.cbc_mac):
        with pytest.raises(InvalidInputError, match="not a multiple"):
            call(bytes(7))
    with pytest.raises(InvalidInputError, match="iv"):
        c.encrypt_cbc(bytes(8), iv=bytes(16))
    with pytest.raises(InvalidInputError, match="algorithm"):
        BlockCipher("tdes", IMK)  # type: ignore[arg-type]


def test_repr_hides_key() -> None:
    assert "0123" not in repr(BlockCipher(Algorithm.TDES, IMK))
    assert repr(BlockCipher(Algorithm.TDES, IMK)) == "BlockCipher(TDES, 128-bit key)"


def test_parity() -> None:
    assert fix_parity(bytes.fromhex("0001FEFF80")).hex().upper() == "0101FEFE80"
    every = fix_parity(bytes(range(256)))
    assert all(bin(b).count("1") % 2 == 1 for b in every)
    assert has_odd_parity(every) and not has_odd_parity(b"\x00")
    assert fix_parity(every) == every  # idempotent
    assert all((a ^ b) in (0, 1) for a, b in zip(every, range(256), strict=True))


def test_xor() -> None:
    assert xor(b"\x0f\xf0", b"\xff\x00") == b"\xf0\xf0"
    with pytest.raises(InvalidInputError):
        xor(b"\x00", b"\x00\x00")


def test_padding_methods() -> None:
    assert pad_iso9797_m1(b"", 8) == bytes(8)
    assert pad_iso9797_m1(bytes(8), 8) == bytes(8)
    assert pad_iso9797_m1(b"\x01" * 9, 8) == b"\x01" * 9 + bytes(7)
    assert pad_iso9797_m2(b"", 8) == b"\x80" + bytes(7)
    assert pad_iso9797_m2(bytes(8), 8) == bytes(8) + b"\x80" + bytes(7)
    assert pad_iso9797_m2(b"\x01" * 15, 16) == b"\x01" * 15 + b"\x80"
    for n in range(0, 40):
        data = bytes([0x80]) * n
        assert unpad_iso9797_m2(pad_iso9797_m2(data, 16), 16) == data


@pytest.mark.parametrize(
    "bad",
    ["", "0000000000000000", "0102030405060708", "8000000000000000" "0000000000000000", "01020380"],
)
def test_unpad_rejects(bad: str) -> None:
    with pytest.raises(PaddingError):
        unpad_iso9797_m2(bytes.fromhex(bad), 8)


def test_padding_block_size_checked() -> None:
    with pytest.raises(InvalidInputError, match="block_size"):
        pad_iso9797_m2(b"", 12)
