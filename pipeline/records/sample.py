"""``cardprep sample``: write a realistic TEST input file for an issuer, optionally with errors.

The generator plays the issuer: it draws cards for the BINs of the issuer's
``sample`` section (16- and 19-digit PANs with valid Luhn digits, PSN present
and absent, ISO/IEC 7813 names, future expiry dates, service codes, a KDD for
some cards), encrypts the sensitive fields under the issuer KEK's *TEST*
value from ``config/demo/keys.yaml`` (refused unless that file says
``test_only: true``), and writes the file in the issuer's layout with a
correct header, trailer count and hash total.

Sensitive fields (docs/INPUT.md): ``pin_block`` = ISO 9564-1 format 0 PIN
block for the card's PAN, 3DES-ECB under the KEK (one block, no padding);
``cvv`` / ``icvv`` = the 3 ASCII digits, ISO/IEC 9797-1 padding method 2,
3DES-ECB under the KEK.

With ``error_rate > 0`` every error kind the validator knows is injected at
least once (and at least two duplicate cards), one kind per bad record, each
built so that exactly the intended reason fires.  The expected reason per
input line goes to ``<file>.expected.json`` (line -> code, no PAN), split
into validation-stage rejects and prepare-stage rejects (R071: ciphertext
that does not decrypt to well-padded data under the KEK).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "demo.dat"
    >>> s = write_sample("demo", 20, out, seed=1, batch_date=date(2025, 1, 15))
    >>> s.records, sum(s.per_product.values())
    (20, 20)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import secrets
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.padding import pad_iso9797_m2
from pipeline.errors import ConfigError
from pipeline.records.issuers import IssuerConfig, load_issuer
from pipeline.records.layout import FileFormat, Layout, RecordSpec, load_layout
from pipeline.records.luhn import luhn_check_digit
from pipeline.records.parse import FILE_SEQ_FIELD, HashTotal
from pipeline.records.reasons import RejectReason as R
from pipeline.yamlconf import safe_load

__all__ = [
    "SampleSummary",
    "default_file_seq",
    "default_sample_path",
    "pin_block_format0",
    "write_sample",
]

_EXT = {FileFormat.FIXED: "dat", FileFormat.CSV: "csv", FileFormat.JSON: "jsonl"}
_KEK_ALGORITHMS = {"tdes": Algorithm.TDES, "aes": Algorithm.AES, "sm4": Algorithm.SM4}

_SURNAMES = (
    "SMITH", "JOHNSON", "O'BRIEN", "GARCIA", "MULLER", "NGUYEN", "WANG", "LI", "ZHANG",
    "DUPONT", "VAN DER BERG", "SMITH-JONES", "KOWALSKI", "ROSSI", "TANAKA", "OKAFOR",
    "MACDONALD", "D'ANGELO", "SILVA", "CHEN", "IVANOV", "LOPEZ", "BROWN", "ST. JAMES",
)  # fmt: skip
_GIVEN = (
    "JOHN", "MARY", "ANN-MARIE", "WEI", "FATIMA", "JOSE", "PIERRE", "AIKO", "OLUWASEUN",
    "JEAN-LUC", "LIN", "SVETLANA", "ROBERT", "ELIZABETH", "JAMES", "PRIYA", "HANS",
)  # fmt: skip
_TITLES = ("MR", "MRS", "MS", "DR.", "PROF.")
_DEFAULT_SEQ_DIGITS = 6


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`write_sample` wrote (no PAN anywhere)."""

    path: Path
    expected_path: Path
    issuer: str
    layout: str
    batch_date: date
    seed: int
    records: int
    per_product: Mapping[str, int]
    injected: Mapping[str, int]
    expected_rejects: Mapping[int, str] = field(default_factory=dict)
    expected_prepare_rejects: Mapping[int, str] = field(default_factory=dict)
    file_seq: str = ""  # the header's file sequence number ("" when the layout has none)

    @property
    def valid(self) -> int:
        """Records expected to pass validation (prepare-stage rejects included)."""
        return self.records - len(self.expected_rejects)


