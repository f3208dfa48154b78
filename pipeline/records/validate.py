"""Record validation: a :class:`RawRecord` becomes a :class:`CardRecord` or a :class:`Reject`.

Issue 5 "Validation and rejects"; DESIGN.md principle 5 (errors are values at
the record level).  One reject per record: the first failing check in this
order wins (docs/INPUT.md has the table):

1. the line itself (R062 charset, R063 record type, R064 length, R065/R066),
   found by the parser;
2. required fields present (R061), in layout order;
3. PAN: digits (R003), length 13..19 and the layout's bounds (R002), Luhn
   check digit (R001, ISO/IEC 7812-1 Annex B);
4. BIN -> product (R040), product known (R041, when a product list is given);
5. PSN two digits (R004); expiry YYMM (R010) not before the batch month
   (R011); effective date YYMM not after expiry (R012); service code
   (R020, ISO/IEC 7813); cardholder name length 2..26 (R031) and characters
   (R030, ISO/IEC 7813 track 1 name as required for EMV tag 5F20);
6. other fields: length (R060) and syntax (R065), including the track 2
   length limit for discretionary data and the 10-byte KDD;
7. secret fields: hex ciphertext of whole KEK cipher blocks (R070);
   decryptability is checked inside the key store at prepare time (R071);
8. duplicate PAN+PSN among the records accepted so far (R050; an absent PSN
   counts as ``00``, as in EMV key derivation).

Rejects never carry a full PAN, PIN block, CVV or ciphertext: at most the
masked PAN (first 6 / last 4), a length, a position or a character code.

Example:
    >>> from pipeline.records.issuers import load_issuer
    >>> from pipeline.records.layout import load_layout
    >>> from pipeline.records.parse import RawRecord
    >>> v = Validator(load_issuer("demo"), load_layout("demo-fixed"), date(2025, 1, 1))
    >>> base = {"pan": "4761739001010119", "psn": "01", "expiry": "2812", "effective": "",
    ...         "service_code": "201", "name": "DOE/JOHN", "discretionary": "", "kdd": "",
    ...         "pin_block": "", "cvv": "00" * 8, "icvv": "11" * 8, "customer_ref": ""}
    >>> v.check(RawRecord(2, base)).product
    'demo-visa-rsa'
    >>> str(v.check(RawRecord(3, base)).reason)
    'R050 DUPLICATE_CARD'
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date

from pipeline.audit.masking import mask_pan
from pipeline.errors import ConfigError
from pipeline.records.issuers import IssuerConfig
from pipeline.records.layout import (
    CANONICAL_FIELDS,
    FieldType,
    Layout,
    SecretPadding,
)
from pipeline.records.luhn import luhn_valid
from pipeline.records.parse import RawRecord
from pipeline.records.reasons import RejectReason

__all__ = [
    "NAME_CHARACTERS",
    "CardRecord",
    "Reject",
    "RejectReason",
    "Validator",
    "name_problem",
    "service_code_valid",
]

PAN_MIN, PAN_MAX = 13, 19  # ISO/IEC 7812-1: up to 19 digits; EMV 5A is n..19
NAME_MIN, NAME_MAX = 2, 26  # EMV Book 3 Annex A, 5F20: ans 2-26
TRACK2_MAX = 37  # ISO/IEC 7813 track 2: 40 characters minus start/end sentinels and LRC
KDD_BYTES = 10  # GlobalPlatform: first 10 bytes of the INITIALIZE UPDATE response

#: ISO/IEC 7813 track 1 characters (0x20..0x5F) without the start sentinel ``%``,
#: the field separator ``^`` and the end sentinel ``?``: uppercase letters,
#: digits, space and punctuation; no lowercase, no diacritics.
NAME_CHARACTERS: frozenset[str] = frozenset(chr(c) for c in range(0x20, 0x60)) - {"%", "^", "?"}
_NAME_RE = re.compile("[" + re.escape("".join(sorted(NAME_CHARACTERS))) + "]*")
_DIGITS_RE = re.compile(r"[0-9]*")
_ALNUM_RE = re.compile(r"[A-Za-z0-9]*")
_ANS_RE = re.compile(r"[\x20-\x7e]*")
_HEX_RE = re.compile(r"[0-9A-Fa-f]*")

# ISO/IEC 7813 service code digits in use (others are "reserved for future use").
_SC_FIRST = frozenset("125679")  # interchange and technology
_SC_SECOND = frozenset("024")  # authorization processing
_SC_THIRD = frozenset("01234567")  # range of services and PIN requirements


def service_code_valid(code: str) -> bool:
    """True for a 3-digit ISO/IEC 7813 service code whose digits are all assigned.

    Example:
        >>> service_code_valid("201"), service_code_valid("301"), service_code_valid("21")
        (True, False, False)
    """
    return (
        len(code) == 3
        and code[0] in _SC_FIRST
        and code[1] in _SC_SECOND
        and code[2] in _SC_THIRD
    )


def name_problem(name: str) -> tuple[RejectReason, str] | None:
    """Why ``name`` is not a valid EMV 5F20 cardholder name, or ``None``.

    Example:
        >>> name_problem("O'BRIEN/MARY-ANN") is None
        True
        >>> name_problem("Doe/John")[0].code
        'R030'
    """
    if not NAME_MIN <= len(name) <= NAME_MAX or not name.strip():
        return RejectReason.NAME_LENGTH, f"{len(name)} characters, {NAME_MIN}..{NAME_MAX} allowed"
    if _NAME_RE.fullmatch(name) is None:
        pos = next(i for i, c in enumerate(name) if c not in NAME_CHARACTERS)
        return RejectReason.NAME_CHARSET, (
            f"character U+{ord(name[pos]):04X} at position {pos + 1} is not allowed "
            "(ISO/IEC 7813: A-Z, 0-9, space and punctuation except % ^ ?)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that will not be prepared (reason code, field, input line)."""

    line_no: int
    reason: RejectReason
    field: str
    detail: str
    product: str | None = None
    masked_pan: str | None = None


