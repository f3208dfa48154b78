"""TR-31 / X9.143 key blocks (pipeline.crypto.tr31): vectors, header, negatives."""

from __future__ import annotations

import warnings

import psec
import pytest

from pipeline.crypto.kcv import kcv
from pipeline.crypto.tr31 import Header, key_strength_bits, unwrap, wrap
from pipeline.errors import (
    InvalidInputError,
    KeyBlockError,
    KeyBlockHeaderError,
    KeyBlockMacError,
    KeyBlockStrengthError,
    KeyLengthError,
)
from tests.conftest import load_vectors

VECTORS = load_vectors("tr31")
KBPK_T = bytes.fromhex("DD7515F2BFC17F85CE48F3CA25CB21F6")
KBPK_A = bytes.fromhex("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6")
BLOCK_B = "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E"
BLOCK_D = next(v for v in VECTORS if v["name"].startswith("TR-31 version D"))["inputs"]["key_block"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_unwrap_vectors(v: dict) -> None:
    block = v["inputs"]["key_block"]
    header, key = unwrap(bytes.fromhex(v["inputs"]["kbpk"]), block)
    assert key.hex().upper() == v["expected"]["key"]
    assert header.version == block[0]
    assert header.render(len(block)) == block[: len(header.render(len(block)))]
    if "kcv" in v["expected"]:
        method = "aes-cmac" if header.algorithm == "A" else "tdes"
        assert kcv(key, method).hex().upper() == v["expected"]["kcv"]


def test_header_fields_and_optional_blocks() -> None:
    v = next(v for v in VECTORS if "A.7.3.1" in v["name"])
    h = Header.parse(v["inputs"]["key_block"])
    assert (h.version, h.key_usage, h.algorithm, h.mode_of_use) == ("C", "B0", "T", "X")
    assert (h.key_version, h.exportability) == ("12", "S")
    assert h.blocks == (("KS", "00604B120F9292800000"),)
    assert h.block("KS") == "00604B120F9292800000" and h.kc is None and h.kp is None


def test_header_kc_kp_and_extended_length_round_trip() -> None:
    long_value = "X" * 300
    h = Header("D", "E0", "A", "X", "01", "N", (("KC", "0108793E"), ("KP", "01ABCDEF"),
                                             ("LB", long_value)))
    text = h.render(1234)
    assert Header.parse(text) == h
    assert "LB00040136X" in text  # extended: 00, length-of-length 04, 0x0136 = 310
    assert h.kc == "0108793E" and h.kp == "01ABCDEF"


def test_wrap_adds_pb_block_and_round_trips() -> None:
    key = bytes(range(16))
    block = wrap(KBPK_A, Header("D", "E0", "A", "X", blocks=(("KC", "0108793E"),)), key)
    header, out = unwrap(KBPK_A, block)
    assert out == key
    assert [b[0] for b in header.blocks] == ["KC", "PB"]
    assert len(header.render(0)) % 16 == 0
    # Length masking: an AES-128 key is padded like an AES-256 key.
    assert len(block) == len(header.render(0)) + 2 * (2 + 32 + 14) + 32


def test_wrap_is_randomised() -> None:
    a = wrap(KBPK_T, "B0000P0TE00N0000", bytes(16))
    b = wrap(KBPK_T, "B0000P0TE00N0000", bytes(16))
    assert a != b and a[:16] == b[:16]


def test_wrap_accepts_a_whole_key_block_as_header() -> None:
    block = wrap(KBPK_T, BLOCK_B, bytes(16))
    assert unwrap(KBPK_T, block)[0] == Header.parse(BLOCK_B)


def _flip(block: str, pos: int) -> str:
    c = block[pos]
    repl = "0" if c != "0" else "1"
    return block[:pos] + repl + block[pos + 1 :]


@pytest.mark.parametrize("pos", [5, 7, 9, 20, 40, -20, -1])
def test_tampered_version_b_fails_mac(pos: int) -> None:
    with pytest.raises(KeyBlockMacError, match="mac"):
        unwrap(KBPK_T, _flip(BLOCK_B, pos if pos >= 0 else len(BLOCK_B) + pos))


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_tampered_payload_fails_mac_every_version(v: dict) -> None:
    block = v["inputs"]["key_block"]
    with pytest.raises(KeyBlockMacError):
        unwrap(bytes.fromhex(v["inputs"]["kbpk"]), _flip(block, len(block) - 40))


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_wrong_kbpk_fails_mac(v: dict) -> None:
    kbpk = bytearray(bytes.fromhex(v["inputs"]["kbpk"]))
    kbpk[3] ^= 0x10
    with pytest.raises(KeyBlockMacError) as err:
        unwrap(bytes(kbpk), v["inputs"]["key_block"])
    assert v["inputs"]["kbpk"][:8] not in str(err.value).upper()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: "E" + b[1:], "version"),
        (lambda b: b[:1] + "00X0" + b[5:], "length"),
        (lambda b: b[:1] + "0081" + b[5:], "length"),
        (lambda b: b[:11] + "Q" + b[12:], "exportability"),
        (lambda b: b[:7] + "t" + b[8:], "algorithm"),
        (lambda b: b[:12] + "0A" + b[14:], "optional block count"),
        (lambda b: b[:14] + "01" + b[16:], "reserved"),
        (lambda b: b[:10], "header"),
        (lambda b: b[:12] + "01" + b[14:], "optional block"),
    ],
)
def test_malformed_header(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyBlockHeaderError) as err:
        unwrap(KBPK_T, mutate(BLOCK_B))
    assert err.value.field.startswith(field)