def pin_block_format0(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0 PIN block (clear): PIN field XOR PAN field.

    PIN field: ``0 || len || PIN || F..F`` (16 nibbles); PAN field: ``0000 ||``
    the 12 rightmost PAN digits excluding the check digit.

    Example (published worked example, tests/vectors/pin_block.json):
        >>> pin_block_format0("1234", "43219876543210987").hex().upper()
        '0412AC89ABCDEF67'
    """
    if not (4 <= len(pin) <= 12 and pin.isdigit()) or not pan.isdigit() or len(pan) < 13:
        raise ConfigError("pin_block", "PIN must be 4..12 digits and PAN 13..19 digits")
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return bytes(a ^ b for a, b in zip(pin_field, pan_field, strict=True))


def default_sample_path(issuer: IssuerConfig, layout: Layout, batch_date: date, tag: str) -> Path:
    """``<issuer inbound>/<issuer>-<YYYYMMDD>-<tag>.<ext>``, e.g. var/demo/inbound/demo/..."""
    return issuer.inbound / f"{issuer.id}-{batch_date:%Y%m%d}-{tag}.{_EXT[layout.format]}"


def default_file_seq(
    issuer_id: str, seed: int, cards: int, error_rate: float, digits: int = _DEFAULT_SEQ_DIGITS
) -> str:
    """The header ``file_seq`` of a sample drawn with these arguments, ``digits`` wide.

    An issuer numbers its deliveries, and cardprep refuses a second file with
    the header (issuer id, file date, file sequence) of one it already took in
    (docs/INPUT.md "Deliveries").  Every sample used to say ``000001``, so two
    samples of one issuer and date were one delivery.  The number is derived
    from (issuer, seed, cards, error rate): samples drawn with other arguments
    are other deliveries, and the same arguments still give the same bytes.
    Range 1 .. 10**digits - 1, zero-padded (0 is not used as a sequence).

    Example:
        >>> default_file_seq("demo", 1, 20, 0.0)
        '192173'
        >>> default_file_seq("demo", 1, 20, 0.0) != default_file_seq("demo", 2, 20, 0.0)
        True
    """
    text = f"{issuer_id}|{seed}|{cards}|{error_rate!r}".encode("ascii", "replace")
    value = int.from_bytes(hashlib.sha256(text).digest()[:8], "big")
    return str(1 + value % (10**digits - 1)).zfill(digits)


def _seq_digits(layout: Layout) -> int:
    spec = layout.header.field(FILE_SEQ_FIELD)
    return spec.length or spec.max_length or _DEFAULT_SEQ_DIGITS


def _file_seq(
    issuer: IssuerConfig, layout: Layout, requested: str | int | None, derived: Callable[[int], str]
) -> str:
    """The sample's ``file_seq``: ``requested`` (checked against the field) or ``derived``."""
    if FILE_SEQ_FIELD in dict(issuer.sample.get("header", {})):
        raise ConfigError(
            f"{issuer.source}: sample.header.{FILE_SEQ_FIELD}",
            "a fixed file sequence makes every sample the same delivery; the generator "
            "numbers samples itself (write_sample file_seq=...)",
        )
    if not layout.header.has(FILE_SEQ_FIELD):
        if requested is not None:
            raise ConfigError("file_seq", f"layout {layout.name} has no header field "
                              f"{FILE_SEQ_FIELD!r}")  # fmt: skip
        return ""
    digits = _seq_digits(layout)
    if requested is None:
        return derived(digits)
    text = str(requested) if isinstance(requested, int) else requested
    # isascii: str.isdigit() also accepts other scripts' digits ("\u0664\u0662") and
    # superscripts, which are not the layout's ASCII digits (the writer failed on them)
    if isinstance(requested, bool) or not (text.isascii() and text.isdigit()) or len(text) > digits:
        raise ConfigError("file_seq", f"must be 1..{digits} digits, got {requested!r}")
    return text.zfill(digits)


def load_test_key(label: str, config_dir: Path) -> bytes:
    """The clear TEST value of ``label`` from ``config/demo/keys.yaml`` (test-only file)."""
    path = Path(config_dir) / "demo" / "keys.yaml"
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read the demo keys: {exc}") from exc
    if not isinstance(data, dict) or data.get("test_only") is not True:
        raise ConfigError(str(path), "sample data is only encrypted under keys of a file "
                          "marked test_only: true")
    for entry in data.get("keys", []):
        if isinstance(entry, dict) and entry.get("label") == label:
            try:
                return bytes.fromhex(str(entry["value"]))
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"{path}: {label}", "value is not hexadecimal") from exc
    raise ConfigError(str(path), f"no TEST key labelled {label!r}")


