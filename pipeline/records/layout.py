"""Issuer input layouts, declared as data in ``config/layouts/<name>.yaml``.

DESIGN.md principle 4 ("formats are data"): one engine (:mod:`pipeline.records.parse`)
interprets every layout; a new issuer format is a YAML file plus a test.
Three framings are supported, each with a header record, detail records and
a trailer record, told apart by a record-type marker:

* ``fixed``: fixed-width lines of ``record_length`` ASCII characters; fields
  by 1-based ``start`` and ``length``; values left-justified, space-padded
  (trailing spaces are removed).
* ``csv``: RFC 4180 rows, fields by 1-based ``column``; the record type is a
  column too.  Quoted fields may not contain line breaks.
* ``json``: JSON Lines (one JSON object per line, RFC 8259 / jsonlines.org),
  fields by ``key``.  Streamable with bounded memory, and line numbers stay
  meaningful, which a single JSON array would not give.

The trailer carries the detail record count and a hash total (see
:class:`HashMethod` and docs/INPUT.md).  Layout errors raise
:class:`~pipeline.errors.ConfigError` naming the file and the field.

Example:
    >>> lay = load_layout("demo-fixed")
    >>> lay.format.value, lay.record_length, lay.detail.field("pan").start
    ('fixed', 160, 2)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.yamlconf import safe_load

__all__ = [
    "CANONICAL_FIELDS",
    "FieldSpec",
    "FieldType",
    "FileFormat",
    "HashMethod",
    "HashTotalSpec",
    "Layout",
    "RecordSpec",
    "SecretPadding",
    "load_layout",
    "parse_layout",
]

#: Detail fields the validator understands by name (anything else goes to ``extra``).
CANONICAL_FIELDS: frozenset[str] = frozenset(
    {"pan", "psn", "expiry", "effective", "service_code", "name", "discretionary", "kdd"}
)
#: Detail fields every layout must declare.
REQUIRED_DETAIL_FIELDS: tuple[str, ...] = ("pan", "expiry", "service_code", "name")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_DEFAULT_MAX_LINE = 4096


class FileFormat(Enum):
    """How records are framed in the file."""

    FIXED = "fixed"
    CSV = "csv"
    JSON = "json"


class FieldType(Enum):
    """Value syntax of a field; the validator maps each to a check and a reason code."""

    PAN = "pan"  # ISO/IEC 7812-1: 13..19 digits, Luhn check digit
    DIGITS = "digits"  # n: 0-9
    ALNUM = "alnum"  # an: A-Z a-z 0-9
    ANS = "ans"  # printable ASCII 0x20..0x7E
    NAME = "name"  # ISO/IEC 7813 track 1 name characters (EMV 5F20)
    HEX = "hex"  # 0-9 A-F a-f
    YYMM = "yymm"  # EMV 5F24/5F25 without the day
    DATE = "yyyymmdd"  # header dates
    SERVICE_CODE = "service_code"  # ISO/IEC 7813 service code, 3 digits


class HashMethod(Enum):
    """How the trailer's hash total is computed over the detail records.

    ``pan_sum``: sum over every detail record of the integer value of the last
    10 digits of its PAN field (trailing spaces removed; a field that is empty
    or not all ASCII digits counts 0), modulo 10**digits, written zero-padded.
    ``sha256``: SHA-256 over the bytes of every detail line without its line
    terminator, concatenated in file order; the first ``digits`` hex
    characters, uppercase.
    """

    PAN_SUM = "pan_sum"
    SHA256 = "sha256"


class SecretPadding(Enum):
    """Padding of a secret field's clear value before encryption under the KEK."""

    NONE = "none"  # e.g. an ISO 9564 PIN block: exactly one cipher block
    ISO9797_M2 = "iso9797-m2"  # CVV / iCVV / track secrets: 80 00.. to a block boundary


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a header, detail or trailer record.

    Positions are 1-based (``start``/``column``) as issuers' specifications
    write them; :attr:`slice_start` / :attr:`slice_end` give the 0-based slice.

    Example:
        >>> f = FieldSpec("psn", FieldType.DIGITS, start=21, length=2)
        >>> (f.slice_start, f.slice_end)
        (20, 22)
    """

    name: str
    type: FieldType
    required: bool = False
    min_length: int = 0
    max_length: int | None = None
    start: int | None = None
    length: int | None = None
    column: int | None = None
    key: str | None = None
    secret: bool = False
    padding: SecretPadding = SecretPadding.NONE
    description: str = ""

    @property
    def slice_start(self) -> int:
        """0-based start offset in a fixed-width line."""
        if self.start is None:
            raise ConfigError(self.name, "field has no fixed-width start")
        return self.start - 1

    @property
    def slice_end(self) -> int:
        """0-based end offset (exclusive) in a fixed-width line."""
        if self.start is None or self.length is None:
            raise ConfigError(self.name, "field has no fixed-width start/length")
        return self.start - 1 + self.length

    @property
    def limit(self) -> int | None:
        """Maximum value length: ``max_length``, or the fixed-width ``length``."""
        return self.max_length if self.max_length is not None else self.length


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """A record kind (header, detail or trailer): its type marker and fields."""

    kind: str
    marker: str
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``; :class:`ConfigError` when absent."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise ConfigError(f"{self.kind}.fields", f"no field named {name!r}")

    def has(self, name: str) -> bool:
        """True when the record declares a field called ``name``."""
        return any(spec.name == name for spec in self.fields)


@dataclass(frozen=True, slots=True)
class HashTotalSpec:
    """Where the trailer keeps the hash total and how it is computed."""

    method: HashMethod
    field: str
    digits: int


@dataclass(frozen=True, slots=True)
class Layout:
    """A complete issuer input layout (see the module docstring)."""

    name: str
    version: str
    format: FileFormat
    encoding: str
    record_type: FieldSpec
    header: RecordSpec
    detail: RecordSpec
    trailer: RecordSpec
    count_field: str
    hash_total: HashTotalSpec
    record_length: int | None
    max_line_bytes: int
    delimiter: str
    batch_date_field: str | None
    description: str
    source: str

    @property
    def secret_fields(self) -> tuple[FieldSpec, ...]:
        """Detail fields marked ``secret: true`` (ciphertext under the issuer KEK)."""
        return tuple(f for f in self.detail.fields if f.secret)


# --- loading -------------------------------------------------------------------


def load_layout(name: str, config_dir: Path = Path("config")) -> Layout:
    """Load and check ``<config_dir>/layouts/<name>.yaml``.

    Example:
        >>> load_layout("demo-csv").format.value
        'csv'
    """
    if not isinstance(name, str) or not _NAME_RE.match(name.replace("-", "_")):
        raise ConfigError("layout", f"invalid layout name {name!r}")
    path = Path(config_dir) / "layouts" / f"{name}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read layout: {exc.strerror}") from exc
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from exc
    layout = parse_layout(data, source=str(path))
    if layout.name != name:
        raise ConfigError(f"{path}: name", f"is {layout.name!r}, file is named {name!r}")
    return layout


def _err(source: str, field: str, detail: str) -> ConfigError:
    return ConfigError(f"{source}: {field}", detail)


def _mapping(obj: Any, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _err(source, where, f"must be a mapping, got {type(obj).__name__}")
    return obj


def _check_keys(obj: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _err(source, where, f"unknown key(s) {unknown}")


def _int(obj: Mapping[str, Any], key: str, source: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _err(source, f"{where}.{key}", f"must be a non-negative integer, got {value!r}")
    return value


_FIELD_KEYS = {
    "name", "type", "required", "min_length", "max_length", "start", "length",
    "column", "key", "secret", "padding", "description",
}  # fmt: skip


def _parse_field(obj: Any, fmt: FileFormat, source: str, where: str) -> FieldSpec:
    obj = _mapping(obj, source, where)
    _check_keys(obj, _FIELD_KEYS, source, where)
    name = obj.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err(source, f"{where}.name", f"must match [a-z][a-z0-9_]*, got {name!r}")
    where = f"{where}({name})"
    try:
        ftype = FieldType(obj.get("type", "ans"))
    except ValueError:
        raise _err(
            source, f"{where}.type", f"unknown type {obj.get('type')!r}; "
            f"one of {[t.value for t in FieldType]}"
        ) from None
    try:
        padding = SecretPadding(obj.get("padding", "none"))
    except ValueError:
        raise _err(source, f"{where}.padding", f"unknown padding {obj.get('padding')!r}") from None
    for flag in ("required", "secret"):
        if not isinstance(obj.get(flag, False), bool):
            raise _err(source, f"{where}.{flag}", "must be true or false")
    spec = FieldSpec(
        name=name,
        type=ftype,
        required=bool(obj.get("required", False)),
        min_length=_int(obj, "min_length", source, where) or 0,
        max_length=_int(obj, "max_length", source, where),
        start=_int(obj, "start", source, where),
        length=_int(obj, "length", source, where),
        column=_int(obj, "column", source, where),
        key=obj.get("key"),
        secret=bool(obj.get("secret", False)),
        padding=padding,
        description=str(obj.get("description", "")),
    )
    if fmt is FileFormat.FIXED and (not spec.start or not spec.length):
        raise _err(source, where, "fixed-width fields need start >= 1 and length >= 1")
    if fmt is FileFormat.CSV and not spec.column:
        raise _err(source, where, "CSV fields need column >= 1")
    if fmt is FileFormat.JSON and not isinstance(spec.key, str):
        raise _err(source, where, "JSON fields need a string key")
    if spec.secret and spec.type is not FieldType.HEX:
        raise _err(source, f"{where}.type", "secret fields must be of type hex")
    if spec.max_length is not None and spec.max_length < spec.min_length:
        raise _err(source, where, "max_length is smaller than min_length")
    if spec.length is not None and spec.max_length is not None and spec.max_length > spec.length:
        raise _err(source, where, "max_length exceeds the fixed-width length")
    return spec


def _parse_record(
    obj: Any, kind: str, fmt: FileFormat, source: str
) -> RecordSpec:
    obj = _mapping(obj, source, kind)
    _check_keys(obj, {"marker", "fields"}, source, kind)
    marker = obj.get("marker")
    if not isinstance(marker, str) or not marker or not marker.isprintable():
        raise _err(source, f"{kind}.marker", f"must be a printable string, got {marker!r}")
    raw_fields = obj.get("fields", [])
    if not isinstance(raw_fields, list):
        raise _err(source, f"{kind}.fields", "must be a list")
    fields = tuple(
        _parse_field(f, fmt, source, f"{kind}.fields[{i}]") for i, f in enumerate(raw_fields)
    )
    names = [f.name for f in fields]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise _err(source, f"{kind}.fields", f"duplicate field names {dups}")
    return RecordSpec(kind=kind, marker=marker, fields=fields)


def _check_positions(
    layout_fields: tuple[FieldSpec, ...], rtype: FieldSpec, fmt: FileFormat,
    record_length: int | None, *, source: str, kind: str,
) -> None:
    if fmt is FileFormat.FIXED:
        assert record_length is not None
        taken = [(rtype.slice_start, rtype.slice_end, "record_type")]
        for f in layout_fields:
            if f.slice_end > record_length:
                raise _err(source, f"{kind}.{f.name}", f"ends at {f.slice_end}, beyond "
                           f"record_length {record_length}")
            taken.append((f.slice_start, f.slice_end, f.name))
        taken.sort()
        for (s1, e1, n1), (s2, _e2, n2) in itertools.pairwise(taken):
            if s2 < e1:
                raise _err(source, f"{kind}.{n2}", f"overlaps field {n1} (starts at {s1 + 1})")
    elif fmt is FileFormat.CSV:
        cols = [rtype.column] + [f.column for f in layout_fields]
        if len(set(cols)) != len(cols):
            raise _err(source, f"{kind}.fields", "two fields share a column")
    else:
        keys = [rtype.key] + [f.key for f in layout_fields]
        if len(set(keys)) != len(keys):
            raise _err(source, f"{kind}.fields", "two fields share a key")


_LAYOUT_KEYS = {
    "name", "version", "format", "encoding", "description", "record_type", "record_length",
    "max_line_bytes", "delimiter", "header", "detail", "trailer", "count_field",
    "hash_total", "batch_date_field",
}  # fmt: skip


def parse_layout(data: Any, source: str = "<layout>") -> Layout:
    """Build a :class:`Layout` from parsed YAML, checking every rule; ConfigError otherwise."""
    data = _mapping(data, source, "layout")
    _check_keys(data, _LAYOUT_KEYS, source, "layout")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _err(source, "name", "missing")
    try:
        fmt = FileFormat(data.get("format"))
    except ValueError:
        raise _err(source, "format", f"must be fixed, csv or json, got {data.get('format')!r}")\
            from None
    encoding = data.get("encoding", "ascii")
    if encoding != "ascii":
        raise _err(source, "encoding", f"only ascii is supported, got {encoding!r}")
    record_length = _int(data, "record_length", source, "layout")
    if fmt is FileFormat.FIXED and not record_length:
        raise _err(source, "record_length", "fixed-width layouts need record_length")
    default_max = (record_length + 2) if record_length else _DEFAULT_MAX_LINE
    max_line = _int(data, "max_line_bytes", source, "layout") or default_max
    if record_length and max_line < record_length + 2:
        raise _err(source, "max_line_bytes", "must be at least record_length + 2")
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise _err(source, "delimiter", "must be one character")
    rt_obj = dict(_mapping(data.get("record_type", {}), source, "record_type"))
    rt_obj.setdefault("name", "record_type")
    rt_obj.setdefault("type", "ans")
    rtype = _parse_field(rt_obj, fmt, source, "record_type")
    header = _parse_record(data.get("header"), "header", fmt, source)
    detail = _parse_record(data.get("detail"), "detail", fmt, source)
    trailer = _parse_record(data.get("trailer"), "trailer", fmt, source)
    for rec in (header, detail, trailer):
        _check_positions(rec.fields, rtype, fmt, record_length, source=source, kind=rec.kind)
        if fmt is FileFormat.FIXED and len(rec.marker) != rtype.length:
            raise _err(source, f"{rec.kind}.marker", f"must be {rtype.length} characters")
    if len({header.marker, detail.marker, trailer.marker}) != 3:
        raise _err(source, "marker", "header, detail and trailer markers must differ")
    for required in REQUIRED_DETAIL_FIELDS:
        if not detail.has(required):
            raise _err(source, "detail.fields", f"missing the {required!r} field")
    if detail.field("pan").type is not FieldType.PAN:
        raise _err(source, "detail.pan.type", "must be pan")
    count_field = data.get("count_field", "record_count")
    if not isinstance(count_field, str) or not trailer.has(count_field):
        raise _err(source, "count_field", f"trailer has no field {count_field!r}")
    ht = _mapping(data.get("hash_total"), source, "hash_total")
    _check_keys(ht, {"method", "field", "digits"}, source, "hash_total")
    try:
        method = HashMethod(ht.get("method"))
    except ValueError:
        raise _err(source, "hash_total.method", f"unknown method {ht.get('method')!r}") from None
    ht_field = ht.get("field", "hash_total")
    if not isinstance(ht_field, str) or not trailer.has(ht_field):
        raise _err(source, "hash_total.field", f"trailer has no field {ht_field!r}")
    digits = _int(ht, "digits", source, "hash_total")
    if not digits or digits > 64:
        raise _err(source, "hash_total.digits", "must be 1..64")
    if fmt is FileFormat.FIXED and trailer.field(ht_field).length != digits:
        raise _err(source, "hash_total.digits", "must equal the trailer field length")
    batch_date_field = data.get("batch_date_field")
    if batch_date_field is not None and not header.has(batch_date_field):
        raise _err(source, "batch_date_field", f"header has no field {batch_date_field!r}")
    return Layout(
        name=name,
        version=str(data.get("version", "1")),
        format=fmt,
        encoding=encoding,
        record_type=rtype,
        header=header,
        detail=detail,
        trailer=trailer,
        count_field=count_field,
        hash_total=HashTotalSpec(method=method, field=ht_field, digits=digits),
        record_length=record_length,
        max_line_bytes=max_line,
        delimiter=delimiter,
        batch_date_field=batch_date_field,
        description=str(data.get("description", "")),
        source=source,
    )