def test_header_error_names_value() -> None:
    with pytest.raises(KeyBlockHeaderError, match="exportability: must be one of E, N, S, got 'Q'"):
        Header("B", "P0", "T", "E", "00", "Q")


def test_malformed_payload() -> None:
    with pytest.raises(KeyBlockError, match="hex"):
        unwrap(KBPK_T, BLOCK_B[:-1] + "g")
    short = "B0032P0TE00E0000" + "0123456789ABCDEF"
    with pytest.raises(KeyBlockError, match="payload"):
        unwrap(KBPK_T, short)


def test_kbpk_length_for_version() -> None:
    with pytest.raises(KeyLengthError, match="kbpk"):
        unwrap(bytes(32), BLOCK_B)
    with pytest.raises(KeyLengthError, match="kbpk"):
        unwrap(bytes(8), BLOCK_D)
    with pytest.raises(KeyLengthError, match="kbpk"):
        wrap(bytes(20), "D0000P0AE00N0000", bytes(16))


def test_weak_kbpk_refused_on_wrap() -> None:
    with pytest.raises(KeyBlockStrengthError, match="80-bit KBPK") as err:
        wrap(KBPK_T, "B0000D0AB00N0000", bytes(32))
    assert err.value.field == "kbpk"
    with pytest.raises(KeyBlockStrengthError, match="128-bit KBPK"):
        wrap(KBPK_A[:16], "D0000D0AB00N0000", bytes(32))
    with pytest.raises(KeyBlockStrengthError):
        wrap(KBPK_T, "B0000K0TB00N0000", bytes(24))  # 2-key KBPK, 3-key key


def test_weak_kbpk_refused_on_unwrap() -> None:
    """A block made by psec (which does not enforce strength) is refused on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = psec.tr31.wrap(KBPK_A[:16], "D0000D0AB00N0000", bytes(range(32)))
    with pytest.raises(KeyBlockStrengthError, match="256-bit key"):
        unwrap(KBPK_A[:16], block)


def test_wrap_rejects_unsupported_version_and_bad_keys() -> None:
    with pytest.raises(KeyBlockHeaderError, match="version"):
        wrap(KBPK_T, "A0000P0TE00N0000", bytes(16))
    with pytest.raises(KeyLengthError, match="3DES"):
        wrap(KBPK_T, "B0000P0TE00N0000", bytes(12))
    with pytest.raises(KeyLengthError, match="AES"):
        wrap(KBPK_A, "D0000P0AE00N0000", bytes(12))
    with pytest.raises(InvalidInputError, match="key"):
        wrap(KBPK_A, "D0000P0AE00N0000", b"")


def test_strength_table() -> None:
    assert key_strength_bits("T", 16) == 80
    assert key_strength_bits("T", 24) == 112
    assert key_strength_bits("A", 24) == 192
    assert key_strength_bits("H", 32) is None


def test_duplicate_optional_block_refused() -> None:
    with pytest.raises(KeyBlockHeaderError, match="more than once, got 'KS'"):
        Header.parse("B0000P0TE00N0200KS0600KS0600")
