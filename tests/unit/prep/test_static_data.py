"""AFL and static data to be authenticated (EMV 4.x Book 3 10.2 and 10.3).

No published static-data vector exists (the public Visa test chain does not
publish its records).  ``pipeline.prep.static_data`` walks the AFL and hands
the records to ``pipeline.crypto.emv_certs.static_data_to_authenticate``,
the one implementation of the 10.3 rule, so comparing the two would compare
a function with itself.  Instead the property test checks both against
:func:`_reference_static_data`, a minimal reimplementation written here from
Book 3 alone (raw AFL bytes, hand-parsed BER lengths, no pipeline code), on
random records and AFLs in random order; known-answer tests pin the AFL walk
and the error messages that name the record.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto import emv_certs
from pipeline.crypto.tlv import encode_tlv
from pipeline.errors import PreparationError
from pipeline.prep.static_data import (
    AflEntry,
    build_afl,
    oda_plan,
    oda_record_data,
    oda_records,
    parse_afl,
    static_data_to_authenticate,
)


def test_afl_entries() -> None:
    afl = build_afl([(1, 1, False), (2, 1, True), (3, 1, False), (3, 2, False), (3, 3, False)])
    assert afl.hex().upper() == "080101001001010118010300"
    assert parse_afl(afl) == (AflEntry(1, 1, 1, 0), AflEntry(2, 1, 1, 1), AflEntry(3, 1, 3, 0))


def test_afl_oda_must_lead_an_entry() -> None:
    # byte 4 counts ODA records from the first record, so ODA after non-ODA splits the entry
    assert build_afl([(2, 1, True), (2, 2, True), (2, 3, False)]).hex() == "10010302"
    assert build_afl([(2, 1, False), (2, 2, True)]).hex() == "1001010010020201"
    assert build_afl([(2, 1, True), (2, 3, True)]).hex() == "1001010110030301"  # gap


@pytest.mark.parametrize(
    ("afl", "match"),
    [
        ("", "length"),
        ("080101", "length"),
        ("00010100", "SFI 0"),
        ("F8010100", "SFI 31"),
        ("08000100", "records"),
        ("08020100", "records"),
        ("08010102", "ODA"),
        ("09010100", "low bits"),
    ],
)
def test_invalid_afl(afl: str, match: str) -> None:
    with pytest.raises(PreparationError, match=match):
        parse_afl(bytes.fromhex(afl))


def test_oda_record_stripping_rule() -> None:
    record = encode_tlv(b"\x70", bytes.fromhex("5A0547617390015F340101"))
    assert oda_record_data(1, 1, record) == bytes.fromhex("5A0547617390015F340101")
    assert oda_record_data(10, 1, record) == bytes.fromhex("5A0547617390015F340101")
    assert oda_record_data(11, 1, record) == record
    with pytest.raises(PreparationError, match="tag-70"):
        oda_record_data(2, 1, bytes.fromhex("77035A0112"))
    with pytest.raises(PreparationError, match="after the tag-70"):
        oda_record_data(2, 1, record + bytes.fromhex("5A00"))
    with pytest.raises(PreparationError, match="malformed"):
        oda_record_data(2, 1, bytes.fromhex("70055A01"))


def test_static_data_order_and_aip() -> None:
    records = {
        (1, 1): encode_tlv(b"\x70", bytes.fromhex("5701AA")),
        (2, 1): encode_tlv(b"\x70", bytes.fromhex("5A0112")),
        (2, 2): encode_tlv(b"\x70", bytes.fromhex("5F340101")),
        (11, 1): bytes.fromhex("7001BB"),
    }
    afl = bytes.fromhex("080101001001020258010101")
    data = static_data_to_authenticate(afl, records, b"\x82", b"\x3c\x00")
    assert data.hex().upper() == "5A01125F3401017001BB3C00"
    assert static_data_to_authenticate(afl, records, None, b"\x3c\x00").hex().upper() == (
        "5A01125F3401017001BB"
    )
    with pytest.raises(PreparationError, match="9F4A"):
        static_data_to_authenticate(afl, records, b"\x9f\x36", b"\x3c\x00")
    with pytest.raises(PreparationError, match="82"):
        static_data_to_authenticate(afl, records, b"\x82", b"\x3c")
    with pytest.raises(PreparationError, match="0202"):
        static_data_to_authenticate(bytes.fromhex("10010202"), {(2, 1): records[(2, 1)]}, None, b"")


def test_afl_walk_known_answer() -> None:
    """AFL order, not SFI order; only each entry's first ``oda`` records; SFI 11..30 whole."""
    afl = bytes.fromhex("18010302 08010100 58020201 10010101")
    records = {
        (sfi, n): encode_tlv(b"\x70", bytes([sfi, n])) for sfi in (1, 2, 3, 11) for n in (1, 2, 3)
    }
    named = list(oda_records(afl, records))
    assert [r.label for r in named] == ["record 0301", "record 0302", "record 0B02", "record 0201"]
    assert [r.data for r in named] == [records[k] for k in [(3, 1), (3, 2), (11, 2), (2, 1)]]
    data = static_data_to_authenticate(afl, records, None, b"")
    assert data == bytes.fromhex("0301 0302 70020B02 0201")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            bytes.fromhex("77035A0112"),
            "record 0201: ODA record in SFI 1..10 is not a tag-70 template",
        ),
        (b"", "record 0201: ODA record in SFI 1..10 is not a tag-70 template"),
        (bytes.fromhex("70035A01125A00"), "record 0201: data after the tag-70 template"),
        (bytes.fromhex("70055A01"), r"record 0201: malformed tag-70 template \(tlv: offset 2"),
    ],
)
def test_static_data_errors_name_the_record(record: bytes, message: str) -> None:
    """The AFL-driven walk reports the offending record as ``record SSRR``, as PreparationError."""
    afl = bytes.fromhex("0801010010010101")
    records = {(1, 1): bytes.fromhex("7001AA"), (2, 1): record}
    with pytest.raises(PreparationError, match=f"^{message}") as info:
        static_data_to_authenticate(afl, records, b"\x82", b"\x3c\x00")
    assert info.value.field == "record 0201"
    with pytest.raises(PreparationError, match=f"^{message}"):
        oda_record_data(2, 1, record)


