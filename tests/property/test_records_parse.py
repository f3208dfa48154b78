"""Fuzzing the input parsers: arbitrary and mutated bytes never escape as anything but
the project's documented errors (InputFileError from the file checks; any other
exception fails the test), and records in = valid + rejected whenever a file passes
verification (issue 8, "Fuzzing" and "Bad input corpus")."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputFileError
from pipeline.records.parse import RawRecord, iter_records, verify_file
from pipeline.records.validate import CardRecord, Reject, Validator
from tests.unit.records.helpers import BATCH, GOOD, demo, line_for, write_file

LAYOUTS = ["demo-fixed", "demo-csv", "demo-json"]


_demo = functools.lru_cache(maxsize=None)(demo)


def _exercise(data: bytes, layout_name: str) -> None:
    issuer, layout = _demo(layout_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in"
        path.write_bytes(data)
        try:
            summary = verify_file(path, layout)
        except InputFileError:
            # The streaming reader must fail the same documented way, never otherwise.
            try:
                for _ in iter_records(path, layout):
                    pass
            except InputFileError:
                pass
            return
        v = Validator(issuer, layout, BATCH)
        results = [v.check(raw) for raw in iter_records(path, layout)]
        assert len(results) == summary.record_count
        assert all(isinstance(r, CardRecord | Reject) for r in results)
        assert v.accepted + v.rejected == summary.record_count


@pytest.mark.parametrize("layout_name", LAYOUTS)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes(layout_name: str, data: bytes) -> None:
    _exercise(data, layout_name)


def _seed_file(layout_name: str) -> bytes:
    _, layout = demo(layout_name)
    details = [line_for(layout, GOOD),
               line_for(layout, {**GOOD, "psn": "02", "name": "O'BRIEN/MARY-ANN"})]
    with tempfile.TemporaryDirectory() as tmp:
        return write_file(Path(tmp) / "seed", layout, details).read_bytes()


_SEEDS = {name: _seed_file(name) for name in LAYOUTS}


@st.composite
def _mutated(draw: st.DrawFn, layout_name: str) -> bytes:
    data = bytearray(_SEEDS[layout_name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup_line"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@pytest.mark.parametrize("layout_name", LAYOUTS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_valid_files(layout_name: str, data: st.DataObject) -> None:
    _exercise(data.draw(_mutated(layout_name)), layout_name)


@pytest.mark.parametrize("layout_name", LAYOUTS)
@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(GOOD)), st.text(max_size=30)))
def test_validator_on_arbitrary_field_values(layout_name: str, fields: dict[str, str]) -> None:
    """Whatever the parser hands over, the validator answers with a record or a reject."""
    issuer, layout = _demo(layout_name)
    v = Validator(issuer, layout, BATCH)
    r = v.check(RawRecord(2, {**GOOD, **fields}))
    assert isinstance(r, CardRecord | Reject)
    if isinstance(r, Reject):
        assert GOOD["pan"] not in r.detail
