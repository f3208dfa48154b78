"""Generate the bad-input corpus: tests/corpus/cases/** and tests/corpus/manifest.json.

Run from the repository root after a layout, the sample generator or the
demo issuers change::

    .venv/bin/python tests/corpus/make_corpus.py

``tests/reliability/test_corpus.py`` checks the committed files are exactly
what this script produces, so a stale corpus fails CI with this command in
the message.

How the cases are built (issue 8, "Bad input corpus"):

1. ``cardprep sample`` (:func:`pipeline.records.sample.write_sample`) writes a
   small *valid* base file per demo issuer (fixed-width, CSV, JSON Lines),
   with a fixed seed and batch date.
2. This script decodes the base file with its *own* layout-driven codec
   (not the project's parser), mutates one thing per case (a field value, a
   raw byte, the framing), re-encodes, and writes a trailer whose count and
   hash total it computes itself (pan_sum: the sum of the last 10 digits of
   every all-digit PAN field mod 10**digits, CSV rows read leniently; sha256:
   SHA-256 over the detail lines without terminators, uppercase hex), so each
   case tests exactly one
   thing.  Secret-field variants (wrong KEK, flipped bit, bad padding) are
   encrypted with ``cryptography``'s 3DES directly under the TEST KEK of
   config/demo/keys.yaml, and checked to really fail ISO/IEC 9797-1 method 2
   padding (or the ISO 9564 format 0 layout for PIN blocks) before use.
3. The manifest records, per case, the expected outcome: a batch-level
   ``InputFileCheckError`` check id, or the reject code per input line at
   validation (``rejects``) and prepare (``prepare_rejects``) time.  The
   expectations are written from the specifications (ISO/IEC 7812, 7813,
   9564, 9797-1, EMV Book 3 5F20) and the framing rules of the layouts,
   not by running the parser.

No case contains a real PAN or key: PANs come from the demo BINs of the
sample generator, and every key is a public TEST value.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.records.issuers import load_issuer  # noqa: E402
from pipeline.records.layout import FileFormat, Layout, RecordSpec, load_layout  # noqa: E402
from pipeline.records.sample import write_sample  # noqa: E402

CORPUS = Path(__file__).resolve().parent
CONFIG = ROOT / "config"
BATCH_DATE = date(2025, 1, 15)
SEED = 8
BASE_CARDS = 5
BASE_FILE_SEQ = "000001"  # the header's file_seq of every case (see load_base)
ISSUERS = ("demo", "demo-csv", "demo-json")
EXT = {FileFormat.FIXED: "dat", FileFormat.CSV: "csv", FileFormat.JSON: "jsonl"}
SHORT = {FileFormat.FIXED: "fixed", FileFormat.CSV: "csv", FileFormat.JSON: "json"}
#: Cases that also run through the whole prepare path (kept few: RSA keygen costs).
FULL_PATH = frozenset({
    "valid-base", "luhn-last-digit", "duplicate-pan-psn", "unknown-bin-555555",
    "cvv-wrong-kek", "cvv-bit-flip", "cvv-bad-padding", "icvv-wrong-kek",
    "pin-block-wrong-kek", "name-lowercase", "service-code-301", "expiry-past",
    "kdd-9-bytes", "crlf-throughout", "trailer-no-final-newline",
})  # fmt: skip


def _demo_key(label: str) -> bytes:
    text = (CONFIG / "demo" / "keys.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text)["test_only"] is True
    data = yaml.load(text, Loader=yaml.BaseLoader)
    return bytes.fromhex(next(k["value"] for k in data["keys"] if k["label"] == label))


def _tdes(key: bytes) -> Cipher[Any]:
    return Cipher(TripleDES(key + key[:8] if len(key) == 16 else key), modes.ECB())


def tdes_encrypt(key: bytes, data: bytes) -> bytes:
    """3DES-ECB with K1||K2||K1 expansion (independent of pipeline.crypto)."""
    enc = _tdes(key).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_decrypt(key: bytes, data: bytes) -> bytes:
    dec = _tdes(key).decryptor()
    return dec.update(data) + dec.finalize()


def well_padded(clear: bytes) -> bool:
    """ISO/IEC 9797-1 padding method 2: data || 80 || 00..00 (at least the 80)."""
    stripped = clear.rstrip(b"\x00")
    return bool(stripped) and stripped[-1] == 0x80


def pin_block_ok(block: bytes, pan: str) -> bool:
    """ISO 9564-1 format 0: (PIN field XOR PAN field) = 0 L PIN.. F.. with 4 <= L <= 12."""
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    nibbles = bytes(a ^ b for a, b in zip(block, pan_field, strict=True)).hex().upper()
    if nibbles[0] != "0":
        return False
    n = int(nibbles[1], 16)
    return 4 <= n <= 12 and nibbles[2:2 + n].isdigit() and set(nibbles[2 + n:]) <= {"F"}


def luhn_ok(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def luhn_digit(partial: str) -> str:
    return next(str(d) for d in range(10) if luhn_ok(partial + str(d)))


# --- an independent, layout-driven line codec -------------------------------------------


class Codec:
    """Decode/encode lines of one layout (fixed slices, CSV columns, JSON keys)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.fmt = layout.format

    def decode(self, spec: RecordSpec, line: bytes) -> dict[str, str]:
        text = line.decode("latin-1")
        if self.fmt is FileFormat.FIXED:
            return {f.name: text[f.slice_start:f.slice_end].rstrip(" ") for f in spec.fields}
        if self.fmt is FileFormat.CSV:
            row = next(csv.reader([text], delimiter=self.layout.delimiter))
            return {f.name: row[(f.column or 1) - 1] if len(row) >= (f.column or 1) else ""
                    for f in spec.fields}  # fmt: skip
        obj = json.loads(text)
        return {f.name: str(obj.get(f.key or f.name, "")) for f in spec.fields}

    def encode(self, spec: RecordSpec, values: dict[str, str], marker: str | None = None,
               raw_json: dict[str, Any] | None = None) -> bytes:  # fmt: skip
        lay = self.layout
        marker = spec.marker if marker is None else marker
        if self.fmt is FileFormat.FIXED:
            assert lay.record_length is not None
            buf = bytearray(b" " * lay.record_length)
            rt = lay.record_type
            buf[rt.slice_start:rt.slice_end] = marker.encode("latin-1")
            for f in spec.fields:
                v = values.get(f.name, "").encode("latin-1")
                assert f.length is not None
                if len(v) > f.length:
                    raise ValueError(f"{f.name}: {len(v)} > {f.length} in a fixed layout")
                buf[f.slice_start:f.slice_start + len(v)] = v
            return bytes(buf)
        if self.fmt is FileFormat.CSV:
            width = max([lay.record_type.column or 1] + [f.column or 1 for f in spec.fields])
            row = [""] * width
            row[(lay.record_type.column or 1) - 1] = marker
            for f in spec.fields:
                row[(f.column or 1) - 1] = values.get(f.name, "")
            out = io.StringIO()
            csv.writer(out, delimiter=lay.delimiter, lineterminator="").writerow(row)
            return out.getvalue().encode("latin-1")
        obj: dict[str, Any] = {lay.record_type.key or "type": marker}
        for f in spec.fields:
            if values.get(f.name, ""):
                obj[f.key or f.name] = values[f.name]
        if raw_json:
            obj.update(raw_json)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def pan_of(self, line: bytes) -> str:
        """The raw PAN field of a detail line ('' when the line cannot be read)."""
        pan = self.layout.detail.field("pan")
        try:
            if self.fmt is FileFormat.FIXED:
                return line[pan.slice_start:pan.slice_end].decode("latin-1").rstrip(" ")
            if self.fmt is FileFormat.CSV:
                # lenient, as an issuer's hash total sees it: a row with a broken quote
                # later on still has its PAN (docs/INPUT.md, pan_sum)
                row = next(csv.reader([line.decode("latin-1")]))
                return row[(pan.column or 1) - 1] if len(row) >= (pan.column or 1) else ""
            obj = json.loads(line)
            value = obj.get(pan.key or "pan") if isinstance(obj, dict) else None
            return value if isinstance(value, str) else ""
        except (csv.Error, ValueError, StopIteration):
            return ""

    def hash_total(self, details: list[bytes]) -> str:
        spec = self.layout.hash_total
        if spec.method.value == "sha256":
            return hashlib.sha256(b"".join(details)).hexdigest().upper()[: spec.digits]
        total = 0
        for line in details:
            pan = self.pan_of(line)
            if pan and pan.isascii() and pan.isdigit():
                total += int(pan[-10:])
        return str(total % 10**spec.digits).zfill(spec.digits)

    def trailer(self, details: list[bytes], *, count: str | None = None,
                hash_total: str | None = None) -> bytes:  # fmt: skip
        lay = self.layout
        n = str(len(details)) if count is None else count
        if self.fmt is FileFormat.FIXED and count is None:
            length = lay.trailer.field(lay.count_field).length or 1
            n = n.zfill(length)
        values = {lay.count_field: n,
                  lay.hash_total.field: self.hash_total(details) if hash_total is None
                  else hash_total}  # fmt: skip
        return self.encode(lay.trailer, values)