def test_first_fault_in_afl_order_is_reported() -> None:
    """A bad record before a missing one is reported first, and the other way round."""
    bad = {(1, 1): bytes.fromhex("7701AA")}
    with pytest.raises(PreparationError, match=r"^record 0101: ODA record in SFI 1..10 is not"):
        static_data_to_authenticate(bytes.fromhex("0801010110010101"), bad, None, b"")
    with pytest.raises(PreparationError, match=r"^afl: ODA record 0201 is not among"):
        static_data_to_authenticate(bytes.fromhex("1001010108010101"), bad, None, b"")


def test_static_data_tag_list_and_aip_messages() -> None:
    afl, records = bytes.fromhex("10010101"), {(2, 1): bytes.fromhex("7001AA")}
    with pytest.raises(PreparationError, match=r"^sda tag list: 9F4A holds 9F36; only tag 82"):
        static_data_to_authenticate(afl, records, b"\x9f\x36", b"\x3c\x00")
    with pytest.raises(PreparationError, match=r"^aip: 82 \(AIP\) must be 2 bytes, got 1"):
        static_data_to_authenticate(afl, records, b"\x82", b"\x3c")
    # an absent or empty 9F4A adds nothing, whatever the AIP
    assert static_data_to_authenticate(afl, records, b"", b"\x3c") == b"\xaa"


def _reference_static_data(
    afl: bytes, records: dict[tuple[int, int], bytes], sda_tag_list: bytes | None, aip: bytes
) -> bytes:
    """Book 3 10.3 written again from the spec, sharing no code with the pipeline."""
    out = b""
    for i in range(0, len(afl), 4):
        sfi, first, oda = afl[i] >> 3, afl[i + 1], afl[i + 3]
        for number in range(first, first + oda):
            record = records[(sfi, number)]
            if sfi > 10:
                out += record
                continue
            assert record[0] == 0x70
            length_bytes = record[1] - 0x80 if record[1] & 0x80 else 0
            start = 2 + length_bytes
            length = int.from_bytes(record[2:start]) if length_bytes else record[1]
            assert start + length == len(record)
            out += record[start:]
    if sda_tag_list == b"\x82":
        out += aip
    return out


template_values = st.binary(min_size=0, max_size=300).map(lambda v: encode_tlv(b"\x70", v))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 4), st.booleans(), template_values),
        min_size=1,
        max_size=8,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.booleans(),
    st.binary(min_size=2, max_size=2),
)
def test_matches_independent_reimplementation(
    rows: list[tuple[int, int, bool, bytes]], with_aip: bool, aip: bytes
) -> None:
    """Random records in random AFL order (build_afl keeps the order it is given)."""
    afl = build_afl((sfi, rec, oda) for sfi, rec, oda, _ in rows)
    records = {(sfi, rec): data for sfi, rec, _, data in rows}
    sda = b"\x82" if with_aip else None
    expected = _reference_static_data(afl, records, sda, aip)
    assert static_data_to_authenticate(afl, records, sda, aip) == expected
    # the crypto-level entry point gives the same bytes from the AFL-named records
    assert emv_certs.static_data_to_authenticate(oda_records(afl, records), sda, aip) == expected
    # and the AFL itself names exactly the ODA records, in the given order
    named = [(e.sfi, r) for e in parse_afl(afl) for r in e.records() if e.is_oda(r)]
    assert named == [(sfi, rec) for sfi, rec, oda, _ in rows if oda]
    assert [(r.sfi, r.number) for r in oda_records(afl, records)] == named
    # the preparer's plan (worked out once per product) gives the same bytes for the
    # records a preparer builds: one tag-70 template of at most 254 bytes each
    if all(len(data) <= 254 for data in records.values()):
        assert oda_plan(afl, records, sda, aip).static_data(records) == expected


def test_oda_plan_refuses_what_the_rule_refuses() -> None:
    """A product the plan cannot serve gets the per-card rule, with the same messages."""
    afl, records = bytes.fromhex("1001010108010101"), {(2, 1): bytes.fromhex("7001AA")}
    with pytest.raises(PreparationError, match=r"^afl: ODA record 0101 is not among the card"):
        oda_plan(afl, records, None, b"")
    with pytest.raises(PreparationError, match=r"^sda tag list: 9F4A holds 9F36; only tag 82"):
        oda_plan(afl[:4], records, b"\x9f\x36", b"\x3c\x00")
    with pytest.raises(PreparationError, match=r"^aip: 82 \(AIP\) must be 2 bytes, got 1"):
        oda_plan(afl[:4], records, b"\x82", b"\x3c")
    with pytest.raises(PreparationError, match=r"^afl: length 3"):
        oda_plan(afl[:3], records, None, b"")
