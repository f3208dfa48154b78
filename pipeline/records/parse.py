"""Streaming reader for issuer input files (fixed-width, CSV, JSON Lines).

Two single passes over the file, each with memory bounded by the layout's
``max_line_bytes`` (DESIGN.md "The batch, step by step", 1 and 2):

* :func:`verify_file` checks the file as a whole *before any cryptography*:
  no BOM, one line-ending style, a header first and a trailer last, the
  trailer's record count and hash total against the detail lines; it returns
  a :class:`FileSummary` with the file's SHA-256 (the batch id source).
* :func:`iter_records` yields one :class:`RawRecord` per detail line.

Batch-level problems raise :class:`~pipeline.errors.InputFileCheckError`
naming the file and the check.  A malformed *detail* line never does: it
becomes a :class:`RawRecord` carrying a :class:`RecordProblem` (reject codes
R062 charset, R063 record type, R064 record length, R065 field format, R066
syntax) so that records in = valid + rejected holds.  docs/INPUT.md has the
full policy.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> from pipeline.records.layout import load_layout
    >>> lay = load_layout("demo-csv")
    >>> p = Path(tempfile.mkdtemp()) / "f.csv"
    >>> _ = p.write_bytes(b"H,DEMO,20250101,1\\nD,4761739001010119,01,2812,,201,DOE/J"
    ...                   b",,,,AA,BB,\\nT,1,9001010119\\n")
    >>> verify_file(p, lay).record_count
    1
    >>> [r.fields["pan"][:6] for r in iter_records(p, lay)]
    ['476173']
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from pipeline.errors import InputFileCheckError
from pipeline.records.layout import FieldSpec, FieldType, FileFormat, HashMethod, Layout
from pipeline.records.reasons import RejectReason

__all__ = [
    "FILE_SEQ_FIELD",
    "HEADER_DATE_YEARS",
    "ISSUER_ID_FIELD",
    "Check",
    "FileSummary",
    "HashTotal",
    "RawRecord",
    "RecordProblem",
    "hash_total_of",
    "iter_records",
    "verify_file",
]

_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff")
# Any byte outside printable ASCII 0x20..0x7E: non-ASCII or a control character.
_BAD_BYTE = re.compile(rb"[^\x20-\x7e]")
#: The printable ASCII bytes: a line with nothing left once they are deleted
#: (``bytes.translate``, ~0.2 us for 160 bytes) has no :data:`_BAD_BYTE` (~0.5 us).
_PRINTABLE = bytes(range(0x20, 0x7F))
_DIGITS = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_READ_BUFFER = 1 << 20

#: Years a header date may name.  A header date is the batch date
#: (``batch_date_field``), against which card expiries, written YYMM, are
#: read in the 2000s (docs/INPUT.md; ``Validator`` refuses any other
#: century), so a date outside 2000..2099 is an input-file error, not a date.
HEADER_DATE_YEARS = range(2000, 2100)
#: Header field with the issuer id (checked against the issuer's ``header_issuer_id``).
ISSUER_ID_FIELD = "issuer_id"
#: Header field with the issuer's file sequence number: with the issuer id and the
#: file date it identifies a delivery (docs/INPUT.md "Deliveries").
FILE_SEQ_FIELD = "file_seq"


class Check(Enum):
    """Batch-level checks; the value is the ``check`` of InputFileCheckError."""

    READ = "read"
    EMPTY_FILE = "empty_file"
    BOM = "bom"
    LINE_ENDINGS = "line_endings"
    HEADER = "header"
    ISSUER = "issuer"
    TRAILER_MISSING = "trailer_missing"
    TRAILER = "trailer"
    COUNT = "count"
    HASH_TOTAL = "hash_total"
    #: the header names a delivery already taken in as another batch (pipeline.steps.parse)
    DUPLICATE_DELIVERY = "duplicate_delivery"


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """Why a detail line could not be read as a record (becomes a reject)."""

    reason: RejectReason
    field: str
    detail: str


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One detail record as read: 1-based physical line number and raw field values.

    Values are strings with fixed-width padding removed; an absent or blank
    field is ``""``.  ``problem`` is set when the line itself is malformed
    (the validator then rejects it without looking at the fields).
    """

    line_no: int
    fields: Mapping[str, str]
    problem: RecordProblem | None = None


