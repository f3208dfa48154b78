"""BER-TLV encode/decode (EMV 4.x Book 3, Annex B).

No published TLV test vector is used: the expected encodings are written out
by hand from Book 3 B1 (tags) and B2 (length forms 1 / 81 / 82), with the PAN
of the public Visa test card (known_answers.json).  The property test checks
the encoder against an independent reading of B2 on random tags and values.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.tlv import (
    Tlv,
    check_tag,
    decode_tlv,
    encode_length,
    encode_tlv,
    encode_tlvs,
    find_tlv,
)
from pipeline.errors import InvalidInputError


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (0x7F, "7F"),
        (0x80, "8180"),
        (0xFF, "81FF"),
        (0x100, "820100"),
        (0xFFFF, "82FFFF"),
    ],
)
def test_length_forms(length: int, encoded: str) -> None:
    assert encode_length(length) == bytes.fromhex(encoded)
    value = bytes(length)
    (item,) = decode_tlv(encode_tlv(b"\x93", value))
    assert item == Tlv(b"\x93", value)


def test_known_emv_objects() -> None:
    data = bytes.fromhex("5A0847617390010101195F24031231319F4701039F4B00")
    items = decode_tlv(data)
    assert [i.tag.hex().upper() for i in items] == ["5A", "5F24", "9F47", "9F4B"]
    assert items[0].value.hex().upper() == "4761739001010119"
    assert items[1].value.hex() == "123131"
    assert items[3].value == b""
    assert encode_tlvs(items) == data


def test_constructed_record_template() -> None:
    inner = encode_tlv(b"\x5a", bytes.fromhex("4761739001010119")) + encode_tlv(
        b"\x9f\x47", b"\x03"
    )
    record = encode_tlv(b"\x70", inner)
    (item,) = decode_tlv(record)
    assert item.constructed
    assert item.children() == decode_tlv(inner)
    found = find_tlv(record, b"\x9f\x47")
    assert found is not None and found.value == b"\x03"
    assert find_tlv(record, b"\x9f\x48") is None


def test_three_byte_tag() -> None:
    tag = bytes.fromhex("DF8101")
    assert decode_tlv(encode_tlv(tag, b"x")) == [Tlv(tag, b"x")]


def test_non_minimal_length_accepted() -> None:
    assert decode_tlv(bytes.fromhex("9F47810103")) == [Tlv(b"\x9f\x47", b"\x03")]


def test_primitive_has_no_children() -> None:
    with pytest.raises(InvalidInputError, match="primitive"):
        Tlv(b"\x5a", b"").children()


@pytest.mark.parametrize(
    ("hexdata", "offset"),
    [
        ("9F", 0),  # tag announces a second byte that is missing
        ("5A", 1),  # no length
        ("5A0512", 2),  # value runs past the end
        ("5A80", 1),  # indefinite length
        ("5A830000", 1),  # three-byte length form not used by EMV
        ("5A81", 1),  # truncated long length
        ("5A820100" + "00" * 10, 4),  # long form value truncated
        ("9F8181", 0),  # tag continuation runs off the end
    ],
)
def test_malformed_raises_with_offset(hexdata: str, offset: int) -> None:
    with pytest.raises(InvalidInputError, match=f"offset {offset}:"):
        decode_tlv(bytes.fromhex(hexdata))


@pytest.mark.parametrize("tag", ["", "9F", "5A5A", "9F8181818101"])
def test_bad_tags_refused(tag: str) -> None:
    with pytest.raises(InvalidInputError, match="tag"):
        check_tag(bytes.fromhex(tag))


def test_value_too_long_refused() -> None:
    with pytest.raises(InvalidInputError, match="length"):
        encode_tlv(b"\x93", bytes(0x10000))


def test_value_must_be_bytes() -> None:
    with pytest.raises(InvalidInputError, match="value"):
        encode_tlv(b"\x93", "text")  # type: ignore[arg-type]


_TAGS = st.one_of(
    st.integers(0, 255).filter(lambda b: b & 0x1F != 0x1F).map(lambda b: bytes([b])),
    st.tuples(st.integers(0, 255).map(lambda b: b | 0x1F), st.integers(0, 0x7F)).map(bytes),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_TAGS, st.binary(max_size=300)), max_size=8))
def test_roundtrip_and_independent_length_encoding(items: list[tuple[bytes, bytes]]) -> None:
    """Round trip, and the length bytes cross-checked against a direct reading of B2."""
    objects = [Tlv(t, v) for t, v in items]
    data = encode_tlvs(objects)
    assert decode_tlv(data) == objects
    for tag, value in items:
        encoded = encode_tlv(tag, value)
        n = len(value)
        expected = (
            bytes([n])
            if n < 128
            else (b"\x81" + bytes([n]) if n < 256 else b"\x82" + n.to_bytes(2, "big"))
        )
        assert encoded == tag + expected + value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_never_crashes_otherwise(data: bytes) -> None:
    """Arbitrary bytes either decode (re-encoding no longer) or raise InvalidInputError."""
    try:
        objects = decode_tlv(data)
    except InvalidInputError:
        return
    assert len(encode_tlvs(objects)) <= len(data)
