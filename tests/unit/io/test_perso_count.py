"""The reconcile fast path :func:`count_bureau_records` against the full reader.

``count_bureau_records`` counts a bureau file's records without decoding each
record's fields (issue 7).  The reference is the full reader,
:func:`read_bureau_file` drained to the end.  On any file whose records'
fields are well formed -- whatever happens to record types, sequence numbers,
field separators, line ends, order, header, trailer or what follows it --
both must give the same answer: the same (header, count), or a
VerificationError with the same field and detail.  On a record whose own
fields are damaged (DGI list, base64 card data, input line) the full reader
refuses the file and the count goes on: that check is ``cardprep verify``'s,
and the last test pins this division of labour down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidInputError, VerificationError
from pipeline.io.perso import (
    BureauCard,
    BureauFileWriter,
    BureauHeader,
    count_bureau_records,
    parse_dgi_list,
    read_bureau_file,
)


def _lines(tmp: Path, n: int) -> list[bytes]:
    """A bureau file of ``n`` cards as its lines (LF kept), as the writer writes it."""
    path = tmp / "w.cps"
    header = BureauHeader("00ab", "demo", n, "2025-01-01T00:00:00Z", "demo-data@v1", "305D45",
                          (("demo-tk@v1", "D2B91C"),))  # fmt: skip
    with BureauFileWriter(path, header) as w:
        for i in range(n):
            dgis = ((0x0101, False), (0x8000, True))
            w.write(BureauCard(i + 1, i + 2, "p", "476173******0119", "demo-tk@v1", dgis,
                               bytes([i]) * (i + 5)))  # fmt: skip
    data = path.read_bytes()
    path.unlink()
    return data.splitlines(keepends=True)


def _outcome(fn: Any, path: Path) -> tuple[Any, ...]:
    try:
        header, n = fn(path)
    except VerificationError as exc:
        return ("refused", exc.field, exc.detail)
    return ("counted", header, n)


def _reference(path: Path) -> tuple[BureauHeader, int]:
    header, cards = read_bureau_file(path)
    return header, sum(1 for _ in cards)


def _same(path: Path) -> tuple[Any, ...]:
    ref = _outcome(_reference, path)
    assert _outcome(count_bureau_records, path) == ref
    return ref


def _retrail(lines: list[bytes]) -> list[bytes]:
    """Header count and trailer (count, hash) made consistent with the D lines in between."""
    body = [x for x in lines[1:] if not x.startswith(b"T|")]
    head = lines[0].split(b"|")
    if len(head) > 5:
        head[5] = str(len(body)).encode()
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    return [b"|".join(head), *body, f"T|{len(body)}|{digest}\n".encode()]


# --- mutations that leave every record's own fields well formed --------------------------------

_SEQS = ["0", "1", "2", "3", "01", "007", "x", "", "-1", "+2", " 3", "1_0", "99"]


@st.composite
def _mutated(draw: st.DrawFn, lines: list[bytes]) -> list[bytes]:
    out = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["swap", "delete", "dup", "seq", "type", "pipe", "nonascii",
                                   "truncate", "append", "no_lf", "blank"]))  # fmt: skip
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        j = draw(st.integers(0, len(out) - 1))
        line = out[i]
        if op == "swap":
            out[i], out[j] = out[j], out[i]
        elif op == "delete":
            del out[i]
        elif op == "dup":
            out.insert(j, line)
        elif op == "seq" and line.startswith(b"D|"):
            parts = line.split(b"|")
            parts[1] = draw(st.sampled_from(_SEQS)).encode()
            out[i] = b"|".join(parts)
        elif op == "type" and line:
            out[i] = draw(st.sampled_from([b"D", b"T", b"H", b"X", b"d", b" "])) + line[1:]
        elif op == "pipe" and b"|" in line:
            k = draw(st.integers(0, len(line) - 1))
            cut = line.index(b"|")
            # drop the first separator, or add one anywhere
            out[i] = (
                line[:cut] + line[cut + 1 :]
                if draw(st.booleans())
                else (line[:k] + b"|" + line[k:])
            )
        elif op == "nonascii" and line.startswith(b"D|") and line.count(b"|") >= 5:
            # product, masked PAN and TK are text the reader takes as is
            parts = line.split(b"|")
            f = draw(st.sampled_from([3, 4, 5]))
            parts[f] += draw(st.sampled_from([b"\xff", b"\xc3\xa9", b"\x00", b" "]))
            out[i] = b"|".join(parts)
        elif op == "truncate":
            data = b"".join(out)
            k = draw(st.integers(0, len(data)))
            out = data[:k].splitlines(keepends=True)
        elif op == "append":
            out.append(draw(st.sampled_from([b"D|9|x\n", b"\n", b"T|0|00\n", b"x"])))
        elif op == "no_lf" and line.endswith(b"\n"):
            out[i] = line[:-1]
        elif op == "blank":
            out.insert(j, b"\n")
    if out and draw(st.booleans()):
        out = _retrail(out)  # so that the hash does not hide what the records say
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_counts_what_the_full_reader_counts(tmp_path: Path, n: int) -> None:
    path = tmp_path / "b.cps"
    path.write_bytes(b"".join(_lines(tmp_path, n)))
    assert _same(path)[0::2] == ("counted", n)


def _fields_ok(data: bytes) -> bool:
    """Every 8-field ``D`` line before the trailer: input line, DGI list and card data readable."""
    for line in data.splitlines(keepends=True)[1:]:
        if line.startswith(b"T|") or not line.endswith(b"\n"):
            break
        parts = line[:-1].decode("ascii", errors="replace").split("|")
        if len(parts) == 8 and parts[0] == "D":
            try:
                int(parts[2])
                parse_dgi_list(parts[6])
                base64.b64decode(parts[7], validate=True)
            except (ValueError, InvalidInputError, binascii.Error):
                return False
    return True


@given(data=st.data(), n=st.integers(0, 5))
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_same_answer_as_the_full_reader_on_damaged_files(
    tmp_path: Path, data: st.DataObject, n: int
) -> None:
    path = tmp_path / "b.cps"
    content = b"".join(data.draw(_mutated(_lines(tmp_path, n))))
    path.write_bytes(content)
    if _fields_ok(content):
        _same(path)
        return
    # a record's own fields are damaged (a cut line glued to the next, say): the
    # count never refuses what the full reader takes, nor counts what it counts
    # otherwise; it may pass what only the full reader's field decoding refuses
    ref, fast = _outcome(_reference, path), _outcome(count_bureau_records, path)
    if ref[0] == "counted":
        assert fast == ref
    elif fast[0] == "counted":
        assert ref[2].startswith("malformed (")


@pytest.mark.parametrize("edit,check", [
    (lambda t: t[: t.rindex(b"T|")], "[trailer]"),                    # trailer lost
    (lambda t: t.replace(b"|3|", b"|9|", 1), "[count]"),               # header count
    (lambda t: t.replace(b"476173******0119", b"476173******0118", 1), "[hash]"),
    (lambda t: t[:-3], "[truncated]"),                                  # no final LF
    (lambda t: t + b"D|4|x\n", "[trailer]"),                            # data after the trailer
    (lambda t: t.replace(b"\nD|2|", b"\nD|3|", 1), "[record 2]"),       # sequence number
    (lambda t: t.replace(b"\nD|2|", b"\nX|2|", 1), "[record 2]"),       # record type
    (lambda t: b"X" + t[1:], "[header]"),                               # not a bureau file
    (lambda t: b"", "[header]"),                                         # empty
])  # fmt: skip
def test_refuses_each_count_check_as_the_full_reader(tmp_path: Path, edit: Any, check: str) -> None:
    path = tmp_path / "b.cps"
    path.write_bytes(edit(b"".join(_lines(tmp_path, 3))))
    ref = _same(path)
    assert ref[0] == "refused" and ref[1].endswith(check)


def test_leading_zeros_in_a_sequence_number_are_read_as_the_full_reader_reads_them(
    tmp_path: Path,
) -> None:
    lines = _lines(tmp_path, 3)
    lines[2] = lines[2].replace(b"D|2|", b"D|002|", 1)
    path = tmp_path / "b.cps"
    path.write_bytes(b"".join(_retrail(lines)))
    assert _same(path)[0::2] == ("counted", 3)


@pytest.mark.parametrize("field,value", [
    (2, b"x"),                 # input line not a number
    (6, b"01G1"),              # DGI list
    (7, b"not base64!"),       # card data
])  # fmt: skip
def test_record_fields_are_left_to_verify(tmp_path: Path, field: int, value: bytes) -> None:
    """A damaged field inside a record: the full reader (verify) refuses, the count does not."""
    lines = _lines(tmp_path, 3)
    parts = lines[2].rstrip(b"\n").split(b"|")
    parts[field] = value
    lines[2] = b"|".join(parts) + b"\n"
    path = tmp_path / "b.cps"
    path.write_bytes(b"".join(_retrail(lines)))
    with pytest.raises(VerificationError, match=r"\[record 2\]: malformed"):
        _reference(path)
    header, n = count_bureau_records(path)
    assert n == header.cards == 3