# --- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    slug: str
    category: str
    description: str
    data: bytes
    expect: dict[str, Any]
    extra_bins: dict[str, str] = field(default_factory=dict)


@dataclass
class Base:
    """The valid base file of one issuer, decoded."""

    issuer: str
    layout: Layout
    codec: Codec
    header: bytes
    details: list[dict[str, str]]
    kek: bytes
    wrong_kek: bytes

    def line(self, values: dict[str, str]) -> bytes:
        return self.codec.encode(self.layout.detail, values)

    def assemble(self, details: list[bytes], *, eol: bytes = b"\n", **trailer: str) -> bytes:
        lines = [self.header, *details, self.codec.trailer(details, **trailer)]
        return eol.join(lines) + eol


LineEdit = Callable[[bytes], bytes]
Mutation = Callable[[Base, dict[str, str]], "dict[str, str] | LineEdit | None"]


def _record_case(base: Base, slug: str, code: str | None, description: str,
                 mutate: Callable[[Base, dict[str, str]], LineEdit | None], *,
                 index: int = 2, stage: str = "validate") -> Case:  # fmt: skip
    """One bad record at detail ``index`` (line index + 2); the trailer stays consistent."""
    values = [dict(d) for d in base.details]
    edit = mutate(base, values[index])
    lines = [base.line(v) for v in values]
    if edit is not None:
        lines[index] = edit(lines[index])
    expect: dict[str, Any] = {"records": len(lines), "rejects": {}, "prepare_rejects": {}}
    if code is not None:
        expect["rejects" if stage == "validate" else "prepare_rejects"][str(index + 2)] = code
    category = f"record/{code}" if code else "record/valid"
    return Case(slug, category, description, base.assemble(lines), expect)