@dataclass(frozen=True, repr=False)
class CardRecord:
    """A valid card record.  ``pan`` is clear and lives in memory only.

    ``secrets`` holds ciphertext under the issuer KEK (field name -> bytes);
    ``extra`` the layout's other fields.  ``repr`` masks the PAN and hides
    secrets and KDD.  (No ``slots``: the validator builds instances through
    :func:`_card_record`, 4x faster than the frozen ``__init__``.)
    """

    line_no: int
    product: str
    pan: str
    psn: str | None
    expiry: str
    effective: str | None
    service_code: str
    name: str
    discretionary: str
    kdd: bytes | None
    secrets: Mapping[str, bytes]
    extra: Mapping[str, str]

    @property
    def masked_pan(self) -> str:
        """First 6 / last 4 digits of the PAN."""
        return mask_pan(self.pan)

    def __repr__(self) -> str:
        return (
            f"CardRecord(line_no={self.line_no}, product={self.product!r}, "
            f"pan={self.masked_pan!r}, psn={self.psn!r}, expiry={self.expiry!r}, "
            f"secrets={sorted(self.secrets)})"
        )


_new = object.__new__


def _card_record(**values: object) -> CardRecord:
    """Build a :class:`CardRecord` without the frozen ``__init__`` (hot path).

    A frozen dataclass ``__init__`` sets each of the 12 fields through
    ``object.__setattr__`` (measured 2.0 us); filling the instance ``__dict__``
    in one call takes 0.5 us.  The result is equal to, and as immutable as,
    ``CardRecord(**values)``; the validator passes every field by name
    (tests/unit/records/test_validate.py checks the two agree).
    """
    record: CardRecord = _new(CardRecord)
    record.__dict__.update(values)
    return record


def _yymm_ok(value: str) -> bool:
    return len(value) == 4 and value.isascii() and value.isdigit() and "01" <= value[2:] <= "12"


_GENERIC_PATTERNS: dict[FieldType, tuple[re.Pattern[str], str]] = {
    FieldType.DIGITS: (_DIGITS_RE, "digits"),
    FieldType.ALNUM: (_ALNUM_RE, "letters and digits"),
    FieldType.ANS: (_ANS_RE, "printable ASCII"),
    FieldType.NAME: (_NAME_RE, "ISO/IEC 7813 name characters"),
    FieldType.HEX: (_HEX_RE, "hexadecimal"),
    FieldType.PAN: (_DIGITS_RE, "digits"),
    FieldType.SERVICE_CODE: (_DIGITS_RE, "digits"),
    FieldType.YYMM: (_DIGITS_RE, "digits"),
    FieldType.DATE: (_DIGITS_RE, "digits"),
}


