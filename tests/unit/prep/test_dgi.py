"""DGI encoding (EMV CPS v1.1 4.2) and STORE DATA commands.

Known answer: the STORE DATA APDU of tests/vectors/store_data.json (a
published example carrying an encrypted DGI 8000 as the 8th command, header
80E2600733).  No published vector exists for the FF-extended length form; it
is checked against CPS 4.2's wording by hand and by an independent decoder on
random inputs (property test).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidInputError
from pipeline.records.dgi import (
    Dgi,
    decode_dgis,
    dgi_length,
    encode_dgi,
    encode_dgis,
    format_dgi,
    parse_dgi_id,
    record_dgi,
    store_data_apdus,
    store_data_p1,
)
from tests.conftest import load_vectors


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0, "00"), (1, "01"), (0x7F, "7F"), (0x80, "80"), (0xFE, "FE"), (0xFF, "FF00FF"),
     (0x100, "FF0100"), (300, "FF012C"), (0xFFFF, "FFFFFF")],
)  # fmt: skip
def test_length_forms(length: int, encoded: str) -> None:
    assert dgi_length(length) == bytes.fromhex(encoded)
    dgi = encode_dgi(0x0101, bytes(length))
    assert dgi[:2] == b"\x01\x01"
    assert dgi[2 : 2 + len(encoded) // 2] == bytes.fromhex(encoded)
    assert decode_dgis(dgi) == [Dgi(0x0101, bytes(length))]


@pytest.mark.parametrize("length", [-1, 0x10000, True])
def test_length_out_of_range(length: int) -> None:
    with pytest.raises(InvalidInputError, match="length"):
        dgi_length(length)


def test_value_too_long_for_a_dgi() -> None:
    with pytest.raises(InvalidInputError, match="dgi 8000"):
        Dgi(0x8000, bytes(0x10000))


@pytest.mark.parametrize("dgi_id", [-1, 0x10000, "8000", True])
def test_bad_identifiers(dgi_id: object) -> None:
    with pytest.raises(InvalidInputError, match="dgi"):
        Dgi(dgi_id, b"")  # type: ignore[arg-type]


def test_identifier_helpers() -> None:
    assert record_dgi(1, 1) == 0x0101
    assert record_dgi(30, 16) == 0x1E10
    assert format_dgi(0x8201) == "8201"
    assert parse_dgi_id("9F01") == 0x9F01
    for bad in ("800", "80000", "GGGG", None):
        with pytest.raises(InvalidInputError):
            parse_dgi_id(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="sfi"):
        record_dgi(31, 1)
    with pytest.raises(InvalidInputError, match="record"):
        record_dgi(1, 0)


def test_repr_hides_encrypted_values() -> None:
    text = repr(Dgi(0x8000, bytes.fromhex("0123456789ABCDEF"), encrypted=True))
    assert "0123" not in text
    assert "encrypted" in text


@pytest.mark.parametrize(
    "data",
    ["80", "8000", "800005AABB", "8000FF01", "8000FF0100" + "00" * 10],
)
def test_decode_truncated(data: str) -> None:
    with pytest.raises(InvalidInputError, match="offset 0"):
        decode_dgis(bytes.fromhex(data))


def test_decode_marks_named_dgis_encrypted() -> None:
    data = encode_dgis([Dgi(0x8000, bytes(16)), Dgi(0x9000, b"\x01\x02\x03")])
    decoded = decode_dgis(data, encrypted={0x8000})
    assert [(d.id, d.encrypted) for d in decoded] == [(0x8000, True), (0x9000, False)]


def _independent_decode(data: bytes) -> list[tuple[int, bytes]]:
    """CPS 4.2 read literally: id (2), length 00..FE or FF + 2 bytes, value."""
    out, i = [], 0
    while i < len(data):
        ident = data[i] * 256 + data[i + 1]
        if data[i + 2] == 0xFF:
            n, i = data[i + 3] * 256 + data[i + 4], i + 5
        else:
            n, i = data[i + 2], i + 3
        out.append((ident, data[i : i + n]))
        i += n
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=600), st.booleans()), max_size=6)
)
def test_roundtrip_against_independent_decoder(items: list[tuple[int, bytes, bool]]) -> None:
    dgis = [Dgi(i, v, e) for i, v, e in items]
    data = encode_dgis(dgis)
    assert _independent_decode(data) == [(i, v) for i, v, _ in items]
    encrypted = {i for i, _, e in items if e}
    assert [(d.id, d.value) for d in decode_dgis(data, encrypted)] == [(i, v) for i, v, _ in items]


# --- STORE DATA ------------------------------------------------------------------


def test_store_data_known_example() -> None:
    vector = load_vectors("store_data")[0]
    data = bytes.fromhex(vector["inputs"]["data"])
    (dgi,) = decode_dgis(data, encrypted={0x8000})
    clear = [Dgi(0x0101 + n, bytes([n])) for n in range(7)]
    apdus = store_data_apdus([*clear, dgi, Dgi(0x9000, b"\x01\x02\x03")])
    assert apdus[7] == bytes.fromhex(vector["inputs"]["apdu_header"]) + data
    assert apdus[7][2] == int(vector["expected"]["p1"][:2], 16)
    assert apdus[7][3] == int(vector["expected"]["p2"][:2], 16)


def test_p1_bits() -> None:
    assert store_data_p1(last=False, encrypted=False) == 0x00
    assert store_data_p1(last=True, encrypted=False) == 0x80
    assert store_data_p1(last=False, encrypted=True) == 0x60
    assert store_data_p1(last=True, encrypted=True) == 0xE0


def test_sequence_last_flag_and_encryption_bits() -> None:
    dgis = [Dgi(0x0101, b"\x70\x00"), Dgi(0x8000, bytes(48), True), Dgi(0x9000, bytes(9))]
    apdus = store_data_apdus(dgis)
    assert [a[:4].hex().upper() for a in apdus] == ["80E20000", "80E26001", "80E28002"]
    assert all(a[4] == len(a) - 5 for a in apdus)
    last_encrypted = store_data_apdus([Dgi(0x8000, bytes(16), True)])
    assert last_encrypted[0][:4].hex().upper() == "80E2E000"


def test_long_dgi_continues_in_next_commands() -> None:
    dgi = Dgi(0x8201, bytes(range(256)) * 2, True)  # 512 bytes -> 517 encoded
    apdus = store_data_apdus([dgi])
    assert [a[4] for a in apdus] == [255, 255, 7]
    assert [a[2] for a in apdus] == [0x60, 0x60, 0xE0]
    assert b"".join(a[5:] for a in apdus) == dgi.encode()


def test_packing_groups_only_same_encryption_flag() -> None:
    dgis = [Dgi(0x0101, bytes(10)), Dgi(0x0102, bytes(10)), Dgi(0x8000, bytes(16), True),
            Dgi(0x8001, bytes(16), True), Dgi(0x9000, bytes(3))]  # fmt: skip
    apdus = store_data_apdus(dgis, pack=True)
    assert [a[2] for a in apdus] == [0x00, 0x60, 0x80]
    assert decode_dgis(apdus[0][5:]) == dgis[:2]
    assert [d.id for d in decode_dgis(apdus[1][5:])] == [0x8000, 0x8001]


def test_store_data_errors() -> None:
    with pytest.raises(InvalidInputError, match="dgis"):
        store_data_apdus([])
    with pytest.raises(InvalidInputError, match="max_data"):
        store_data_apdus([Dgi(0x9000, b"")], max_data=256)
    with pytest.raises(InvalidInputError, match="P2"):
        store_data_apdus([Dgi(0x9000, b"")] * 257)
    assert len(store_data_apdus([Dgi(0x9000, b"")] * 256)) == 256


class _Bytes(bytes):
    pass


def test_the_fast_path_accepts_and_refuses_as_the_checks() -> None:
    """Dgi.__post_init__'s one-test path (int id, bytes value) leaves every other case
    to the checks: a bytes subclass is accepted, a bool id, a str value or a value one
    byte too long are refused as before."""
    assert Dgi(0xFFFF, bytes(0xFFFF)).id == 0xFFFF
    assert Dgi(0, _Bytes(b"x")).value == b"x"
    with pytest.raises(InvalidInputError, match="identifier"):
        Dgi(False, b"")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="must be bytes"):
        Dgi(0x8000, "00")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="must be bytes"):
        Dgi(0x8000, bytearray(2))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="exceeds"):
        Dgi(0x8000, _Bytes(0x10000))