_new = object.__new__
_set_line_no = RawRecord.__dict__["line_no"].__set__
_set_fields = RawRecord.__dict__["fields"].__set__
_set_problem = RawRecord.__dict__["problem"].__set__


def _raw_record(line_no: int, fields: Mapping[str, str]) -> RawRecord:
    """``RawRecord(line_no, fields)`` without the frozen ``__init__`` (the parser's hot path).

    The frozen dataclass ``__init__`` sets each slot through
    ``object.__setattr__`` (0.43 us); the slot descriptors set them in 0.26 us
    (issue 7).  The result is equal to, and as immutable as, the constructor's
    (tests/unit/records/test_parse_fast.py).
    """
    record: RawRecord = _new(RawRecord)
    _set_line_no(record, line_no)
    _set_fields(record, fields)
    _set_problem(record, None)
    return record


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What :func:`verify_file` established about a file (no cardholder data)."""

    path: str
    layout: str
    sha256: str
    size: int
    record_count: int
    hash_total: str
    line_ending: str
    header: Mapping[str, str] = field(default_factory=dict)
    batch_date_field: str | None = None

    @property
    def batch_date(self) -> date | None:
        """The header's batch date (layout ``batch_date_field``, YYYYMMDD), if any."""
        if self.batch_date_field is None:
            return None
        text = self.header.get(self.batch_date_field, "")
        return _parse_yyyymmdd(text)


def _parse_yyyymmdd(text: str) -> date | None:
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


# --- physical lines ---------------------------------------------------------------

_HEADER, _DETAIL, _TRAILER = "H", "D", "T"


@dataclass(slots=True)
class _Line:
    line_no: int
    content: bytes  # without terminator; truncated to max_line_bytes when overlong
    overlong: bool
    pending: Any = None  # sha256 state including this (overlong) line, for HashMethod.SHA256