def _set(**changes: str) -> Callable[[Base, dict[str, str]], None]:
    def mutate(base: Base, v: dict[str, str]) -> None:
        v.update(changes)
    return mutate


def _with_pan(pan_fn: Callable[[str], str]) -> Callable[[Base, dict[str, str]], None]:
    def mutate(base: Base, v: dict[str, str]) -> None:
        v["pan"] = pan_fn(v["pan"])
    return mutate


def _luhn_off(pos: int) -> Callable[[str], str]:
    def f(pan: str) -> str:
        i = len(pan) + pos if pos < 0 else pos
        return pan[:i] + str((int(pan[i]) + 5) % 10) + pan[i + 1:]
    return f


def _bin_pan(prefix: str, length: int = 16) -> Callable[[str], str]:
    def f(pan: str) -> str:
        partial = (prefix + pan[len(prefix):])[: length - 1].ljust(length - 1, "0")
        return partial + luhn_digit(partial)
    return f


def _field_replace(name: str, old: int, new: bytes) -> Callable[[Base, dict[str, str]], LineEdit]:
    """Replace the byte at offset ``old`` of field ``name``'s value in the encoded line."""
    def mutate(base: Base, v: dict[str, str]) -> LineEdit:
        value = v[name].encode("latin-1")
        def edit(line: bytes) -> bytes:
            at = line.index(value) + old
            return line[:at] + new + line[at + 1:]
        return edit
    return mutate


def _edit(fn: LineEdit) -> Callable[[Base, dict[str, str]], LineEdit]:
    return lambda base, v: fn


def _json_raw(**raw: Any) -> Callable[[Base, dict[str, str]], LineEdit]:
    def mutate(base: Base, v: dict[str, str]) -> LineEdit:
        line = base.codec.encode(base.layout.detail, v, raw_json=raw)
        return lambda _old: line
    return mutate


