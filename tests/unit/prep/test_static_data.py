"""AFL and static data to be authenticated (EMV 4.x Book 3 10.2 and 10.3).

No published static-data vector exists (the public Visa test chain does not
publish its records); the property test cross-checks this module, which
works from the AFL, against the independent
``pipeline.crypto.emv_certs.static_data_to_authenticate`` (RSA engineer),
which takes the ODA records directly, on random records and AFLs.
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
    oda_record_data,
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


template_values = st.binary(min_size=0, max_size=40).map(lambda v: encode_tlv(b"\x70", v))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 4), st.booleans(), template_values),
        min_size=1,
        max_size=8,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.booleans(),
)
def test_matches_independent_implementation(
    rows: list[tuple[int, int, bool, bytes]], with_aip: bool
) -> None:
    rows.sort(key=lambda r: (r[0], r[1]))
    afl = build_afl((sfi, rec, oda) for sfi, rec, oda, _ in rows)
    records = {(sfi, rec): data for sfi, rec, _, data in rows}
    oda_records = [(sfi, data) for sfi, _, oda, data in rows if oda]
    sda = b"\x82" if with_aip else None
    mine = static_data_to_authenticate(afl, records, sda, b"\x39\x00")
    theirs = emv_certs.static_data_to_authenticate(
        oda_records, sda or b"", b"\x39\x00" if with_aip else b""
    )
    assert mine == theirs
    # and the AFL itself names exactly the ODA records
    named = [(e.sfi, r) for e in parse_afl(afl) for r in e.records() if e.is_oda(r)]
    assert named == [(sfi, rec) for sfi, rec, oda, _ in rows if oda]