class _Reader:
    """Splits a binary stream into lines and frames them as header / details / trailer.

    Enforces: no BOM, not empty, one line-ending style (LF or CRLF; the last
    line may lack one), bounded line length (longer lines are truncated and
    flagged, the rest is read and discarded).  Optionally hashes the whole
    file and, for the sha256 hash total, the detail lines.
    """

    def __init__(self, stream: IO[bytes], path: str, layout: Layout, *,
                 file_hash: bool = False, detail_hash: bool = False) -> None:
        self.stream = stream
        self.path = path
        self.limit = layout.max_line_bytes
        self.file_hasher = hashlib.sha256() if file_hash else None
        self.detail_hasher = hashlib.sha256() if detail_hash else None
        self.size = 0
        self.ending: bytes | None = None  # b"\n" or b"\r\n", fixed by the first line

    def fail(self, check: Check, detail: str) -> InputFileCheckError:
        return InputFileCheckError(self.path, check.value, detail)

    def _terminator(self, raw: bytes, line_no: int) -> tuple[bytes, bool]:
        """Strip and police the line terminator; returns (content, terminated)."""
        if raw.endswith(b"\n"):
            ending = b"\r\n" if raw.endswith(b"\r\n") else b"\n"
            if self.ending is None:
                self.ending = ending
            elif ending != self.ending:
                names = {b"\n": "LF", b"\r\n": "CRLF"}
                raise self.fail(
                    Check.LINE_ENDINGS,
                    f"line {line_no} ends in {names[ending]}, earlier lines in "
                    f"{names[self.ending]}: mixed line endings are refused",
                )
            return raw[: -len(ending)], True
        return raw, False

    def _read(self) -> bytes:
        raw = self.stream.readline(self.limit)
        if raw:
            self.size += len(raw)
            if self.file_hasher is not None:
                self.file_hasher.update(raw)
        return raw

    def _line(self, raw: bytes, line_no: int) -> _Line:
        content, terminated = self._terminator(raw, line_no)
        if terminated or len(raw) < self.limit:
            return _Line(line_no, content, False)
        # Overlong: keep the first max_line_bytes, discard (but hash) the rest.
        pending = None
        if self.detail_hasher is not None:
            pending = self.detail_hasher.copy()
            pending.update(content)
        while True:
            tail = self._read()
            if not tail:
                break
            tail_content, terminated = self._terminator(tail, line_no)
            if pending is not None:
                pending.update(tail_content)
            if terminated:
                break
        return _Line(line_no, content, True, pending)

    def frames(self) -> Iterator[tuple[str, _Line]]:
        """Yield ("H", header), ("D", detail)..., ("T", trailer) in file order."""
        first = self._read()
        if not first:
            raise self.fail(Check.EMPTY_FILE, "the file is empty (0 bytes)")
        if first.startswith(_BOMS):
            raise self.fail(Check.BOM, "the file starts with a byte order mark; "
                            "the layout requires plain ASCII without BOM")
        yield _HEADER, self._line(first, 1)
        held: _Line | None = None
        line_no = 1
        readline, limit, file_hasher = self.stream.readline, self.limit, self.file_hasher
        commit = self.detail_hasher is not None
        ending, cut = self.ending, len(self.ending or b"")
        while True:
            raw = readline(limit)
            if not raw:
                break
            self.size += len(raw)
            if file_hasher is not None:
                file_hasher.update(raw)
            line_no += 1
            if held is not None:
                if commit:
                    self._commit(held)
                yield _DETAIL, held
            # Fast path: the file's line ending and nothing else (LF must not be CRLF).
            if ending is not None and raw.endswith(ending) and (cut == 2 or raw[-2:-1] != b"\r"):
                held = _Line(line_no, raw[:-cut], False)
            else:
                held = self._line(raw, line_no)
                ending, cut = self.ending, len(self.ending or b"")
        if held is None:
            raise self.fail(Check.TRAILER_MISSING, "the file has a header line only")
        yield _TRAILER, held

    def _commit(self, line: _Line) -> None:
        if self.detail_hasher is not None:
            if line.pending is not None:
                self.detail_hasher = line.pending
            else:
                self.detail_hasher.update(line.content)


# --- per-format record decoding --------------------------------------------------------


