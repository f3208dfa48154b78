"""MACs: CMAC (NIST SP 800-38B vectors), ISO/IEC 9797-1 algorithms 1 and 3."""

from __future__ import annotations

import pytest

from pipeline.crypto.ciphers import Algorithm, BlockCipher, xor
from pipeline.crypto.mac import RetailMac, cmac, iso9797_mac_alg1, iso9797_mac_alg3
from pipeline.errors import InvalidInputError, KeyLengthError
from tests.conftest import load_vectors

CMAC_VECTORS = [v for v in load_vectors("sym_ciphers") if v["name"].startswith("CMAC")]


@pytest.mark.parametrize("v", CMAC_VECTORS, ids=[v["name"] for v in CMAC_VECTORS])
def test_cmac_nist_sp800_38b(v: dict) -> None:
    algorithm = Algorithm(v["inputs"]["algorithm"])
    tag = cmac(algorithm, bytes.fromhex(v["inputs"]["key"]), bytes.fromhex(v["inputs"]["message"]))
    assert tag.hex().upper() == v["expected"]["tag"]


def reference_cmac(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    """An independent CMAC (SP 800-38B 6.1/6.2) over our ECB primitive, for SM4 and cross-checks."""
    c = BlockCipher(algorithm, key)
    bs = algorithm.block_size
    rb = 0x87 if bs == 16 else 0x1B

    def dbl(block: bytes) -> bytes:
        n = int.from_bytes(block, "big") << 1
        if n >> (8 * bs):
            n = (n ^ rb) & ((1 << (8 * bs)) - 1)
        return n.to_bytes(bs, "big")

    k1 = dbl(c.encrypt_ecb(bytes(bs)))
    k2 = dbl(k1)
    if data and len(data) % bs == 0:
        last = xor(data[-bs:], k1)
        head = data[:-bs]
    else:
        cut = len(data) - len(data) % bs
        head, tail = data[:cut], data[cut:]
        last = xor(tail + b"\x80" + bytes(bs - len(tail) - 1), k2)
    chain = c.cbc_mac(head) if head else bytes(bs)
    return c.encrypt_ecb(xor(chain, last))


@pytest.mark.parametrize("v", CMAC_VECTORS, ids=[v["name"] for v in CMAC_VECTORS])
def test_reference_cmac_oracle_is_itself_right(v: dict) -> None:
    algorithm = Algorithm(v["inputs"]["algorithm"])
    key, msg = bytes.fromhex(v["inputs"]["key"]), bytes.fromhex(v["inputs"]["message"])
    assert reference_cmac(algorithm, key, msg).hex().upper() == v["expected"]["tag"]


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 32, 33, 100])
def test_sm4_cmac_matches_reference(length: int) -> None:
    """No published SM4-CMAC vector: OpenSSL's CMAC vs the SP 800-38B construction above."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    data = bytes((13 * i + 1) & 0xFF for i in range(length))
    assert cmac(Algorithm.SM4, key, data) == reference_cmac(Algorithm.SM4, key, data)


def test_cmac_key_length_and_algorithm_checked() -> None:
    with pytest.raises(KeyLengthError):
        cmac(Algorithm.AES, bytes(15), b"")
    with pytest.raises(InvalidInputError, match="algorithm"):
        cmac("aes", bytes(16), b"")  # type: ignore[arg-type]


def test_retail_mac_pyemv_arqc_vector() -> None:
    v = next(v for v in load_vectors("emv_kd") if v["name"].startswith("ARQC"))
    key, data = bytes.fromhex(v["inputs"]["session_key"]), bytes.fromhex(v["inputs"]["ac_data"])
    assert iso9797_mac_alg3(key, data).hex().upper() == v["expected"]["arqc"]
    assert RetailMac(key).mac(data).hex().upper() == v["expected"]["arqc"]


def test_retail_mac_equals_alg1_when_halves_equal() -> None:
    """With K_L == K_R, MAC algorithm 3 collapses to single-DES CBC-MAC (algorithm 1)."""
    half = bytes.fromhex("0123456789ABCDEF")
    data = bytes(range(21))
    assert iso9797_mac_alg3(half * 2, data) == iso9797_mac_alg1(half * 2, data)


def test_mac_alg1_padding_1_on_aligned_data_adds_nothing() -> None:
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert iso9797_mac_alg1(key, bytes(8), padding=1).hex().upper() == "08D7B4FB629D0885"
    assert iso9797_mac_alg1(key, bytes(8), padding=2) != iso9797_mac_alg1(key, bytes(8), padding=1)
    aes = iso9797_mac_alg1(bytes(16), bytes(16), padding=1, algorithm=Algorithm.AES)
    assert aes == BlockCipher(Algorithm.AES, bytes(16)).encrypt_ecb(bytes(16))


def test_mac_errors() -> None:
    with pytest.raises(KeyLengthError):
        iso9797_mac_alg3(bytes(24), b"x")
    with pytest.raises(InvalidInputError, match="padding"):
        iso9797_mac_alg3(bytes(16), b"x", padding=3)
    assert "00" not in repr(RetailMac(bytes(16)))