def pin_block_format0(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0 clear PIN block (independent of pipeline.records.sample)."""
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return bytes(a ^ b for a, b in zip(pin_field, pan_field, strict=True))


def _transpose(pan: str) -> str:
    """Swap two adjacent account digits (Luhn catches every swap but 09 <-> 90)."""
    for i in range(6, len(pan) - 2):
        a, b = pan[i], pan[i + 1]
        if a != b and {a, b} != {"0", "9"}:
            return pan[:i] + b + a + pan[i + 2:]
    raise AssertionError("no transposable digits")


def _secret(kind: str, name: str = "cvv") -> Callable[[Base, dict[str, str]], None]:
    """Replace a secret field by ciphertext that does not decrypt to a well-formed value.

    The check that it really does not (ISO/IEC 9797-1 M2 padding, or ISO 9564
    format 0 for the PIN block) uses the TEST KEK, so the expectation holds.
    """
    def mutate(base: Base, v: dict[str, str]) -> None:
        pan = v["pan"]
        if name == "pin_block":
            clear = pin_block_format0("1234", pan)
            good = lambda c: pin_block_ok(c, pan)  # noqa: E731
        else:
            clear = tdes_decrypt(base.kek, bytes.fromhex(v[name]))
            good = well_padded
        assert good(clear)
        right = tdes_encrypt(base.kek, clear)
        for attempt in range(256):
            if kind == "wrong-kek":  # the TK instead of the KEK (then re-encrypted if unlucky)
                ct = tdes_encrypt(base.wrong_kek, clear)
                for _ in range(attempt):
                    ct = tdes_encrypt(base.wrong_kek, ct)
            elif kind == "bit-flip":
                buf = bytearray(right)
                buf[attempt % len(buf)] ^= 1 << (attempt // len(buf) % 8)
                ct = bytes(buf)
            elif kind == "bad-padding":  # the CVV digits then a letter, zero filled: no 80
                body = clear.rstrip(b"\x00")[:-1] + bytes([0x41 + attempt % 26])
                ct = tdes_encrypt(base.kek, body.ljust(8, b"\x00"))
            elif kind == "zero-block":
                ct = tdes_encrypt(base.kek, bytes([attempt]) * 8)
            else:
                raise AssertionError(kind)
            if not good(tdes_decrypt(base.kek, ct)):
                v[name] = ct.hex().upper()
                return
        raise AssertionError(f"no {kind} variant found")
    return mutate


def record_cases(base: Base) -> Iterator[Case]:
    fmt = base.layout.format
    fixed, csvf, jsonf = fmt is FileFormat.FIXED, fmt is FileFormat.CSV, fmt is FileFormat.JSON
    rc = _record_case
    yield rc(base, "valid-base", None, "the base file as written by cardprep sample", _set())
    # PAN (ISO/IEC 7812-1)
    yield rc(base, "luhn-last-digit", "R001", "check digit changed", _with_pan(_luhn_off(-1)))
    yield rc(base, "luhn-account-digit", "R001", "an account digit changed",
             _with_pan(_luhn_off(7)))
    yield rc(base, "luhn-transposition", "R001", "two adjacent digits swapped",
             _with_pan(_transpose))
    yield rc(base, "pan-12-digits", "R002", "12-digit PAN with a valid check digit",
             _with_pan(lambda p: p[:11] + luhn_digit(p[:11])))
    yield rc(base, "pan-all-zero-short", "R002", "PAN 000000000000 (12 zeros)",
             _set(pan="000000000000"))
    if not fixed:
        yield rc(base, "pan-20-digits", "R002", "20-digit PAN",
                 _with_pan(lambda p: (p + "0" * 20)[:19] + luhn_digit((p + "0" * 20)[:19])))
    yield rc(base, "pan-letter", "R003", "letter inside the PAN",
             _with_pan(lambda p: p[:7] + "A" + p[8:]))
    yield rc(base, "pan-inner-space", "R003", "space inside the PAN",
             _with_pan(lambda p: p[:8] + " " + p[9:]))
    yield rc(base, "pan-dash", "R003", "dashes as a human would type them",
             _with_pan(lambda p: p[:4] + "-" + p[4:8] + "-" + p[8:12]))
    yield rc(base, "pan-empty", "R061", "PAN field blank", _set(pan=""))
    # BIN -> product
    yield rc(base, "unknown-bin-555555", "R040", "Luhn-valid PAN of an unconfigured BIN",
             _with_pan(_bin_pan("555555")))
    yield rc(base, "unknown-bin-371449", "R040", "15-digit Amex-style PAN, BIN not configured",
             _with_pan(_bin_pan("371449", 15)))
    yield rc(base, "unknown-bin-near-miss", "R040", "BIN 476175 (one off a configured BIN)",
             _with_pan(_bin_pan("476175")))
    c = rc(base, "unknown-product", "R041", "BIN 411111 mapped to a product without a profile",
           _with_pan(_bin_pan("411111")))
    c.extra_bins = {"411111": "demo-no-such-product"}
    yield c
    # PSN
    yield rc(base, "psn-letter", "R004", "PSN 'A1'", _set(psn="A1"))
    yield rc(base, "psn-one-digit", "R004", "PSN '1'", _set(psn="1"))
    if not fixed:
        yield rc(base, "psn-three-digits", "R004", "PSN '001' (2 digits required)",
                 _set(psn="001"))
    # dates
    yield rc(base, "expiry-month-00", "R010", "expiry month 00", _set(expiry="2800"))
    yield rc(base, "expiry-month-13", "R010", "expiry month 13", _set(expiry="2813"))
    yield rc(base, "expiry-letters", "R010", "expiry 'AB12'", _set(expiry="AB12"))
    yield rc(base, "expiry-3-digits", "R010", "expiry '281'", _set(expiry="281"))
    yield rc(base, "expiry-past", "R011", "expired the month before the batch",
             _set(expiry="2412", effective=""))
    yield rc(base, "expiry-long-past", "R011", "expired in 2001", _set(expiry="0101",
                                                                      effective=""))
    yield rc(base, "expiry-empty", "R061", "expiry blank", _set(expiry=""))
    yield rc(base, "effective-after-expiry", "R012", "effective one month after expiry",
             _set(expiry="2812", effective="2901"))
    yield rc(base, "effective-month-13", "R012", "effective month 13", _set(effective="2513"))
    # service code (ISO/IEC 7813)
    for sc in ("301", "000", "2A1", "999", "281"):
        yield rc(base, f"service-code-{sc}", "R020", f"service code {sc!r}", _set(service_code=sc))
    yield rc(base, "service-code-2-digits", "R020", "service code '21'", _set(service_code="21"))
    yield rc(base, "service-code-empty", "R061", "service code blank", _set(service_code=""))
    # cardholder name (EMV 5F20, ISO/IEC 7813 track 1 characters)
    yield rc(base, "name-lowercase", "R030", "lowercase name", _set(name="doe/john"))
    for ch, slug in (("^", "caret"), ("%", "percent"), ("?", "question"), ("`", "backtick"),
                     ("~", "tilde")):
        yield rc(base, f"name-{slug}", "R030", f"name containing {ch!r}",
                 _set(name=f"DOE{ch}JOHN"))
    yield rc(base, "name-1-char", "R031", "1-character name", _set(name="X"))
    yield rc(base, "name-empty", "R061", "name blank", _set(name=""))
    if not fixed:
        yield rc(base, "name-27-chars", "R031", "27-character name", _set(name="A" * 27))
        yield rc(base, "name-spaces", "R031", "name of spaces only", _set(name="   "))
    yield rc(base, "name-26-chars", None, "26-character name (the maximum) is valid",
             _set(name="ABCDEFGHIJKLM/NOPQRSTUVWXY"))
    # non-ASCII and control characters (raw bytes in the line)
    for byte, slug in ((b"\xc9", "latin1-e-acute"), (b"\x07", "bel"), (b"\x1b", "esc"),
                       (b"\x00", "nul"), (b"\x7f", "del"), (b"\t", "tab")):
        yield rc(base, f"name-byte-{slug}", "R062", f"raw byte {byte!r} in the name",
                 _field_replace("name", 1, byte))
    yield rc(base, "pan-byte-nul", "R062", "NUL byte in the PAN", _field_replace("pan", 3, b"\x00"))
    yield rc(base, "name-utf8-bytes", "R062", "UTF-8 'É' (2 bytes) in the name",
             _field_replace("name", 1, "É".encode()))
    if jsonf:
        yield rc(base, "name-json-escape-e-acute", "R030", "JSON escape \\u00c9 (ASCII line)",
                 _field_replace("name", 1, b"\\u00c9"))
        yield rc(base, "name-json-escape-bel", "R030", "JSON escape \\u0007 in the name",
                 _field_replace("name", 1, b"\\u0007"))
    # other fields: length and syntax
    yield rc(base, "kdd-9-bytes", "R060", "KDD of 9 bytes", _set(kdd="00112233445566778899"[:18]))
    yield rc(base, "kdd-not-hex", "R065", "KDD with non-hex characters",
             _set(kdd="KDD1223344556677889G"))
    yield rc(base, "discretionary-letters", "R065", "discretionary data with letters",
             _set(discretionary="12345ABC"))
    yield rc(base, "discretionary-track2-overflow", "R060",
             "discretionary data too long for track 2 with this PAN",
             lambda b, v: v.update(pan=_bin_pan("476174", 19)(v["pan"]),
                                   discretionary="1234567890123"))
    if not fixed:
        yield rc(base, "customer-ref-21", "R060", "customer_ref of 21 characters",
                 _set(customer_ref="C" * 21))
        yield rc(base, "kdd-11-bytes", "R060", "KDD of 11 bytes", _set(kdd="AB" * 11))
    # required secrets
    yield rc(base, "cvv-empty", "R061", "CVV blank", _set(cvv=""))
    yield rc(base, "icvv-empty", "R061", "iCVV blank", _set(icvv=""))
    # secret-field syntax (R070)
    yield rc(base, "cvv-not-hex", "R070", "CVV ciphertext with a 'G'",
             lambda b, v: v.update(cvv=v["cvv"][:15] + "G"))
    yield rc(base, "cvv-odd-length", "R070", "CVV ciphertext of 15 hex digits",
             lambda b, v: v.update(cvv=v["cvv"][:15]))
    yield rc(base, "cvv-half-block", "R070", "CVV ciphertext of 4 bytes",
             lambda b, v: v.update(cvv=v["cvv"][:8]))
    yield rc(base, "cvv-inner-space", "R070", "CVV ciphertext with a space",
             lambda b, v: v.update(cvv=v["cvv"][:8] + " " + v["cvv"][9:]))
    if not fixed:
        yield rc(base, "pin-block-two-blocks", "R070", "PIN block of 16 bytes (one block only)",
                 lambda b, v: v.update(pin_block=(v["pin_block"] or "00" * 8) * 2))
    # secret-field content: prepare-stage R071 (inside the key store)
    yield rc(base, "cvv-wrong-kek", "R071", "CVV encrypted under the TK instead of the KEK",
             _secret("wrong-kek"), stage="prepare")
    yield rc(base, "icvv-wrong-kek", "R071", "iCVV encrypted under the wrong key",
             _secret("wrong-kek", "icvv"), stage="prepare")
    yield rc(base, "cvv-bit-flip", "R071", "one bit of the CVV ciphertext flipped",
             _secret("bit-flip"), stage="prepare")
    yield rc(base, "cvv-bad-padding", "R071", "CVV without ISO 9797-1 M2 padding under the KEK",
             _secret("bad-padding"), stage="prepare")
    yield rc(base, "cvv-zero-block", "R071", "CVV block of repeated bytes, no padding",
             _secret("zero-block"), stage="prepare")
    yield rc(base, "pin-block-wrong-kek", "R071",
             "PIN block under the wrong key: not ISO 9564 format 0 under the KEK",
             _secret("wrong-kek", "pin_block"), stage="prepare")
    yield rc(base, "pin-block-bit-flip", "R071", "PIN block with one bit flipped",
             _secret("bit-flip", "pin_block"), stage="prepare")
    # duplicates (PAN + PSN; absent PSN counts as 00)
    def dup(base: Base, v: dict[str, str]) -> None:
        first = base.details[0]
        v.update(pan=first["pan"], psn=first["psn"], discretionary=first["discretionary"])
    yield rc(base, "duplicate-pan-psn", "R050", "PAN+PSN of line 2 again", dup)
    def same_pan_other_psn(base: Base, v: dict[str, str]) -> None:
        first = base.details[0]
        v.update(pan=first["pan"], psn="07", discretionary=first["discretionary"])
    yield rc(base, "same-pan-other-psn", None, "same PAN, another PSN: a different card",
             same_pan_other_psn)
    # line-level problems
    yield rc(base, "record-type-x", "R063", "record type 'X'",
             _edit(lambda line: _retype(base, line, "X")))
    yield rc(base, "record-type-header-in-body", "R063", "an 'H' record among the details",
             _edit(lambda line: _retype(base, line, "H")))
    if fixed:
        yield rc(base, "line-7-short", "R064", "detail line 7 characters short",
                 _edit(lambda line: line[:-7]))
        yield rc(base, "line-8-long", "R064", "detail line 8 characters long",
                 _edit(lambda line: line + b"OVERLONG"))
    if csvf:
        yield rc(base, "csv-extra-column", "R064", "one column too many",
                 _edit(lambda line: line + b",EXTRA"))
        yield rc(base, "csv-missing-column", "R064", "last column missing",
                 _edit(lambda line: line.rsplit(b",", 1)[0]))
        yield rc(base, "csv-unbalanced-quote", "R066", "opening quote never closed",
                 _edit(lambda line: b",".join((*line.split(b",", 6)[:6],
                                               b'"' + line.split(b",", 6)[6]))))
        yield rc(base, "csv-quoted-valid", None, "every field quoted (RFC 4180): valid",
                 _edit(lambda line: b",".join(b'"' + f + b'"' for f in line.split(b","))))
        yield rc(base, "csv-semicolons", "R063", "semicolon-separated row (one column: "
                 "its record type is the whole line)",
                 _edit(lambda line: line.replace(b",", b";")))
    if jsonf:
        yield rc(base, "json-truncated-object", "R066", "object cut before its closing brace",
                 _edit(lambda line: line[:-1]))
        yield rc(base, "json-array", "R066", "a JSON array instead of an object",
                 _edit(lambda line: b"[" + line + b"]"))
        yield rc(base, "json-bool-field", "R065", "name is a JSON boolean", _json_raw(name=True))
        yield rc(base, "json-object-field", "R065", "name is a JSON object",
                 _json_raw(name={"x": 1}))
        yield rc(base, "json-null-pan", "R061", "pan is null", _json_raw(pan=None))
        yield rc(base, "json-number-pan", None, "pan as a JSON integer (accepted as its digits)",
                 lambda b, v: (lambda line: line.replace(f'"{v["pan"]}"'.encode(),
                                                         v["pan"].encode(), 1)))
        yield rc(base, "json-trailing-garbage", "R066", "text after the object",
                 _edit(lambda line: line + b" x"))
    yield rc(base, "line-over-max-bytes", "R064", "a line longer than max_line_bytes",
             _edit(lambda line: line + b"9" * (base.layout.max_line_bytes + 10)))


def _retype(base: Base, line: bytes, marker: str) -> bytes:
    fmt = base.layout.format
    if fmt is FileFormat.FIXED:
        rt = base.layout.record_type
        return line[: rt.slice_start] + marker.encode() + line[rt.slice_end:]
    if fmt is FileFormat.CSV:
        return marker.encode() + line[1:]
    return line.replace(b'"type":"D"', f'"type":"{marker}"'.encode(), 1)


def multi_reject_cases(base: Base) -> Iterator[Case]:
    """Several bad records in one file, each with its own reason."""
    values = [dict(d) for d in base.details]
    values[1]["pan"] = _luhn_off(-1)(values[1]["pan"])
    values[2]["service_code"] = "301"
    values[3].update(pan=values[0]["pan"], psn=values[0]["psn"],
                     discretionary=values[0]["discretionary"])
    lines = [base.line(v) for v in values]
    yield Case("three-rejects", "record/multi", "Luhn, service code and a duplicate in one file",
               base.assemble(lines),
               {"records": 5, "rejects": {"3": "R001", "4": "R020", "5": "R050"},
                "prepare_rejects": {}})
    values = [dict(d) for d in base.details]
    values[0]["psn"] = "00"
    values[2].update(pan=values[0]["pan"], psn="", discretionary=values[0]["discretionary"])
    yield Case("duplicate-psn-absent-vs-00", "record/R050",
               "same PAN, PSN '00' then blank: a blank PSN counts as 00 (EMV key derivation)",
               base.assemble([base.line(v) for v in values]),
               {"records": 5, "rejects": {"4": "R050"}, "prepare_rejects": {}})
    values = [dict(d) for d in base.details]
    for v in values:
        v["name"] = "x"
    yield Case("all-rejected", "record/multi", "every record rejected (R031/R030 names)",
               base.assemble([base.line(v) for v in values]),
               {"records": 5, "rejects": {str(i + 2): "R031" for i in range(5)},
                "prepare_rejects": {}})
    values = [dict(d) for d in base.details]
    for v in values[1:]:
        v.update(pan=values[0]["pan"], psn=values[0]["psn"],
                 discretionary=values[0]["discretionary"])
    yield Case("same-card-five-times", "record/R050", "one card five times: four duplicates",
               base.assemble([base.line(v) for v in values]),
               {"records": 5, "rejects": {str(i): "R050" for i in range(3, 7)},
                "prepare_rejects": {}})


def batch_cases(base: Base) -> Iterator[Case]:
    """Whole-file problems: each raises InputFileCheckError with ``check``."""
    fmt = base.layout.format
    details = [base.line(v) for v in base.details]
    good = base.assemble(details)
    trailer = base.codec.trailer(details)
    body = base.header + b"\n" + b"\n".join(details) + b"\n"

    def batch(slug: str, check: str, description: str, data: bytes) -> Case:
        return Case(slug, f"batch/{check}", description, data, {"batch_error": check})

    def valid(slug: str, description: str, data: bytes) -> Case:
        return Case(slug, "batch/valid", description, data,
                    {"records": len(details), "rejects": {}, "prepare_rejects": {}})

    yield batch("empty-file", "empty_file", "0 bytes", b"")
    yield batch("header-only", "trailer_missing", "a header line and nothing else",
                base.header + b"\n")
    yield batch("header-only-no-eol", "trailer_missing", "a header without a line end",
                base.header)
    yield batch("no-trailer", "trailer_missing", "header and details, trailer missing", body)
    yield batch("zero-byte-trailer", "trailer_missing",
                "a 0-byte trailer: an empty last line where the trailer should be",
                body + b"\n")
    yield batch("blank-line-after-trailer", "trailer_missing",
                "an empty line after the trailer", good + b"\n")
    yield batch("trailer-marker-x", "trailer_missing", "trailer record type 'X'",
                body + _retype_control(base, trailer, "X") + b"\n")
    yield batch("detail-after-trailer", "trailer_missing", "a detail line after the trailer",
                body + trailer + b"\n" + details[0] + b"\n")
    # truncations
    yield batch("truncated-in-header", "header", "file cut in the middle of the header",
                base.header[: len(base.header) // 2])
    yield batch("truncated-at-detail-boundary", "trailer_missing",
                "file cut after the third detail line",
                base.header + b"\n" + b"\n".join(details[:3]) + b"\n")
    cut_detail = base.header + b"\n" + details[0] + b"\n" + details[1][: len(details[1]) // 2]
    yield batch("truncated-in-detail", "trailer" if fmt is FileFormat.JSON else "trailer_missing",
                "file cut in the middle of a detail line (JSON: the cut line is not an object)",
                cut_detail)
    cut = {FileFormat.FIXED: 12, FileFormat.CSV: 3, FileFormat.JSON: 12}[fmt]
    yield batch("truncated-in-trailer", "trailer", "file cut in the middle of the trailer",
                body + trailer[:cut])
    yield valid("trailer-no-final-newline", "the last line may lack its line end",
                body + trailer)
    # counts and hash totals
    n = len(details)
    count_len = base.layout.trailer.field(base.layout.count_field).length
    def count(x: int) -> str:
        return str(x).zfill(count_len) if fmt is FileFormat.FIXED and count_len else str(x)
    yield batch("count-plus-one", "count", "trailer count one more than the details",
                base.assemble(details, count=count(n + 1)))
    yield batch("count-minus-one", "count", "trailer count one less",
                base.assemble(details, count=count(n - 1)))
    yield batch("count-zero", "count", "trailer count 0", base.assemble(details, count=count(0)))
    yield batch("count-not-digits", "trailer", "trailer count 'FIVE'",
                base.assemble(details, count="FIVE"))
    yield batch("count-missing", "trailer", "trailer count blank",
                base.assemble(details, count=""))
    ht = base.codec.hash_total(details)
    if base.layout.hash_total.method.value == "pan_sum":
        wrong = str((int(ht) + 1) % 10 ** len(ht)).zfill(len(ht))
        zero = "0" * len(ht)
    else:
        wrong = ht[:-1] + ("0" if ht[-1] != "0" else "1")
        zero = "0" * len(ht)
    yield batch("hash-total-off-by-one", "hash_total", "hash total off by one digit",
                base.assemble(details, hash_total=wrong))
    yield batch("hash-total-zero", "hash_total", "hash total all zeros",
                base.assemble(details, hash_total=zero))
    swapped = list(details)
    swapped[1] = base.line({**base.details[1], "pan": _luhn_off(-1)(base.details[1]["pan"])})
    yield batch("hash-total-stale-after-edit", "hash_total",
                "a PAN edited after the trailer was computed",
                b"\n".join([base.header, *swapped, trailer]) + b"\n")
    yield batch("two-trailers", "count", "the trailer twice (the first counts as a detail)",
                body + trailer + b"\n" + trailer + b"\n")
    yield batch("two-headers", "count", "the header twice",
                base.header + b"\n" + body + trailer + b"\n")
    # encodings and line endings
    for bom, slug in ((b"\xef\xbb\xbf", "utf8"), (b"\xff\xfe", "utf16le"),
                      (b"\xfe\xff", "utf16be"), (b"\x00\x00\xfe\xff", "utf32be")):
        yield batch(f"bom-{slug}", "bom", f"{slug} byte order mark", bom + good)
    lines = [base.header, *details, trailer]
    mixed = b"\n".join(lines[:3]) + b"\r\n" + b"\n".join(lines[3:]) + b"\n"
    yield batch("mixed-lf-then-crlf", "line_endings", "LF lines, then one CRLF", mixed)
    mixed2 = b"\r\n".join(lines[:4]) + b"\n" + b"\r\n".join(lines[4:]) + b"\r\n"
    yield batch("mixed-crlf-then-lf", "line_endings", "CRLF lines, then one LF", mixed2)
    yield batch("cr-only", "header", "old Mac CR line ends: one long first line",
                b"\r".join(lines) + b"\r")
    yield valid("crlf-throughout", "CRLF on every line", base.assemble(details, eol=b"\r\n"))
    # garbage
    yield batch("single-newline", "header", "just a line end", b"\n")
    yield batch("binary-garbage", "header", "random bytes",
                bytes(range(256)).replace(b"\n", b"")[:200] + b"\n")
    yield batch("nul-bytes", "header", "NUL bytes", b"\x00" * 400 + b"\n")
    yield batch("utf16-encoded", "bom", "the whole file UTF-16 with BOM",
                good.decode("latin-1").encode("utf-16"))
    yield batch("header-marker-x", "header", "header record type 'X'",
                _retype_control(base, base.header, "X") + b"\n" + body.split(b"\n", 1)[1]
                + trailer + b"\n")
    hvals = base.codec.decode(base.layout.header, base.header)
    date_field = base.layout.batch_date_field or "file_date"
    bad_date = base.codec.encode(base.layout.header, {**hvals, date_field: "20251332"})
    yield batch("header-bad-date", "header", "header file date 2025-13-32",
                bad_date + b"\n" + b"\n".join(details) + b"\n" + trailer + b"\n")
    no_id = base.codec.encode(base.layout.header, {**hvals, "issuer_id": ""})
    yield batch("header-missing-issuer", "header", "header issuer id blank",
                no_id + b"\n" + b"\n".join(details) + b"\n" + trailer + b"\n")
    yield batch("header-over-max-bytes", "header", "a first line longer than max_line_bytes",
                base.header + b"X" * (base.layout.max_line_bytes + 5) + b"\n"
                + b"\n".join(details) + b"\n" + trailer + b"\n")


def _retype_control(base: Base, line: bytes, marker: str) -> bytes:
    fmt = base.layout.format
    if fmt is FileFormat.FIXED:
        rt = base.layout.record_type
        return line[: rt.slice_start] + marker.encode() + line[rt.slice_end:]
    if fmt is FileFormat.CSV:
        return marker.encode() + line[1:]
    obj = json.loads(line)
    obj[base.layout.record_type.key or "type"] = marker
    return json.dumps(obj, separators=(",", ":")).encode()


# --- driver -------------------------------------------------------------------------------------


def load_base(issuer_id: str, tmp: Path) -> Base:
    issuer = load_issuer(issuer_id, CONFIG)
    layout = load_layout(issuer.layout, CONFIG)
    # Every case is a variant of this one base file, so all share its header (one
    # delivery: DEMO, 20250115, 000001); tests/reliability/test_corpus.py runs each
    # full-path case in its own storage, where the duplicate-delivery rule
    # (docs/INPUT.md "Deliveries") cannot refuse it as a re-sent base file.
    summary = write_sample(issuer_id, BASE_CARDS, tmp / f"{issuer_id}.{EXT[layout.format]}",
                           seed=SEED, batch_date=BATCH_DATE, config_dir=CONFIG,
                           file_seq=BASE_FILE_SEQ)
    raw = summary.path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "sample files end with a line end"
    header, *detail_lines, trailer_line = lines[:-1]
    codec = Codec(layout)
    details = [codec.decode(layout.detail, d) for d in detail_lines]
    for line, values in zip(detail_lines, details, strict=True):
        if codec.encode(layout.detail, values) != line:  # our codec must reproduce the sample
            raise SystemExit(f"{issuer_id}: make_corpus's codec no longer reproduces the "
                             "sample's detail lines; update Codec for the new layout")
    if codec.trailer(detail_lines) != trailer_line:
        raise SystemExit(f"{issuer_id}: independent trailer differs from the sample's")
    base = Base(issuer_id, layout, codec, header, details, _demo_key(issuer.kek),
                _demo_key("demo-tk"))
    # Make line 2's card the one duplicates copy, and give every card a PIN block.
    return base


def build(out_dir: Path) -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for issuer_id in ISSUERS:
            base = load_base(issuer_id, Path(tmp))
            fmt = base.layout.format
            folder = out_dir / "cases" / base.layout.name
            folder.mkdir(parents=True, exist_ok=True)
            produced = [*batch_cases(base), *record_cases(base), *multi_reject_cases(base)]
            slugs = [c.slug for c in produced]
            assert len(slugs) == len(set(slugs)), "duplicate slugs"
            for n, case in enumerate(produced, 1):
                name = f"{n:03d}-{case.slug}.{EXT[fmt]}"
                (folder / name).write_bytes(case.data)
                entry: dict[str, Any] = {
                    "id": f"{SHORT[fmt]}-{case.slug}",
                    "file": f"cases/{base.layout.name}/{name}",
                    "issuer": issuer_id,
                    "layout": base.layout.name,
                    "category": case.category,
                    "description": case.description,
                    "expect": case.expect,
                    "full_path": case.slug in FULL_PATH,
                }
                if case.extra_bins:
                    entry["extra_bins"] = case.extra_bins
                cases.append(entry)
    return {
        "generator": "tests/corpus/make_corpus.py",
        "command": ".venv/bin/python tests/corpus/make_corpus.py",
        "batch_date": BATCH_DATE.isoformat(),
        "seed": SEED,
        "base_cards": BASE_CARDS,
        "cases": cases,
    }


def write(out_dir: Path) -> dict[str, Any]:
    """(Re)write the corpus under ``out_dir`` (cases/ is replaced)."""
    shutil.rmtree(out_dir / "cases", ignore_errors=True)
    manifest = build(out_dir)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n",
                                           encoding="ascii")
    return manifest


if __name__ == "__main__":
    m = write(CORPUS)
    print(f"wrote {len(m['cases'])} cases to {CORPUS / 'cases'}")
