"""Keyed-once contexts for the per-card hot path: KeyedCmac, CardKeyDiversifier, KCV tables.

Each is checked against the one-shot function it stands in for and against the
published vectors (NIST SP 800-38B / RFC 4493, GlobalPlatformPro), several
messages or cards in a row through one object: a context that kept state from
one message to the next would give the wrong tag from the second on.
"""

from __future__ import annotations

import pytest

from pipeline.crypto.ciphers import Algorithm, BlockCipher, primitive, primitive_for
from pipeline.crypto.gp import CardKeyDiversifier, diversify_card_keys
from pipeline.crypto.kcv import KcvMethod, kcv
from pipeline.crypto.mac import KeyedCmac, cmac
from pipeline.errors import InvalidInputError, KeyLengthError
from tests.conftest import load_vectors
from tests.unit.crypto.test_sym_mac import reference_cmac

CMAC_VECTORS = [v for v in load_vectors("sym_ciphers") if v["name"].startswith("CMAC")]
GP_VECTORS = load_vectors("gp_diversification")


def _by_key() -> dict[tuple[str, str], list[tuple[bytes, str]]]:
    """The CMAC vectors grouped per (algorithm, key): (message, expected tag) in file order."""
    groups: dict[tuple[str, str], list[tuple[bytes, str]]] = {}
    for v in CMAC_VECTORS:
        key = (v["inputs"]["algorithm"], v["inputs"]["key"])
        groups.setdefault(key, []).append(
            (bytes.fromhex(v["inputs"]["message"]), v["expected"]["tag"])
        )
    return groups


GROUPS = _by_key()
RFC4493_KEY = ("aes", "2B7E151628AED2A6ABF7158809CF4F3C")


def test_the_rfc4493_key_has_its_four_messages() -> None:
    assert [len(m) for m, _ in GROUPS[RFC4493_KEY]] == [0, 16, 40, 64]


@pytest.mark.parametrize("group", list(GROUPS), ids=[f"{a}-{k[:8]}" for a, k in GROUPS])
def test_keyed_cmac_gives_every_vector_of_its_key_in_a_row(group: tuple[str, str]) -> None:
    """RFC 4493 4 / SP 800-38B D.1, D.3: the messages of one key through one object, twice,
    forwards then backwards (a copy per message: no state carried between them)."""
    algorithm, key = Algorithm(group[0]), bytes.fromhex(group[1])
    vectors = GROUPS[group]
    m = KeyedCmac(algorithm, key)
    for msg, tag in vectors + vectors[::-1]:
        assert m.mac(msg).hex().upper() == tag


def test_keyed_cmac_objects_are_per_key() -> None:
    a, b = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"), bytes(16)
    ma, mb = KeyedCmac(Algorithm.AES, a), KeyedCmac(Algorithm.AES, b)
    for data in (b"", b"x" * 17, b"", b"y" * 64):
        assert ma.mac(data) == cmac(Algorithm.AES, a, data)
        assert mb.mac(data) == cmac(Algorithm.AES, b, data)
    assert ma.mac(b"") != mb.mac(b"")


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_keyed_cmac_equals_the_reference_for_every_algorithm(algorithm: Algorithm) -> None:
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    m = KeyedCmac(algorithm, key)
    for length in (0, 1, 8, 15, 16, 17, 33, 100, 0):
        data = bytes((7 * i + length) & 0xFF for i in range(length))
        assert m.mac(data) == reference_cmac(algorithm, key, data) == cmac(algorithm, key, data)


def test_keyed_cmac_checks_like_cmac_and_hides_the_key() -> None:
    with pytest.raises(KeyLengthError):
        KeyedCmac(Algorithm.AES, bytes(15))
    with pytest.raises(InvalidInputError, match="algorithm"):
        KeyedCmac("aes", bytes(16))  # type: ignore[arg-type]
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert key.hex() not in repr(KeyedCmac(Algorithm.AES, key)).lower()


