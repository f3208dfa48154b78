"""Batch-level checks and the streaming reader (pipeline.records.parse).

No public test file exists for these demo layouts; files are written by hand
in tests/unit/records/helpers.py with the hash total recomputed from its
definition in docs/INPUT.md, independently of the parser's own code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.errors import InputFileCheckError, InputFileError
from pipeline.records.layout import load_layout
from pipeline.records.luhn import luhn_check_digit
from pipeline.records.parse import Check, HashTotal, iter_records, verify_file
from pipeline.records.reasons import RejectReason
from tests.unit.records.helpers import GOOD, line_for, pan_sum, write_file

LAYOUTS = ["demo-fixed", "demo-csv", "demo-json"]


def _cards(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        partial = f"476173{i:09d}"
        out.append({**GOOD, "pan": partial + luhn_check_digit(partial)})
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_good_file_verifies_and_streams(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    details = [line_for(layout, c) for c in _cards(5)]
    path = write_file(tmp_path / "in", layout, details)
    s = verify_file(path, layout)
    assert s.record_count == 5
    assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.size == path.stat().st_size
    assert s.line_ending == "LF"
    assert s.header["issuer_id"] == "DEMO"
    assert s.batch_date is not None and s.batch_date.isoformat() == "2025-01-15"
    records = list(iter_records(path, layout))
    assert [r.line_no for r in records] == [2, 3, 4, 5, 6]
    assert all(r.problem is None for r in records)
    assert records[0].fields["name"] == "DOE/JOHN"
    assert records[0].fields["pan"] == _cards(1)[0]["pan"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_crlf_and_missing_final_newline_are_accepted(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    details = [line_for(layout, c) for c in _cards(3)]
    path = write_file(tmp_path / "in", layout, details, eol=b"\r\n", final_eol=False)
    assert verify_file(path, layout).line_ending == "CRLF"
    assert len(list(iter_records(path, layout))) == 3


def _check(path: Path, name: str) -> str:
    with pytest.raises(InputFileCheckError) as info:
        verify_file(path, load_layout(name))
    assert str(path) in str(info.value)
    assert isinstance(info.value, InputFileError)
    return info.value.check


@pytest.mark.parametrize("name", LAYOUTS)
def test_empty_file(tmp_path: Path, name: str) -> None:
    p = tmp_path / "in"
    p.write_bytes(b"")
    assert _check(p, name) == Check.EMPTY_FILE.value


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_bom_is_refused(tmp_path: Path, name: str, bom: bytes) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    p.write_bytes(bom + p.read_bytes())
    assert _check(p, name) == Check.BOM.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_header_only(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [])
    p.write_bytes(p.read_bytes().splitlines(keepends=True)[0])
    assert _check(p, name) == Check.TRAILER_MISSING.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_truncated_file_has_no_trailer(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, c) for c in _cards(4)])
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:-1]))
    assert _check(p, name) == Check.TRAILER_MISSING.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_blank_line_after_trailer(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    p.write_bytes(p.read_bytes() + b"\n")
    with pytest.raises(InputFileCheckError, match="blank line after the trailer"):
        verify_file(p, layout)


@pytest.mark.parametrize("name", LAYOUTS)
def test_zero_byte_trailer_line(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:-1]) + b"\n")
    assert _check(p, name) == Check.TRAILER_MISSING.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_count_mismatch(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    details = [line_for(layout, c) for c in _cards(3)]
    p = write_file(tmp_path / "in", layout, details, count=4)
    assert _check(p, name) == Check.COUNT.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_hash_total_mismatch(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    details = [line_for(layout, c) for c in _cards(3)]
    wrong = "0" * 64 if name == "demo-json" else "1".zfill(18)
    p = write_file(tmp_path / "in", layout, details, total=wrong)
    assert _check(p, name) == Check.HASH_TOTAL.value


def test_a_pan_sum_mismatch_shows_no_pan_digits(tmp_path: Path) -> None:
    """QA: a one-card file's pan_sum is its PAN's last 10 digits; the error must not print it."""
    layout = load_layout("demo-fixed")
    partial = "476173987654321"
    card = {**GOOD, "pan": partial + luhn_check_digit(partial)}
    details = [line_for(layout, card)]
    p = write_file(tmp_path / "in", layout, details, total="1".zfill(18))
    with pytest.raises(InputFileCheckError) as caught:
        verify_file(p, layout)
    message = str(caught.value)
    assert caught.value.check == Check.HASH_TOTAL.value and "values not shown" in message
    assert card["pan"][-10:] not in message and pan_sum(details, layout) not in message


def test_a_changed_pan_breaks_the_hash_total(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    details = [line_for(layout, c) for c in _cards(3)]
    p = write_file(tmp_path / "in", layout, details)
    data = bytearray(p.read_bytes())
    pos = 161 + 1 + 10  # second line, a PAN digit
    data[pos] = ord("9") if data[pos] != ord("9") else ord("8")
    p.write_bytes(bytes(data))
    assert _check(p, "demo-fixed") == Check.HASH_TOTAL.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_mixed_line_endings_are_refused(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    details = [line_for(layout, c) for c in _cards(3)]
    p = write_file(tmp_path / "in", layout, details)
    lines = p.read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\r"  # line 3 ends in CRLF, the others in LF
    p.write_bytes(b"\n".join(lines))
    assert _check(p, name) == Check.LINE_ENDINGS.value
    with pytest.raises(InputFileCheckError):
        list(iter_records(p, layout))


@pytest.mark.parametrize("name", LAYOUTS)
def test_header_problems(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    data = p.read_bytes()
    first, rest = data.split(b"\n", 1)
    for bad in (first.replace(b"DEMO", b"D\xc9MO"), first.replace(b"20250115", b"20251315"),
                first.replace(b"20250115", b"2025011X"), line_for(layout, GOOD)):
        p.write_bytes(bad + b"\n" + rest)
        assert _check(p, name) == Check.HEADER.value


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("day", ["30250115", "19991231", "21000101", "00000101", "20250229"])
def test_header_date_outside_2000s_or_not_a_date(tmp_path: Path, name: str, day: str) -> None:
    """An implausible batch date is the file's fault: check "header", naming file and field.

    20250229 is not a date (2025 is not a leap year); the others are real dates
    outside 2000..2099, the century YYMM expiries are read in.
    """
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    first, rest = p.read_bytes().split(b"\n", 1)
    p.write_bytes(first.replace(b"20250115", day.encode()) + b"\n" + rest)
    with pytest.raises(InputFileCheckError) as err:
        verify_file(p, layout)
    assert err.value.check == Check.HEADER.value
    assert str(p) in str(err.value) and "file_date" in str(err.value) and day in str(err.value)


@pytest.mark.parametrize("day", ["20000101", "20991231", "20240229"])
def test_header_dates_at_the_edges_of_the_2000s_are_accepted(tmp_path: Path, day: str) -> None:
    layout = load_layout("demo-csv")
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    first, rest = p.read_bytes().split(b"\n", 1)
    p.write_bytes(first.replace(b"20250115", day.encode()) + b"\n" + rest)
    summary = verify_file(p, layout)
    assert summary.batch_date is not None and summary.batch_date.isoformat().replace("-", "") == day


def test_fixed_header_wrong_length(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    first, rest = p.read_bytes().split(b"\n", 1)
    p.write_bytes(first.rstrip() + b"\n" + rest)
    assert _check(p, "demo-fixed") == Check.HEADER.value


@pytest.mark.parametrize("name", LAYOUTS)
def test_trailer_problems(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, [line_for(layout, GOOD)])
    lines = p.read_bytes().split(b"\n")
    lines[-2] = lines[-2].replace(b"1", b"X", 1)  # the count is no longer digits
    p.write_bytes(b"\n".join(lines))
    assert _check(p, name) in {Check.TRAILER.value, Check.TRAILER_MISSING.value}


def test_missing_file(tmp_path: Path) -> None:
    assert _check(tmp_path / "nope", "demo-fixed") == Check.READ.value


# --- malformed detail lines become records with a problem, never batch errors -------


def _problems(tmp_path: Path, name: str, details: list[bytes]) -> list[str | None]:
    layout = load_layout(name)
    p = write_file(tmp_path / "in", layout, details)
    assert verify_file(p, layout).record_count == len(details)
    return [r.problem.reason.code if r.problem else None for r in iter_records(p, layout)]


@pytest.mark.parametrize("name", LAYOUTS)
def test_detail_line_problems(tmp_path: Path, name: str) -> None:
    layout = load_layout(name)
    good = line_for(layout, GOOD)
    details = [
        good.replace(b"DOE/JOHN", b"DOE/J\xc9HN"),  # non-ASCII byte      -> R062
        good.replace(b"DOE/JOHN", b"DOE/J\x07HN"),  # control character  -> R062
        line_for(layout, GOOD, marker="X"),  # record type                  -> R063
        good,
    ]
    assert _problems(tmp_path, name, details) == ["R062", "R062", "R063", None]


def test_fixed_length_problems(tmp_path: Path) -> None:
    good = line_for(load_layout("demo-fixed"), GOOD)
    details = [good[:-1], good + b"X", good + b"X" * 5000, good]
    assert _problems(tmp_path, "demo-fixed", details) == ["R064", "R064", "R064", None]


def test_csv_structure_problems(tmp_path: Path) -> None:
    good = line_for(load_layout("demo-csv"), GOOD)
    details = [good + b",EXTRA", good.replace(b"DOE/JOHN", b'"DOE/JOHN'), b"", b"D", good]
    assert _problems(tmp_path, "demo-csv", details) == ["R064", "R066", "R063", "R064", None]


def test_json_structure_problems(tmp_path: Path) -> None:
    good = line_for(load_layout("demo-json"), GOOD)
    details = [good[:-1], b"[1, 2]", good.replace(b'"201"', b"2.01"),
               good.replace(b'"CUST00000001"', b'"' + b"X" * 3000 + b'"'), good]
    assert _problems(tmp_path, "demo-json", details) == ["R066", "R066", "R065", "R064", None]


def test_json_integers_are_read_as_text(tmp_path: Path) -> None:
    layout = load_layout("demo-json")
    line = line_for(layout, GOOD).replace(b'"201"', b"201")
    p = write_file(tmp_path / "in", layout, [line])
    (rec,) = iter_records(p, layout)
    assert rec.problem is None and rec.fields["service_code"] == "201"


def test_sha256_hash_total_covers_overlong_lines(tmp_path: Path) -> None:
    """The JSON layout's hash covers every byte of a detail line, even one over the limit."""
    layout = load_layout("demo-json")
    long_line = line_for(layout, {**GOOD, "customer_ref": "X" * 5000})
    details = [line_for(layout, GOOD), long_line]
    p = write_file(tmp_path / "in", layout, details)
    assert verify_file(p, layout).record_count == 2
    lines = p.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"XXXX", b"XXXY", 1)
    p.write_bytes(b"\n".join(lines))
    assert _check(p, "demo-json") == Check.HASH_TOTAL.value


