"""Record templates (tag 70, EMV Book 3 5.3 / CPS 4.2) and PreparedCard hygiene.

Expected encodings are written out by hand from Book 3 Annex B (BER-TLV);
no published vector is needed for a concatenation rule.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.tlv import encode_length, encode_tlv
from pipeline.errors import PreparationError
from pipeline.prep.card import _LENGTHS, MAX_RECORD_LENGTH, PreparedCard, record_template
from pipeline.profiles.model import RecordTemplate
from pipeline.records.dgi import Dgi


def test_template_in_profile_order_and_empty_tags_left_out() -> None:
    rec = RecordTemplate(3, 1, (b"\x8f", b"\x92", b"\x9f\x32"))
    values = {b"\x8f": b"\x99", b"\x92": b"", b"\x9f\x32": b"\x03"}
    assert record_template(rec, values).hex().upper() == "70078F01999F320103"
    assert rec.dgi == 0x0301


def test_long_template_uses_81_length() -> None:
    rec = RecordTemplate(3, 2, (b"\x90",))
    record = record_template(rec, {b"\x90": bytes(248)})
    assert record[:6].hex().upper() == "7081FB9081F8" and len(record) == MAX_RECORD_LENGTH


def test_record_too_long_is_a_preparation_error() -> None:
    rec = RecordTemplate(3, 2, (b"\x90",))
    with pytest.raises(PreparationError, match="record 0302: 255 bytes"):
        record_template(rec, {b"\x90": bytes(249)})


def test_prepared_card_repr_shows_no_values() -> None:
    card = PreparedCard(
        line_no=7,
        product="demo-visa-rsa",
        masked_pan="476173******0119",
        pan_token="00" * 16,
        dgis=(Dgi(0x0101, bytes.fromhex("70065A044761739F")), Dgi(0x8000, b"\x11" * 16, True)),
    )
    text = repr(card)
    assert "4761739F" not in text.upper() and "1111" not in text
    assert "0101,8000" in text
    assert card.dgi(0x8000) is not None and card.dgi(0x9000) is None
    assert "4761739F" not in repr(card.dgis[0]).upper()


# --- a template with constants already encoded (a CardPreparer's per-product plan) ----------

#: card tags (5A, 57, 5F24, 9F46: encoded per card) and product constants (82, 8C, 92, 9F07)
_TAGS = [b"\x5a", b"\x57", b"\x5f\x24", b"\x9f\x46", b"\x82", b"\x8c", b"\x92", b"\x9f\x07"]


def _tlv(tag: bytes, value: bytes) -> bytes:
    """BER-TLV by hand (Book 3 B2): one length byte below 80, else 81 xx."""
    length = bytes([len(value)]) if len(value) < 0x80 else bytes([0x81, len(value)])
    return tag + length + value


@given(
    tags=st.lists(st.sampled_from(_TAGS), min_size=1, max_size=8, unique=True),
    values=st.dictionaries(st.sampled_from(_TAGS), st.binary(max_size=20)),
    encoded=st.dictionaries(
        st.sampled_from(_TAGS), st.one_of(st.just(b""), st.binary(min_size=3, max_size=12))
    ),
)
@settings(max_examples=300, deadline=None)
def test_pre_encoded_and_card_tags_keep_template_order(
    tags: list[bytes], values: dict[bytes, bytes], encoded: dict[bytes, bytes]
) -> None:
    """Runs of pre-encoded TLVs joined once per product must land exactly where
    the tag-by-tag encoding puts them, around the card's own data objects."""
    rec = RecordTemplate(2, 1, tuple(tags))
    body = b"".join(
        encoded[t] if t in encoded else (_tlv(t, values[t]) if values.get(t) else b"") for t in tags
    )
    assert record_template(rec, values, encoded) == _tlv(b"\x70", body)


def test_the_length_table_is_encode_length() -> None:
    """_fill_record takes lengths 0..255 from a table (issue 7): the table is encode_length."""
    assert [_LENGTHS[n] for n in range(256)] == [encode_length(n) for n in range(256)]


@pytest.mark.parametrize("size", [1, 127, 128, 200, 245])
def test_a_card_tag_of_any_one_byte_length_encodes_as_encode_tlv(size: int) -> None:
    value = bytes([0x42]) * size
    rec = RecordTemplate(2, 1, (b"\x9f\x46",))
    tlv = encode_tlv(b"\x9f\x46", value)
    assert record_template(rec, {b"\x9f\x46": value}) == b"\x70" + encode_length(len(tlv)) + tlv


def test_a_card_tag_longer_than_255_bytes_still_makes_a_record_too_long() -> None:
    rec = RecordTemplate(2, 1, (b"\x9f\x46",))
    with pytest.raises(PreparationError, match="record 0201: 307 bytes"):
        record_template(rec, {b"\x9f\x46": bytes(298)})
