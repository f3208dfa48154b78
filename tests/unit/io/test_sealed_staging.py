"""Sealed files and staged records (pipeline.io.sealed, pipeline.io.staging).

No published vectors: round trips are checked on random records (hypothesis)
and every tampering case must raise the named VerificationError.  The sealed
bytes must never contain a staged PAN in clear.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.audit.trail import canonical
from pipeline.errors import VerificationError
from pipeline.io.sealed import MAGIC, open_sealed, read_sealed_header, seal
from pipeline.io.staging import read_segment, records_from_ipc, records_to_ipc, write_segment
from pipeline.keys.model import KeyRef
from pipeline.records.validate import CardRecord

digits = st.text("0123456789", min_size=13, max_size=19)
short = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
records = st.builds(
    CardRecord,
    line_no=st.integers(2, 10**7),
    product=st.sampled_from(["demo-visa-rsa", "demo-pboc-sm2"]),
    pan=digits,
    psn=st.none() | st.text("0123456789", min_size=2, max_size=2),
    expiry=st.just("2812"),
    effective=st.none() | st.just("2401"),
    service_code=st.just("201"),
    name=short,
    discretionary=st.text("0123456789", max_size=8),
    kdd=st.none() | st.binary(min_size=10, max_size=10),
    secrets=st.dictionaries(st.sampled_from(["cvv", "icvv", "pin_block"]),
                            st.binary(min_size=8, max_size=16)),
    extra=st.dictionaries(st.sampled_from(["customer_ref"]), short),
)


def _same(a: CardRecord, b: CardRecord) -> bool:
    fields = ("line_no", "product", "pan", "psn", "expiry", "effective", "service_code", "name",
              "discretionary", "kdd")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and dict(a.secrets) == dict(
        b.secrets) and dict(a.extra) == dict(b.extra)


@given(st.lists(records, max_size=20))
@settings(max_examples=100, deadline=None)
def test_records_round_trip_through_arrow_ipc(recs: list[CardRecord]) -> None:
    back = records_from_ipc(records_to_ipc(recs))
    assert len(back) == len(recs)
    assert all(_same(a, b) for a, b in zip(recs, back, strict=True))


def test_seal_round_trip_and_clear_header(store, data_key) -> None:
    blob = seal(store, data_key, "staging", {"batch_id": "00ab", "segment": 1}, b"payload")
    header, payload = open_sealed(store, blob, "staging")
    assert payload == b"payload"
    assert header == read_sealed_header(blob) == {
        "batch_id": "00ab", "segment": 1, "kind": "staging", "key": str(data_key)}


def test_seal_refuses_wrong_kind_flipped_bytes_and_swapped_headers(store, data_key) -> None:
    a = seal(store, data_key, "staging", {"batch_id": "aaaa"}, b"A" * 40)
    b = seal(store, data_key, "staging", {"batch_id": "bbbb"}, b"B" * 40)
    with pytest.raises(VerificationError, match=r"\[sealed kind\]"):
        open_sealed(store, a, "card")
    flipped = bytearray(a)
    flipped[-5] ^= 1
    with pytest.raises(VerificationError, match=r"\[sealed decrypt\]"):
        open_sealed(store, bytes(flipped), "staging")
    # the clear header of b on the body of a: the inner header differs
    cut_a = a.index(b'"staging"}') + len(b'"staging"}')
    cut_b = b.index(b'"staging"}') + len(b'"staging"}')
    with pytest.raises(VerificationError, match=r"\[sealed binding\]"):
        open_sealed(store, b[:cut_b] + a[cut_a:], "staging")
    with pytest.raises(VerificationError, match=r"\[sealed magic\]"):
        open_sealed(store, b"not sealed", "staging")


def test_segment_has_no_clear_pan_and_checks_its_binding(tmp_path: Path, store, data_key) -> None:
    rec = CardRecord(2, "demo-visa-rsa", "4761739001010119", "01", "2812", None, "201",
                     "DOE/JOHN", "", None, {"cvv": bytes(8)}, {})
    path = tmp_path / "segment-00000.sealed"
    write_segment(path, store, data_key, batch_id="00ab", segment=0, first_ordinal=0,
                  records=[rec])
    raw = path.read_bytes()
    assert b"4761739001010119" not in raw and b"DOE/JOHN" not in raw
    table = read_segment(store, path, batch_id="00ab", segment=0)
    assert table.column("pan").to_pylist() == ["4761739001010119"]
    with pytest.raises(VerificationError, match=r"\[staging binding\]"):
        read_segment(store, path, batch_id="00ab", segment=1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
@settings(max_examples=200, deadline=None)
def test_sealed_header_is_the_canonical_json(header: dict[str, object]) -> None:
    """The seal frames its header with an encoder built once (issue 7): the bytes must be
    pipeline.audit.trail.canonical's (sorted keys, compact, UTF-8, non-ASCII kept)."""

    class Store:  # encrypt_data's output is irrelevant to the clear header
        def encrypt_data(self, key: object, data: bytes, purpose: str) -> bytes:
            return b""

    blob = seal(Store(), KeyRef("demo-data", 1), "card", header, b"")  # type: ignore[arg-type]
    head = canonical({**header, "kind": "card", "key": "demo-data@v1"})
    assert blob == MAGIC + len(head).to_bytes(4, "big") + head