def test_problem_records_carry_no_pan(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    bad = line_for(layout, GOOD).replace(b"DOE/JOHN", b"DOE/J\xc9HN")
    p = write_file(tmp_path / "in", layout, [bad])
    (rec,) = iter_records(p, layout)
    assert rec.problem is not None
    assert rec.problem.reason is RejectReason.CHARSET and rec.problem.field == "name"
    assert GOOD["pan"] not in rec.problem.detail and not rec.fields


def test_hash_total_helper_matches_definition() -> None:
    layout = load_layout("demo-fixed")
    details = [line_for(layout, c) for c in _cards(7)] + [b"D" + b"X" * 159]
    h = HashTotal(layout)
    for d in details:
        h.add(d)
    assert h.value == pan_sum(details, layout)
    json_layout = load_layout("demo-json")
    h = HashTotal(json_layout)
    h.add(b"abc")
    h.add(b"def")
    assert h.value == hashlib.sha256(b"abcdef").hexdigest().upper()


def test_iter_records_detects_a_file_changed_after_verify(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    details = [line_for(layout, c) for c in _cards(3)]
    p = write_file(tmp_path / "in", layout, details)
    verify_file(p, layout)
    lines = p.read_bytes().split(b"\n")
    p.write_bytes(b"\n".join(lines[:2] + lines[3:]))  # one detail line lost
    with pytest.raises(InputFileCheckError) as info:
        list(iter_records(p, layout))
    assert info.value.check == Check.COUNT.value