class _Codec:
    """Turns one line (bytes) into (record type, field values) for one layout."""

    def __init__(self, layout: Layout, *, fast: bool = True) -> None:
        """``fast=False``: every detail line takes the diagnosing path (the reference in tests)."""
        self.layout = layout
        self.fmt = layout.format
        self.detail_marker = layout.detail.marker
        self.fast = fast
        rt = layout.record_type
        if self.fmt is FileFormat.FIXED:
            self.rt_slice = (rt.slice_start, rt.slice_end)
            self.slices = tuple((f.name, f.slice_start, f.slice_end) for f in layout.detail.fields)
            self.names = tuple(f.name for f in layout.detail.fields)
            # a layout has at least the 4 REQUIRED_DETAIL_FIELDS, so the getter
            # returns a tuple of len(self.names) values
            self.getter = itemgetter(*(slice(a, b) for _, a, b in self.slices))
        elif self.fmt is FileFormat.CSV:
            self.rt_col = (rt.column or 1) - 1
            self.columns = tuple((f.name, (f.column or 1) - 1) for f in layout.detail.fields)
            self.n_columns = max(c for _, c in self.columns) + 1
        else:
            self.rt_key = rt.key or "type"
            self.keys = tuple((f.name, f.key or f.name) for f in layout.detail.fields)
        pan = layout.detail.field("pan")
        self.pan_spec = pan

    # -- detail lines -> RawRecord ------------------------------------------------

    def detail(self, line: _Line) -> RawRecord:
        """Decode a detail line; never raises for bad content."""
        content = line.content
        # printable ASCII throughout; else the search below finds the first bad byte
        clean = self.fast and not content.translate(None, _PRINTABLE)
        if (clean and self.fmt is FileFormat.FIXED and not line.overlong
                and len(content) == self.layout.record_length):  # fmt: skip
            # Fast path: printable ASCII (so str.rstrip only removes spaces), right
            # length, detail marker.  Anything else takes the diagnosing path below.
            text = content.decode("ascii")
            s, e = self.rt_slice
            if text[s:e] == self.detail_marker:
                values = map(str.rstrip, self.getter(text))
                # not strict: names and getter come from one tuple (see __init__)
                return _raw_record(line.line_no, dict(zip(self.names, values)))  # noqa: B905
        bad = None if clean else _BAD_BYTE.search(content)
        if bad is not None:
            return self._problem(line, RejectReason.CHARSET, self._field_at(bad.start()),
                                 f"byte 0x{content[bad.start()]:02X} at column "
                                 f"{bad.start() + 1} is not printable ASCII")
        text = content.decode("ascii")
        if self.fmt is FileFormat.FIXED:
            return self._fixed(line, text)
        if self.fmt is FileFormat.CSV:
            return self._csv(line, text)
        return self._json(line, text)

    def _problem(self, line: _Line, reason: RejectReason, fld: str, detail: str) -> RawRecord:
        return RawRecord(line.line_no, MappingProxyType({}), RecordProblem(reason, fld, detail))

    def _field_at(self, pos: int) -> str:
        if self.fmt is FileFormat.FIXED:
            for name, start, end in self.slices:
                if start <= pos < end:
                    return name
        return "record"

    def _overlong(self, line: _Line) -> RawRecord:
        return self._problem(line, RejectReason.RECORD_LENGTH, "record",
                             f"line longer than {self.layout.max_line_bytes} bytes")

    def _fixed(self, line: _Line, text: str) -> RawRecord:
        s, e = self.rt_slice
        marker = text[s:e]
        if marker != self.detail_marker:
            return self._problem(line, RejectReason.RECORD_TYPE, "record_type",
                                 f"record type {marker!r} where a detail record "
                                 f"{self.detail_marker!r} was expected")
        if line.overlong or len(text) != self.layout.record_length:
            got = f"more than {len(text)}" if line.overlong else str(len(text))
            return self._problem(line, RejectReason.RECORD_LENGTH, "record",
                                 f"line has {got} characters, the layout needs "
                                 f"{self.layout.record_length}")
        return RawRecord(line.line_no,
                         {name: text[a:b].rstrip(" ") for name, a, b in self.slices})

    def _csv_row(self, text: str, strict: bool = True) -> list[str] | None:
        try:
            return next(csv.reader((text,), delimiter=self.layout.delimiter, strict=strict))
        except (csv.Error, StopIteration):
            return None

    def _csv(self, line: _Line, text: str) -> RawRecord:
        if line.overlong:
            return self._overlong(line)
        row = self._csv_row(text)
        if row is None:
            return self._problem(line, RejectReason.RECORD_SYNTAX, "record",
                                 "not a well-formed CSV row (quoting)")
        marker = row[self.rt_col] if len(row) > self.rt_col else ""
        if marker != self.detail_marker:
            return self._problem(line, RejectReason.RECORD_TYPE, "record_type",
                                 f"record type {marker[:4]!r} where a detail record "
                                 f"{self.detail_marker!r} was expected")
        if len(row) != self.n_columns:
            return self._problem(line, RejectReason.RECORD_LENGTH, "record",
                                 f"row has {len(row)} columns, the layout needs "
                                 f"{self.n_columns}")
        return RawRecord(line.line_no, {name: row[col] for name, col in self.columns})

    def _json_obj(self, content: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(content)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def _json(self, line: _Line, text: str) -> RawRecord:
        if line.overlong:
            return self._overlong(line)
        obj = self._json_obj(line.content)
        if obj is None:
            return self._problem(line, RejectReason.RECORD_SYNTAX, "record",
                                 "not a JSON object on one line")
        marker = obj.get(self.rt_key)
        if marker != self.detail_marker:
            shown = marker[:4] if isinstance(marker, str) else type(marker).__name__
            return self._problem(line, RejectReason.RECORD_TYPE, "record_type",
                                 f"record type {shown!r} where a detail record "
                                 f"{self.detail_marker!r} was expected")
        values: dict[str, str] = {}
        for name, key in self.keys:
            value = obj.get(key)
            if value is None:
                values[name] = ""
            elif isinstance(value, str):
                values[name] = value
            elif isinstance(value, int) and not isinstance(value, bool):
                values[name] = str(value)
            else:
                return self._problem(line, RejectReason.FIELD_FORMAT, name,
                                     f"JSON {type(value).__name__} where a string "
                                     "was expected")
        return RawRecord(line.line_no, values)

    # -- header / trailer (batch level) ---------------------------------------------

    def control(self, line: _Line, kind: str, reader: _Reader) -> dict[str, str]:
        """Decode and check a header or trailer line; InputFileCheckError otherwise."""
        spec = self.layout.header if kind == _HEADER else self.layout.trailer
        check = Check.HEADER if kind == _HEADER else Check.TRAILER
        content = line.content
        where = f"{spec.kind} (line {line.line_no})"
        if line.overlong:
            raise reader.fail(check, f"{where} is longer than {self.layout.max_line_bytes} bytes")
        bad = _BAD_BYTE.search(content)
        if bad is not None:
            raise reader.fail(check, f"{where} has byte 0x{content[bad.start()]:02X} at column "
                              f"{bad.start() + 1}: not printable ASCII")
        text = content.decode("ascii")
        if kind == _TRAILER and not text.strip():
            raise reader.fail(Check.TRAILER_MISSING, f"the last line ({line.line_no}) is blank, "
                              f"not a trailer record {spec.marker!r} (blank line after the "
                              "trailer?)")
        marker, values = self._control_values(text, spec.fields, where, check, reader)
        if marker != spec.marker:
            if kind == _TRAILER:
                raise reader.fail(Check.TRAILER_MISSING, f"the last line ({line.line_no}) "
                                  f"is not a trailer record {spec.marker!r}")
            raise reader.fail(check, f"the first line is not a header record {spec.marker!r}")
        if self.fmt is FileFormat.FIXED and len(text) != self.layout.record_length:
            raise reader.fail(check, f"{where} has {len(text)} characters, the layout "
                              f"needs {self.layout.record_length}")
        for f in spec.fields:
            problem = _control_field_problem(f, values[f.name])
            if problem:
                raise reader.fail(check, f"{where} field {f.name}: {problem}")
        return values

    def _control_values(self, text: str, fields: tuple[FieldSpec, ...], where: str,
                        check: Check, reader: _Reader) -> tuple[str, dict[str, str]]:
        rt = self.layout.record_type
        if self.fmt is FileFormat.FIXED:
            marker = text[rt.slice_start:rt.slice_end]
            return marker, {f.name: text[f.slice_start:f.slice_end].rstrip(" ") for f in fields}
        if self.fmt is FileFormat.CSV:
            row = self._csv_row(text)
            if row is None:
                raise reader.fail(check, f"{where} is not a well-formed CSV row")
            get: Callable[[int], str] = lambda c: row[c - 1] if len(row) >= c else ""  # noqa: E731
            return get(rt.column or 1), {f.name: get(f.column or 0) for f in fields}
        obj = self._json_obj(text.encode("ascii"))
        if obj is None:
            raise reader.fail(check, f"{where} is not a JSON object")
        values: dict[str, str] = {}
        for f in fields:
            v = obj.get(f.key or f.name)
            values[f.name] = "" if v is None else str(v) if isinstance(v, str | int) else "?"
        json_marker: Any = obj.get(rt.key or "type")
        return (json_marker if isinstance(json_marker, str) else ""), values

    # -- hash total --------------------------------------------------------------------

    def pan_value(self, content: bytes) -> int:
        """Contribution of one detail line to the ``pan_sum`` hash total."""
        if self.fmt is FileFormat.FIXED:
            raw = content[self.pan_spec.slice_start:self.pan_spec.slice_end].rstrip(b" ")
        elif self.fmt is FileFormat.CSV:
            # Lenient: a row the validator rejects for quoting still has a PAN to add.
            row = self._csv_row(content.decode("latin-1"), strict=False)
            col = (self.pan_spec.column or 1) - 1
            raw = row[col].encode("latin-1") if row is not None and len(row) > col else b""
        else:
            obj = self._json_obj(content)
            value = obj.get(self.pan_spec.key or "pan") if obj is not None else None
            raw = value.encode("utf-8") if isinstance(value, str) else b""
        if raw and raw.isdigit():
            return int(raw[-10:])
        return 0


def _control_field_problem(spec: FieldSpec, value: str) -> str:
    """Syntax check of a header/trailer field; "" when fine (values are never secret)."""
    if not value:
        return "missing" if spec.required else ""
    if spec.limit is not None and len(value) > spec.limit:
        return f"{len(value)} characters, at most {spec.limit} allowed"
    if len(value) < spec.min_length:
        return f"{len(value)} characters, at least {spec.min_length} required"
    t = spec.type
    if t in (FieldType.DIGITS, FieldType.PAN) and not _DIGITS.fullmatch(value):
        return f"{value!r} is not all digits"
    if t is FieldType.ALNUM and not _ALNUM.fullmatch(value):
        return f"{value!r} is not alphanumeric"
    if t is FieldType.HEX and not _HEX.fullmatch(value):
        return f"{value!r} is not hexadecimal"
    if t is FieldType.DATE:
        return _header_date_problem(value)
    return ""


def _header_date_problem(value: str) -> str:
    """Why ``value`` is not a plausible header date (YYYYMMDD, year in 2000..2099); "" if fine.

    Example:
        >>> _header_date_problem("20250115")
        ''
        >>> _header_date_problem("20250230")
        "'20250230' is not a valid YYYYMMDD date"
        >>> _header_date_problem("30250115")
        "'30250115': year 3025 is outside 2000..2099 (expiries are YYMM in the 2000s)"
    """
    day = _parse_yyyymmdd(value)
    if day is None:
        return f"{value!r} is not a valid YYYYMMDD date"
    if day.year not in HEADER_DATE_YEARS:
        first, last = HEADER_DATE_YEARS[0], HEADER_DATE_YEARS[-1]
        return (f"{value!r}: year {day.year} is outside {first}..{last} "
                "(expiries are YYMM in the 2000s)")
    return ""


class HashTotal:
    """Streaming trailer hash total over detail lines (bytes, without terminators).

    For writers (``cardprep sample``) and tests; :func:`verify_file` computes
    the same value while reading.  Definition: :class:`HashMethod`.

    Example:
        >>> from pipeline.records.layout import load_layout
        >>> h = HashTotal(load_layout("demo-csv"))
        >>> h.add(b"D,4761739001010119"); h.add(b"D,12")
        >>> h.value
        '000000009001010131'
    """

    def __init__(self, layout: Layout) -> None:
        self._spec = layout.hash_total
        self._codec = _Codec(layout)
        self._sha = hashlib.sha256() if self._spec.method is HashMethod.SHA256 else None
        self._sum = 0

    def add(self, detail_line: bytes) -> None:
        """Account for one detail line."""
        if self._sha is not None:
            self._sha.update(detail_line)
        else:
            self._sum += self._codec.pan_value(detail_line)

    @property
    def value(self) -> str:
        """The hash total as the trailer writes it."""
        if self._sha is not None:
            return self._sha.hexdigest().upper()[: self._spec.digits]
        return _format_pan_sum(self._sum, self._spec.digits)


def hash_total_of(layout: Layout, detail_lines: Iterable[bytes]) -> str:
    """The trailer hash total of ``detail_lines`` (see :class:`HashTotal`)."""
    acc = HashTotal(layout)
    for line in detail_lines:
        acc.add(line)
    return acc.value


def _format_pan_sum(total: int, digits: int) -> str:
    return str(total % 10**digits).zfill(digits)


# --- public entry points -------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb", buffering=_READ_BUFFER)
    except OSError as exc:
        raise InputFileCheckError(str(path), Check.READ.value,
                                  f"cannot open: {exc.strerror}") from exc


def verify_file(path: Path, layout: Layout) -> FileSummary:
    """Check ``path`` as a whole against ``layout``, in one streaming pass.

    Order of checks: readable, not empty, no BOM, header (marker, length,
    field syntax), line endings (throughout), trailer present and well
    formed, trailer count = detail lines, trailer hash total = computed.
    Raises :class:`InputFileCheckError` (``.check`` a :class:`Check` value).
    No cryptography and no record validation happen here.
    """
    path = Path(path)
    codec = _Codec(layout)
    method = layout.hash_total.method
    with _open(path) as stream:
        reader = _Reader(stream, str(path), layout, file_hash=True,
                         detail_hash=method is HashMethod.SHA256)
        header: dict[str, str] = {}
        trailer: dict[str, str] = {}
        count = 0
        pan_sum = 0
        pan_value = codec.pan_value
        sums = method is HashMethod.PAN_SUM
        try:
            for kind, line in reader.frames():
                if kind == _DETAIL:
                    count += 1
                    if sums:
                        pan_sum += pan_value(line.content)
                elif kind == _HEADER:
                    header = codec.control(line, _HEADER, reader)
                else:
                    trailer = codec.control(line, _TRAILER, reader)
        except OSError as exc:
            raise reader.fail(Check.READ, f"read failed: {exc.strerror}") from exc
    declared = int(trailer[layout.count_field])
    if declared != count:
        raise reader.fail(Check.COUNT, f"trailer {layout.count_field} says {declared} "
                          f"detail records, the file has {count}")
    if sums:
        computed = _format_pan_sum(pan_sum, layout.hash_total.digits)
    else:
        assert reader.detail_hasher is not None
        computed = reader.detail_hasher.hexdigest().upper()[: layout.hash_total.digits]
    declared_hash = trailer[layout.hash_total.field]
    same = (int(declared_hash) == int(computed)) if sums else declared_hash.upper() == computed
    if not same:
        if sums:  # a PAN sum of few cards gives their PAN digits away: no values here
            raise reader.fail(Check.HASH_TOTAL, f"trailer {layout.hash_total.field} differs "
                              f"from the sum of the {count} detail PANs ({method.value}; "
                              "values not shown: they are PAN digits)")
        raise reader.fail(Check.HASH_TOTAL, f"trailer {layout.hash_total.field} is "
                          f"{declared_hash}, computed {computed} ({method.value})")
    assert reader.file_hasher is not None
    return FileSummary(
        path=str(path),
        layout=layout.name,
        sha256=reader.file_hasher.hexdigest(),
        size=reader.size,
        record_count=count,
        hash_total=computed,
        line_ending={b"\n": "LF", b"\r\n": "CRLF", None: "none"}[reader.ending],
        header=MappingProxyType(header),
        batch_date_field=layout.batch_date_field,
    )


def iter_records(path: Path, layout: Layout) -> Iterator[RawRecord]:
    """Yield one :class:`RawRecord` per detail line of ``path``, streaming.

    Call :func:`verify_file` first; this pass re-checks the framing (header,
    trailer, line endings, count) and raises InputFileCheckError if the file
    no longer matches, after the records read so far were yielded.
    """
    path = Path(path)
    codec = _Codec(layout)
    detail = codec.detail
    with _open(path) as stream:
        reader = _Reader(stream, str(path), layout)
        count = 0
        trailer: dict[str, str] = {}
        for kind, line in reader.frames():
            if kind == _DETAIL:
                count += 1
                yield detail(line)
            elif kind == _HEADER:
                codec.control(line, _HEADER, reader)
            else:
                trailer = codec.control(line, _TRAILER, reader)
    if int(trailer[layout.count_field]) != count:
        raise reader.fail(Check.COUNT, f"trailer {layout.count_field} says "
                          f"{trailer[layout.count_field]} detail records, the file has {count}")