def _months_after(d: date, months: int) -> str:
    """YYMM of the month ``months`` after ``d``'s month (negative: before)."""
    index = d.year * 12 + d.month - 1 + months
    return f"{(index // 12) % 100:02d}{index % 12 + 1:02d}"


def _next_yymm(yymm: str) -> str:
    yy, mm = int(yymm[:2]), int(yymm[2:])
    return f"{yy + (mm == 12):02d}{mm % 12 + 1:02d}" if yy < 99 or mm < 12 else "9912"


class _Formatter:
    """Renders field values as one line (bytes, no terminator) in a layout."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def render(
        self, spec: RecordSpec, values: Mapping[str, str], marker: str | None = None
    ) -> bytes:
        lay = self.layout
        marker = spec.marker if marker is None else marker
        if lay.format is FileFormat.FIXED:
            assert lay.record_length is not None
            buf = bytearray(b" " * lay.record_length)
            rt = lay.record_type
            buf[rt.slice_start:rt.slice_end] = marker.encode("latin-1")
            for f in spec.fields:
                value = values.get(f.name, "").encode("latin-1")[: f.length]
                buf[f.slice_start:f.slice_start + len(value)] = value
            return bytes(buf)
        if lay.format is FileFormat.CSV:
            width = max([lay.record_type.column or 1] + [f.column or 1 for f in spec.fields])
            row = [""] * width
            row[(lay.record_type.column or 1) - 1] = marker
            for f in spec.fields:
                row[(f.column or 1) - 1] = values.get(f.name, "")
            out = io.StringIO()
            csv.writer(out, delimiter=lay.delimiter, lineterminator="").writerow(row)
            return out.getvalue().encode("latin-1")
        obj: dict[str, str] = {lay.record_type.key or "type": marker}
        for f in spec.fields:
            text = values.get(f.name, "")
            if text:
                obj[f.key or f.name] = text
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("latin-1")


@dataclass
class _Card:
    values: dict[str, str]
    product: str | None
    marker: str | None = None  # record-type override
    line_edit: Callable[[bytes], bytes] | None = None


class _Generator:
    """Draws cards and error variants for one issuer (deterministic for a seed)."""

    def __init__(self, issuer: IssuerConfig, layout: Layout, batch_date: date,
                 rng: random.Random, kek: BlockCipher) -> None:
        self.issuer = issuer
        self.layout = layout
        self.batch_date = batch_date
        self.rng = rng
        self.kek = kek
        bins = issuer.sample.get("bins")
        if not isinstance(bins, list) or not bins:
            raise ConfigError(f"{issuer.source}: sample.bins", "needs at least one BIN entry")
        self.bins: list[dict[str, Any]] = []
        for entry in bins:
            bin_ = str(entry.get("bin", ""))
            length = int(entry.get("pan_length", 16))
            if issuer.product_for_pan(bin_ + "0" * 13) is None or not 13 <= length <= 19:
                raise ConfigError(f"{issuer.source}: sample.bins", f"BIN {bin_!r} is not in "
                                  "bins or its pan_length is not 13..19")
            k = length - len(bin_) - 1
            self.bins.append({
                "bin": bin_, "k": k, "next": rng.randrange(10**k), "step": 7919,
                "weight": float(entry.get("weight", 1)),
                "service_codes": [str(s) for s in entry.get("service_codes", ["201"])],
            })
        self.weights = [b["weight"] for b in self.bins]
        self.has = {f.name for f in layout.detail.fields}

    def pan(self, entry: dict[str, Any]) -> str:
        """Next PAN of a BIN: a full-period walk (step coprime to 10) so PANs never repeat."""
        k: int = entry["k"]
        account: int = entry["next"]
        entry["next"] = (account + entry["step"]) % 10**k
        partial = str(entry["bin"]) + str(account).zfill(k)
        return partial + luhn_check_digit(partial)

    def name(self) -> str:
        rng = self.rng
        style = rng.random()
        surname, given = rng.choice(_SURNAMES), rng.choice(_GIVEN)
        if style < 0.6:
            name = f"{surname}/{given}"
        elif style < 0.85:
            name = f"{given} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {surname}"
        else:
            name = f"{rng.choice(_TITLES)} {given} {surname}"
        return name[:26].rstrip()

    def encrypt_padded(self, clear: bytes) -> str:
        return self.kek.encrypt_ecb(pad_iso9797_m2(clear, self.kek.block_size)).hex().upper()

    def card(self) -> _Card:
        rng = self.rng
        entry = rng.choices(self.bins, self.weights)[0]
        pan = self.pan(entry)
        max_dd = min(13, 37 - 8 - len(pan))
        values = {
            "pan": pan,
            "psn": rng.choice(("00", "01", "01", "02", "")),
            "expiry": _months_after(self.batch_date, rng.randrange(12, 61)),
            "effective": _months_after(self.batch_date, 0) if rng.random() < 0.5 else "",
            "service_code": rng.choice(entry["service_codes"]),
            "name": self.name(),
            "discretionary": "".join(rng.choice("0123456789")
                                     for _ in range(rng.randrange(5, max_dd + 1))),
            "kdd": rng.randbytes(10).hex().upper() if rng.random() < 0.4 else "",
            "cvv": self.encrypt_padded(f"{rng.randrange(1000):03d}".encode("ascii")),
            "icvv": self.encrypt_padded(f"{rng.randrange(1000):03d}".encode("ascii")),
            "customer_ref": f"CUST{rng.randrange(10**8):08d}",
        }
        if rng.random() < 0.7:
            pin = "".join(rng.choice("0123456789") for _ in range(rng.choice((4, 4, 4, 6))))
            values["pin_block"] = self.kek.encrypt_ecb(pin_block_format0(pin, pan)).hex().upper()
        values = {k: v for k, v in values.items() if k in self.has}
        return _Card(values, self.issuer.product_for_pan(pan))

    def undecryptable(self) -> str:
        """A block whose decryption under the KEK lacks ISO 9797-1 method 2 padding."""
        while True:
            block = self.rng.randbytes(self.kek.block_size)
            clear = self.kek.decrypt_ecb(block).rstrip(b"\x00")
            if not clear or clear[-1] != 0x80:
                return block.hex().upper()


# --- error kinds: (reason, applies to formats, mutation) ---------------------------------


def _set(**changes: str) -> Callable[[_Generator, _Card], None]:
    def mutate(gen: _Generator, card: _Card) -> None:
        card.values.update(changes)
    return mutate


def _luhn(gen: _Generator, card: _Card) -> None:
    pan = card.values["pan"]
    card.values["pan"] = pan[:-1] + str((int(pan[-1]) + 1) % 10)


def _short_pan(gen: _Generator, card: _Card) -> None:
    partial = card.values["pan"][:11]
    card.values["pan"] = partial + luhn_check_digit(partial)


def _letter_pan(gen: _Generator, card: _Card) -> None:
    pan = card.values["pan"]
    card.values["pan"] = pan[:7] + "A" + pan[8:]


def _past(gen: _Generator, card: _Card) -> None:
    card.values["expiry"] = _months_after(gen.batch_date, -gen.rng.randrange(1, 24))
    card.values["effective"] = ""


def _bad_month(gen: _Generator, card: _Card) -> None:
    card.values["expiry"] = card.values["expiry"][:2] + gen.rng.choice(("00", "13", "99"))


def _effective_after(gen: _Generator, card: _Card) -> None:
    card.values["effective"] = _next_yymm(card.values["expiry"])


def _lowercase_name(gen: _Generator, card: _Card) -> None:
    card.values["name"] = card.values["name"].lower()


def _unknown_bin(gen: _Generator, card: _Card) -> None:
    pan = card.values["pan"]
    for first in ("555555", "371449", "601100", "354000", "999999"):
        partial = first + pan[6:-1]
        if gen.issuer.product_for_pan(partial) is None:
            card.values["pan"] = partial + luhn_check_digit(partial)
            card.product = None
            return
    raise ConfigError("sample", "every candidate BIN is configured; cannot inject R040")


def _non_ascii(gen: _Generator, card: _Card) -> None:
    name = card.values["name"]
    card.values["name"] = name[0] + gen.rng.choice("\xc9\xd6\xf1") + name[2:]


def _control(gen: _Generator, card: _Card) -> None:
    name = card.values["name"]
    card.values["name"] = name[0] + gen.rng.choice("\x07\x1b\x00") + name[2:]


def _record_type(gen: _Generator, card: _Card) -> None:
    card.marker = "X"


def _wrong_length(gen: _Generator, card: _Card) -> None:
    if gen.layout.format is FileFormat.FIXED:
        card.line_edit = lambda line: line[:-7] if gen.rng.random() < 0.5 else line + b"OVERLONG"
    elif gen.layout.format is FileFormat.CSV:
        card.line_edit = lambda line: line + gen.layout.delimiter.encode() + b"EXTRA"
    else:
        card.values["customer_ref"] = "X" * (gen.layout.max_line_bytes + 10)


def _syntax(gen: _Generator, card: _Card) -> None:
    if gen.layout.format is FileFormat.CSV:
        d = gen.layout.delimiter
        name = card.values["name"]
        card.line_edit = lambda line: line.replace(f"{d}{name}{d}".encode("latin-1"),
                                                   f'{d}"{name}{d}'.encode("latin-1"), 1)
    else:
        card.line_edit = lambda line: line[:-1]


def _kdd_short(gen: _Generator, card: _Card) -> None:
    card.values["kdd"] = gen.rng.randbytes(9).hex().upper()


def _kdd_not_hex(gen: _Generator, card: _Card) -> None:
    card.values["kdd"] = "KDD" + gen.rng.randbytes(10).hex().upper()[3:]


def _cvv_bad_hex(gen: _Generator, card: _Card) -> None:
    cvv = card.values["cvv"]
    card.values["cvv"] = gen.rng.choice((cvv[:14], cvv[:15] + "G", cvv[:-2]))


def _cvv_undecryptable(gen: _Generator, card: _Card) -> None:
    card.values["cvv"] = gen.undecryptable()


def _duplicate(gen: _Generator, card: _Card) -> None:  # filled in by write_sample
    raise AssertionError("duplicates are made from the pool of earlier valid cards")


_ALL = frozenset(FileFormat)
_ERROR_KINDS: tuple[tuple[R, str, frozenset[FileFormat], Callable[[_Generator, _Card], None]],
                    ...] = (
    (R.PAN_LUHN, "check digit off by one", _ALL, _luhn),
    (R.PAN_LENGTH, "12-digit PAN", _ALL, _short_pan),
    (R.PAN_NOT_DIGITS, "letter in the PAN", _ALL, _letter_pan),
    (R.PSN_FORMAT, "PSN 'A1'", _ALL, _set(psn="A1")),
    (R.EXPIRY_FORMAT, "expiry month 00/13/99", _ALL, _bad_month),
    (R.EXPIRY_PAST, "expiry before the batch month", _ALL, _past),
    (R.EFFECTIVE_DATE, "effective date after expiry", _ALL, _effective_after),
    (R.SERVICE_CODE, "service code 301", _ALL, _set(service_code="301")),
    (R.NAME_CHARSET, "lowercase name", _ALL, _lowercase_name),
    (R.NAME_LENGTH, "1-character name", _ALL, _set(name="X")),
    (R.UNKNOWN_BIN, "BIN not configured", _ALL, _unknown_bin),
    (R.DUPLICATE_CARD, "PAN+PSN of an earlier card", _ALL, _duplicate),
    (R.DUPLICATE_CARD, "PAN+PSN of an earlier card", _ALL, _duplicate),
    (R.FIELD_LENGTH, "9-byte KDD", _ALL, _kdd_short),
    (R.FIELD_MISSING, "blank CVV", _ALL, _set(cvv="")),
    (R.CHARSET, "non-ASCII byte in the name", _ALL, _non_ascii),
    (R.CHARSET, "control character in the name",
     frozenset({FileFormat.FIXED, FileFormat.CSV}), _control),
    (R.RECORD_TYPE, "record type 'X'", _ALL, _record_type),
    (R.RECORD_LENGTH, "line too short/long", _ALL, _wrong_length),
    (R.FIELD_FORMAT, "KDD not hexadecimal", _ALL, _kdd_not_hex),
    (R.RECORD_SYNTAX, "unbalanced quote / truncated JSON",
     frozenset({FileFormat.CSV, FileFormat.JSON}), _syntax),
    (R.SENSITIVE_FORMAT, "CVV ciphertext not whole blocks", _ALL, _cvv_bad_hex),
    (R.SENSITIVE_UNDECRYPTABLE, "CVV ciphertext with bad padding under the KEK", _ALL,
     _cvv_undecryptable),
)


def write_sample(
    issuer_id: str,
    cards: int,
    out: Path | None = None,
    *,
    error_rate: float = 0.0,
    seed: int | None = None,
    batch_date: date | None = None,
    config_dir: Path = Path("config"),
    file_seq: str | int | None = None,
) -> SampleSummary:
    """Write ``cards`` detail records for ``issuer_id`` to ``out`` and its expected-rejects file.

    ``out`` defaults to :func:`default_sample_path`.  The file is written to a
    temporary name and renamed, so a partial file never looks complete.
    ``file_seq`` is the header's file sequence number (digits, zero-padded to
    the field); by default :func:`default_file_seq` of the arguments, so that
    two samples are two deliveries (docs/INPUT.md "Deliveries").
    """
    if isinstance(cards, bool) or not isinstance(cards, int) or cards < 1:
        raise ConfigError("cards", f"must be a positive integer, got {cards!r}")
    if not 0.0 <= error_rate <= 1.0:
        raise ConfigError("error_rate", f"must be within 0..1, got {error_rate!r}")
    issuer = load_issuer(issuer_id, config_dir)
    layout = load_layout(issuer.layout, config_dir)
    batch_date = batch_date or date.today()
    seed = secrets.randbelow(2**31) if seed is None else seed
    rng = random.Random(seed)
    kek = BlockCipher(_KEK_ALGORITHMS[issuer.kek_algorithm],
                      load_test_key(issuer.kek, config_dir))
    gen = _Generator(issuer, layout, batch_date, rng, kek)
    path = Path(out) if out is not None else default_sample_path(
        issuer, layout, batch_date, f"s{seed}-n{cards}")

    kinds = [k for k in _ERROR_KINDS if layout.format in k[2]]
    plan: dict[int, tuple[R, str, Callable[[_Generator, _Card], None]]] = {}
    if error_rate > 0 and cards > 1:
        n_err = min(cards - 1, max(round(cards * error_rate), len(kinds)))
        positions = sorted(rng.sample(range(1, cards), n_err))
        order = list(kinds)
        rng.shuffle(order)
        while len(order) < n_err:
            order.append(rng.choice(kinds))
        plan = {p: (k[0], k[1], k[3]) for p, k in zip(positions, order, strict=False)}

    seq = _file_seq(
        issuer,
        layout,
        file_seq,
        lambda digits: default_file_seq(issuer.id, seed, cards, error_rate, digits),
    )
    header_values = {str(k): str(v) for k, v in dict(issuer.sample.get("header", {})).items()}
    if seq:
        header_values[FILE_SEQ_FIELD] = seq
    if layout.batch_date_field:
        header_values[layout.batch_date_field] = f"{batch_date:%Y%m%d}"
    fmt = _Formatter(layout)
    total = HashTotal(layout)
    per_product: Counter[str] = Counter()
    injected: Counter[str] = Counter()
    expected: dict[int, str] = {}
    expected_prepare: dict[int, str] = {}
    pool: deque[tuple[str, str]] = deque(maxlen=1000)  # recent valid (pan, psn) for duplicates

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb", buffering=1 << 20) as fh:
            fh.write(fmt.render(layout.header, header_values) + b"\n")
            for i in range(cards):
                line_no = i + 2
                card = gen.card()
                kind = plan.get(i)
                if kind is not None and kind[0] is R.DUPLICATE_CARD and not pool:
                    kind = (R.PAN_LUHN, "check digit off by one", _luhn)
                if kind is None:
                    pool.append((card.values["pan"], card.values.get("psn", "")))
                elif kind[0] is R.DUPLICATE_CARD:
                    pan, psn = rng.choice(pool)
                    card.values["pan"], card.values["psn"] = pan, psn
                    dd = card.values.get("discretionary", "")
                    card.values["discretionary"] = dd[: 37 - 8 - len(pan)]
                    card.product = issuer.product_for_pan(pan)
                else:
                    kind[2](gen, card)
                if kind is not None:
                    injected[f"{kind[0]} ({kind[1]})"] += 1
                    if kind[0].stage == "validate":
                        expected[line_no] = kind[0].code
                    else:
                        expected_prepare[line_no] = kind[0].code
                        pool.append((card.values["pan"], card.values.get("psn", "")))
                if line_no not in expected:
                    per_product[card.product or "?"] += 1
                line = fmt.render(layout.detail, card.values, card.marker)
                if card.line_edit is not None:
                    line = card.line_edit(line)
                total.add(line)
                fh.write(line + b"\n")
            trailer = {layout.count_field: str(cards), layout.hash_total.field: total.value}
            if layout.format is FileFormat.FIXED:
                trailer[layout.count_field] = trailer[layout.count_field].zfill(
                    layout.trailer.field(layout.count_field).length or 1)
            fh.write(fmt.render(layout.trailer, trailer) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

    summary = SampleSummary(
        path=path,
        expected_path=path.with_name(path.name + ".expected.json"),
        issuer=issuer.id,
        layout=layout.name,
        batch_date=batch_date,
        seed=seed,
        records=cards,
        per_product=MappingProxyType(dict(sorted(per_product.items()))),
        injected=MappingProxyType(dict(sorted(injected.items()))),
        expected_rejects=MappingProxyType(expected),
        expected_prepare_rejects=MappingProxyType(expected_prepare),
        file_seq=seq,
    )
    _write_expected(summary)
    return summary


def _write_expected(s: SampleSummary) -> None:
    doc = {
        "file": s.path.name,
        "issuer": s.issuer,
        "layout": s.layout,
        "batch_date": s.batch_date.isoformat(),
        "seed": s.seed,
        "file_seq": s.file_seq,
        "records": s.records,
        "valid": s.valid,
        "valid_per_product": dict(s.per_product),
        "injected": dict(s.injected),
        "expected_rejects": {str(k): v for k, v in sorted(s.expected_rejects.items())},
        "expected_prepare_rejects": {
            str(k): v for k, v in sorted(s.expected_prepare_rejects.items())
        },
    }
    tmp = s.expected_path.with_name(f".{s.expected_path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="ascii")
    os.replace(tmp, s.expected_path)