@pytest.mark.parametrize("v", GP_VECTORS, ids=[v["name"] for v in GP_VECTORS])
def test_card_key_diversifier_gives_the_vectors_and_the_function(v: dict) -> None:
    kmc, kdd = bytes.fromhex(v["inputs"]["kmc"]), bytes.fromhex(v["inputs"]["kdd"])
    d = CardKeyDiversifier(kmc, v["method"])
    other_kdd = bytes(range(10, 20))
    for card in (kdd, other_kdd, kdd):  # one object, several cards in a row
        keys = d.diversify(card)
        assert keys == diversify_card_keys(kmc, card, v["method"])
    keys = d.diversify(kdd)
    for name, key in zip(("enc", "mac", "dek"), keys, strict=True):
        if f"kcv_{name}" in v["expected"]:
            assert kcv(key, v["kcv_method"]).hex().upper() == v["expected"][f"kcv_{name}"]
        if f"k_{name}" in v["expected"]:
            assert key.hex().upper() == v["expected"][f"k_{name}"]


def test_card_key_diversifier_is_per_method_and_checks_its_inputs() -> None:
    kmc, kdd = bytes.fromhex("404142434445464748494A4B4C4D4E4F"), bytes(range(10))
    emv, visa2 = CardKeyDiversifier(kmc, "emv"), CardKeyDiversifier(kmc, "visa2")
    assert emv.diversify(kdd) != visa2.diversify(kdd)
    assert visa2.diversify(kdd) == diversify_card_keys(kmc, kdd, "visa2")
    with pytest.raises(InvalidInputError, match="kdd"):
        emv.diversify(bytes(8))
    with pytest.raises(InvalidInputError, match="method"):
        CardKeyDiversifier(kmc, "visa")
    with pytest.raises(KeyLengthError, match="kmc"):
        CardKeyDiversifier(bytes(24), "emv")
    with pytest.raises(KeyLengthError, match="kmc"):
        CardKeyDiversifier(bytes(8), "kdf3")
    assert kmc.hex() not in repr(emv).lower()


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_primitive_for_is_primitive_bound(algorithm: Algorithm) -> None:
    make = primitive_for(algorithm)
    for size in (16, 24, 32):
        key = bytes(range(size))
        try:
            expected = primitive(algorithm, key)
        except KeyLengthError:
            with pytest.raises(KeyLengthError):
                make(key)
            continue
        got = make(bytearray(key))  # a bytearray is checked and copied, as by primitive
        assert (type(got), got.key_size) == (type(expected), expected.key_size)
    with pytest.raises(InvalidInputError, match="expected bytes"):
        make("00" * 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", [m for m in KcvMethod if m is not KcvMethod.AES_CMAC])
def test_kcv_method_as_enum_or_string_and_several_keys_in_a_row(method: KcvMethod) -> None:
    algorithm = {"tdes": Algorithm.TDES, "aes-gp": Algorithm.AES, "sm4": Algorithm.SM4}[method]
    block = b"\x01" * 16 if method is KcvMethod.AES_GP else bytes(algorithm.block_size)
    for i in range(3):
        key = bytes((i * 31 + j) & 0xFF for j in range(16))
        expected = BlockCipher(algorithm, key).encrypt_ecb(block)[:3]
        assert kcv(key, method) == kcv(key, method.value) == expected


@pytest.mark.parametrize("method", ["emv", "visa2"])
def test_emv_cps_blocks_by_their_formula_even_for_kdd_bytes_like_a_format(method: str) -> None:
    """EMV CPS v1.1 3.2.3: K = 3DES-ECB(KMC)[six || F0 || kk || six || 0F || kk]; the KDD
    here holds '%' and 's' bytes (the diversifier fills a bytes template with them)."""
    kmc = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    kdd = b"%s%%%s%d%b%%"[:10]
    six = kdd[4:10] if method == "emv" else kdd[0:2] + kdd[4:8]
    tdes = BlockCipher(Algorithm.TDES, kmc)
    expected = tuple(
        tdes.encrypt_ecb(six + bytes([0xF0, kk]) + six + bytes([0x0F, kk])) for kk in (1, 2, 3)
    )
    assert CardKeyDiversifier(kmc, method).diversify(kdd) == expected
    assert diversify_card_keys(kmc, kdd, method) == expected
