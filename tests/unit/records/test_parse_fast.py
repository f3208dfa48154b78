"""The parser's fast paths against its diagnosing path (issue 7).

``_Codec.detail`` takes a fast path for a fixed-width line of printable ASCII
with the right length and the detail marker, and looks for a bad byte with
``bytes.translate`` before the regular expression; ``_Codec(layout,
fast=False)`` sends every line through the diagnosing path, the reference.
Both must return equal records -- line number, field values, and for a
malformed line the same reject reason, field and detail -- on any line, in
every demo layout.  ``_raw_record`` must build what ``RawRecord(...)`` builds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records.parse import RawRecord, _Codec, _Line, _raw_record
from tests.unit.records.helpers import GOOD, demo, line_for

LAYOUTS = ["demo-fixed", "demo-csv", "demo-json"]


@functools.cache
def _codecs(layout_name: str) -> tuple[_Codec, _Codec, bytes]:
    _, layout = demo(layout_name)
    return _Codec(layout), _Codec(layout, fast=False), line_for(layout, GOOD)


def _view(record: RawRecord) -> tuple[Any, ...]:
    return (record.line_no, dict(record.fields), record.problem)


@st.composite
def _lines(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "marker", "pad", "cut"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            # printable ASCII mostly, so that the fast path's own checks are what decides
            data[pos] = draw(st.integers(0x20, 0x7E) | st.sampled_from([0, 9, 13, 0x7F, 0xC3]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3) | st.just(b" "))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 3))]
        elif op == "marker" and data:
            data[0] = draw(st.sampled_from(b"DHTd "))
        elif op == "pad":
            data += b" " * draw(st.integers(1, 3))
        elif op == "cut":
            data = data[:pos]
    return bytes(data)


@pytest.mark.parametrize("layout_name", LAYOUTS)
@given(data=st.data(), overlong=st.booleans(), line_no=st.integers(2, 10**6))
@settings(max_examples=300, deadline=None)
def test_detail_fast_path_gives_the_diagnosing_answer(
    layout_name: str, data: st.DataObject, overlong: bool, line_no: int
) -> None:
    fast, reference, seed = _codecs(layout_name)
    content = data.draw(_lines(seed))
    line = _Line(line_no, content, overlong)
    assert _view(fast.detail(line)) == _view(reference.detail(line))


@pytest.mark.parametrize("layout_name", LAYOUTS)
def test_a_good_line_takes_the_same_values_either_way(layout_name: str) -> None:
    fast, reference, seed = _codecs(layout_name)
    got = fast.detail(_Line(7, seed, False))
    assert got.problem is None and got.fields["pan"] == GOOD["pan"]
    assert _view(got) == _view(reference.detail(_Line(7, seed, False)))


def test_fast_raw_record_is_the_dataclass() -> None:
    fields = {"pan": "4761739001010119", "name": "DOE/JOHN"}
    fast, slow = _raw_record(12, fields), RawRecord(12, fields)
    assert fast == slow and repr(fast) == repr(slow) and fast.problem is None
    assert type(fast) is RawRecord
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.line_no = 13  # type: ignore[misc]
