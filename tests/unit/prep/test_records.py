"""Record templates (tag 70, EMV Book 3 5.3 / CPS 4.2) and PreparedCard hygiene.

Expected encodings are written out by hand from Book 3 Annex B (BER-TLV);
no published vector is needed for a concatenation rule.
"""

from __future__ import annotations

import pytest

from pipeline.errors import PreparationError
from pipeline.prep.card import MAX_RECORD_LENGTH, PreparedCard, record_template
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