class Validator:
    """Checks records of one batch (stateful: duplicate PAN+PSN detection).

    ``products``: when given, a BIN mapped to a product outside it is
    rejected R041 (e.g. the product ids that have a profile in config/).
    Not thread-safe; one per batch.
    """

    def __init__(
        self,
        issuer: IssuerConfig,
        layout: Layout,
        batch_date: date,
        *,
        products: Collection[str] | None = None,
    ) -> None:
        self.issuer = issuer
        self.layout = layout
        self.batch_date = batch_date
        if not 2000 <= batch_date.year <= 2099:
            raise ConfigError("batch_date", f"year {batch_date.year} outside 2000..2099 "
                              "(expiry dates are YYMM)")
        self._batch_yymm = f"{batch_date.year % 100:02d}{batch_date.month:02d}"
        self._products = frozenset(products) if products is not None else None
        detail = layout.detail
        self._required = tuple(f.name for f in detail.fields if f.required)
        pan = detail.field("pan")
        self._pan_min = max(PAN_MIN, pan.min_length)
        self._pan_max = min(PAN_MAX, pan.limit or PAN_MAX)
        self._generic = tuple(
            (f.name, f.min_length, f.limit, *_GENERIC_PATTERNS[f.type])
            for f in detail.fields
            if not f.secret and f.name not in {"pan", "psn", "expiry", "effective",
                                               "service_code", "name"}
        )
        self._extra = tuple(
            f.name for f in detail.fields if not f.secret and f.name not in CANONICAL_FIELDS
        )
        self._blanks = ("",) * len(self._extra)
        self._product_for_pan = issuer.product_for_pan
        block = issuer.kek_block_size
        self._secrets = tuple(
            (f.name, f.padding is SecretPadding.NONE, f.limit) for f in layout.secret_fields
        )
        self._hex_block = 2 * block
        self._seen: set[int] = set()
        self.accepted = 0
        self.rejected = 0

    def _reject(self, raw: RawRecord, reason: RejectReason, fld: str, detail: str,
                *, product: str | None = None, pan: str | None = None) -> Reject:
        self.rejected += 1
        return Reject(raw.line_no, reason, fld, detail, product,
                      mask_pan(pan) if pan else None)

    def check(self, raw: RawRecord) -> CardRecord | Reject:
        """Validate one record; never raises for bad data."""
        if raw.problem is not None:
            p = raw.problem
            return self._reject(raw, p.reason, p.field, p.detail)
        f = raw.fields
        get = f.get
        pan = get("pan", "")
        if not all(map(get, self._required)):
            name = next(n for n in self._required if not get(n))
            return self._reject(raw, RejectReason.FIELD_MISSING, name,
                                "required field is empty or absent", pan=pan)
        # -- PAN ------------------------------------------------------------------
        if not (pan.isascii() and pan.isdigit()):
            return self._reject(raw, RejectReason.PAN_NOT_DIGITS, "pan",
                                f"{len(pan)} characters, not all digits", pan=pan)
        if not self._pan_min <= len(pan) <= self._pan_max:
            return self._reject(raw, RejectReason.PAN_LENGTH, "pan",
                                f"{len(pan)} digits, {self._pan_min}..{self._pan_max} allowed",
                                pan=pan)
        if not luhn_valid(pan):
            return self._reject(raw, RejectReason.PAN_LUHN, "pan",
                                "Luhn check digit is wrong", pan=pan)
        product = self._product_for_pan(pan)
        if product is None:
            return self._reject(raw, RejectReason.UNKNOWN_BIN, "pan",
                                f"no product configured for BIN {pan[:6]}", pan=pan)
        if self._products is not None and product not in self._products:
            return self._reject(raw, RejectReason.UNKNOWN_PRODUCT, "pan",
                                f"BIN {pan[:6]} maps to product {product!r}, which has no "
                                "profile", product=product, pan=pan)
        # -- PSN, dates, service code, name -----------------------------------------
        psn = get("psn", "")
        if psn and not (len(psn) == 2 and psn.isascii() and psn.isdigit()):
            return self._reject(raw, RejectReason.PSN_FORMAT, "psn",
                                f"{len(psn)} characters, 2 digits required",
                                product=product, pan=pan)
        expiry = f["expiry"]
        if not _yymm_ok(expiry):
            return self._reject(raw, RejectReason.EXPIRY_FORMAT, "expiry",
                                "not a YYMM date with month 01..12", product=product, pan=pan)
        if expiry < self._batch_yymm:
            return self._reject(raw, RejectReason.EXPIRY_PAST, "expiry",
                                f"expired before the batch month {self._batch_yymm} (YYMM)",
                                product=product, pan=pan)
        effective = get("effective", "")
        if effective and (not _yymm_ok(effective) or effective > expiry):
            why = "after the expiry date" if _yymm_ok(effective) else "not a YYMM date"
            return self._reject(raw, RejectReason.EFFECTIVE_DATE, "effective", why,
                                product=product, pan=pan)
        service_code = f["service_code"]
        if not service_code_valid(service_code):
            return self._reject(raw, RejectReason.SERVICE_CODE, "service_code",
                                f"{service_code[:3]!r} is not a valid ISO/IEC 7813 service code",
                                product=product, pan=pan)
        name = f["name"]
        if not (NAME_MIN <= len(name) <= NAME_MAX and _NAME_RE.fullmatch(name) and name.strip()):
            problem = name_problem(name)
            if problem is not None:
                return self._reject(raw, problem[0], "name", problem[1], product=product,
                                    pan=pan)
        # -- other fields -------------------------------------------------------------
        for fname, min_len, limit, pattern, what in self._generic:
            value = get(fname, "")
            if not value:
                continue
            if len(value) < min_len or (limit is not None and len(value) > limit):
                return self._reject(raw, RejectReason.FIELD_LENGTH, fname,
                                    f"{len(value)} characters, {min_len}.."
                                    f"{limit if limit is not None else ''} allowed",
                                    product=product, pan=pan)
            if pattern.fullmatch(value) is None:
                return self._reject(raw, RejectReason.FIELD_FORMAT, fname,
                                    f"must be {what}", product=product, pan=pan)
        discretionary = get("discretionary", "")
        if len(pan) + len(discretionary) + 8 > TRACK2_MAX:
            return self._reject(raw, RejectReason.FIELD_LENGTH, "discretionary",
                                f"{len(discretionary)} digits do not fit track 2 "
                                f"({TRACK2_MAX} characters) with a {len(pan)}-digit PAN",
                                product=product, pan=pan)
        kdd_hex = get("kdd", "")
        if kdd_hex and len(kdd_hex) != 2 * KDD_BYTES:
            return self._reject(raw, RejectReason.FIELD_LENGTH, "kdd",
                                f"{len(kdd_hex)} hex characters, {2 * KDD_BYTES} required",
                                product=product, pan=pan)
        # -- secrets -----------------------------------------------------------------
        secrets: dict[str, bytes] = {}
        hb = self._hex_block
        for sname, one_block, limit in self._secrets:
            value = get(sname, "")
            if not value:
                continue
            n = len(value)
            try:
                # fromhex skips whitespace: the length comparison catches that too.
                ciphertext = bytes.fromhex(value)
            except ValueError:
                ciphertext = b""
            if (
                2 * len(ciphertext) != n
                or n % hb
                or (one_block and n != hb)
                or (limit is not None and n > limit)
            ):
                return self._reject(raw, RejectReason.SENSITIVE_FORMAT, sname,
                                    f"{n} characters: must be hexadecimal of "
                                    f"{'one' if one_block else 'whole'} {hb // 2}-byte "
                                    "cipher block(s)", product=product, pan=pan)
            secrets[sname] = ciphertext
        # -- duplicates ----------------------------------------------------------------
        key = (int(pan + (psn or "00")) << 5) | len(pan)
        if key in self._seen:
            return self._reject(raw, RejectReason.DUPLICATE_CARD, "pan",
                                "PAN and PSN already accepted earlier in this batch",
                                product=product, pan=pan)
        self._seen.add(key)
        self.accepted += 1
        return _card_record(
            line_no=raw.line_no,
            product=product,
            pan=pan,
            psn=psn or None,
            expiry=expiry,
            effective=effective or None,
            service_code=service_code,
            name=name,
            discretionary=discretionary,
            kdd=bytes.fromhex(kdd_hex) if kdd_hex else None,
            secrets=secrets,
            extra={k: get(k, "") for k in self._extra} if self._extra else {},
        )
