"""One crafted record per reject reason (pipeline.records.validate).

Each case starts from a valid record and changes one field, so exactly the
intended reason must fire; the expected codes are written out by hand from
docs/INPUT.md, not taken from the implementation.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date

import pytest

from pipeline.errors import ConfigError
from pipeline.records.parse import RawRecord, RecordProblem
from pipeline.records.reasons import RejectReason
from pipeline.records.validate import (
    NAME_CHARACTERS,
    CardRecord,
    Reject,
    Validator,
    _card_record,
    name_problem,
    service_code_valid,
)
from tests.unit.records.helpers import BATCH, GOOD, demo


def _validator(layout: str = "demo-fixed", **kw: object) -> Validator:
    issuer, lay = demo(layout)
    return Validator(issuer, lay, BATCH, **kw)  # type: ignore[arg-type]


def _check(changes: dict[str, str], layout: str = "demo-fixed") -> CardRecord | Reject:
    return _validator(layout).check(RawRecord(7, {**GOOD, **changes}))


CASES: list[tuple[str, dict[str, str], str]] = [
    ("R001", {"pan": "4761739001010118"}, "pan"),
    ("R002", {"pan": "476173900108"}, "pan"),  # 12 digits
    ("R002", {"pan": "47617390010101190000"}, "pan"),  # 20 digits (CSV/JSON can carry it)
    ("R003", {"pan": "476173900101011A"}, "pan"),
    ("R003", {"pan": "4761739001010\u00b2119"}, "pan"),  # a Unicode digit is not a digit here
    ("R004", {"psn": "A1"}, "psn"),
    ("R004", {"psn": "1"}, "psn"),
    ("R010", {"expiry": "2813"}, "expiry"),
    ("R010", {"expiry": "2800"}, "expiry"),
    ("R010", {"expiry": "28-1"}, "expiry"),
    ("R011", {"expiry": "2412", "effective": ""}, "expiry"),  # batch month is 2501
    ("R012", {"effective": "2901"}, "effective"),  # after expiry 2812
    ("R012", {"effective": "2500"}, "effective"),
    ("R020", {"service_code": "301"}, "service_code"),
    ("R020", {"service_code": "211"}, "service_code"),
    ("R020", {"service_code": "208"}, "service_code"),
    ("R020", {"service_code": "20"}, "service_code"),
    ("R030", {"name": "Doe/John"}, "name"),
    ("R030", {"name": "DOE^JOHN"}, "name"),
    ("R030", {"name": "M\u00dcLLER/HANS"}, "name"),
    ("R031", {"name": "X"}, "name"),
    ("R031", {"name": "A" * 27}, "name"),
    ("R031", {"name": "   "}, "name"),
    ("R040", {"pan": "5555555555554444"}, "pan"),
    ("R060", {"kdd": "001122334455667788"}, "kdd"),
    ("R060", {"discretionary": "1234567890123", "pan": "4761740000000000008"}, "discretionary"),
    ("R060", {"customer_ref": "C" * 21}, "customer_ref"),
    ("R061", {"cvv": ""}, "cvv"),
    ("R061", {"name": ""}, "name"),
    ("R061", {"pan": ""}, "pan"),
    ("R065", {"kdd": "0011223344556677889Z"}, "kdd"),
    ("R065", {"discretionary": "12A4"}, "discretionary"),
    ("R065", {"customer_ref": "CUST\u00e9"}, "customer_ref"),
    ("R070", {"cvv": "FEDCBA98765432"}, "cvv"),  # 7 bytes
    ("R070", {"cvv": "FEDCBA987654321G"}, "cvv"),
    ("R070", {"pin_block": "0123456789ABCDEF0123456789ABCDEF"}, "pin_block"),  # 2 blocks
    ("R070", {"icvv": "FEDCBA98 7654321"}, "icvv"),  # whitespace is not hex
]


@pytest.mark.parametrize(("code", "changes", "field"), CASES)
def test_each_reason(code: str, changes: dict[str, str], field: str) -> None:
    result = _check(changes, "demo-csv")
    assert isinstance(result, Reject), result
    assert (result.reason.code, result.field, result.line_no) == (code, field, 7)


def test_unknown_product_only_with_a_product_list() -> None:
    ok = _validator(products={"demo-visa-rsa", "demo-pboc-sm2"}).check(RawRecord(2, GOOD))
    assert isinstance(ok, CardRecord)
    bad = _validator(products={"demo-pboc-sm2"}).check(RawRecord(2, GOOD))
    assert isinstance(bad, Reject) and bad.reason is RejectReason.UNKNOWN_PRODUCT
    assert bad.product == "demo-visa-rsa"


def test_parser_problems_pass_through() -> None:
    raw = RawRecord(9, {}, RecordProblem(RejectReason.RECORD_LENGTH, "record", "too long"))
    r = _validator().check(raw)
    assert isinstance(r, Reject) and (r.reason.code, r.line_no, r.field) == ("R064", 9, "record")


def test_valid_record_fields() -> None:
    r = _check({})
    assert isinstance(r, CardRecord)
    assert r.product == "demo-visa-rsa" and r.line_no == 7
    assert (r.pan, r.psn, r.expiry, r.effective, r.service_code) == (
        GOOD["pan"], "01", "2812", "2501", "201")
    assert r.kdd == bytes.fromhex(GOOD["kdd"])
    assert r.secrets == {k: bytes.fromhex(GOOD[k]) for k in ("pin_block", "cvv", "icvv")}
    assert r.extra == {"customer_ref": "CUST00000001"}
    assert r.masked_pan == "476173******0119"


def test_optional_fields_absent() -> None:
    r = _check({"psn": "", "effective": "", "kdd": "", "pin_block": "", "discretionary": ""})
    assert isinstance(r, CardRecord)
    assert r.psn is None and r.effective is None and r.kdd is None
    assert set(r.secrets) == {"cvv", "icvv"}


def test_expiry_in_the_batch_month_is_accepted() -> None:
    assert isinstance(_check({"expiry": "2501", "effective": ""}), CardRecord)


def test_product_by_longest_bin() -> None:
    r = _check({"pan": "6234560000000000001"})
    assert isinstance(r, CardRecord) and r.product == "demo-pboc-sm2"


def test_duplicates_pan_and_psn() -> None:
    v = _validator()
    first = v.check(RawRecord(2, GOOD))
    other_psn = v.check(RawRecord(3, {**GOOD, "psn": "02"}))
    dup = v.check(RawRecord(4, GOOD))
    no_psn = v.check(RawRecord(5, {**GOOD, "psn": ""}))  # absent PSN counts as 00
    zero_psn = v.check(RawRecord(6, {**GOOD, "psn": "00"}))
    assert isinstance(first, CardRecord) and isinstance(other_psn, CardRecord)
    assert isinstance(dup, Reject) and dup.reason is RejectReason.DUPLICATE_CARD
    assert isinstance(no_psn, CardRecord)
    assert isinstance(zero_psn, Reject) and zero_psn.reason is RejectReason.DUPLICATE_CARD
    assert (v.accepted, v.rejected) == (3, 2)


def test_a_rejected_record_does_not_claim_its_pan() -> None:
    v = _validator()
    assert isinstance(v.check(RawRecord(2, {**GOOD, "name": "x"})), Reject)
    assert isinstance(v.check(RawRecord(3, GOOD)), CardRecord)


def test_first_failing_check_wins() -> None:
    r = _check({"pan": "4761739001010118", "expiry": "9913", "name": "x"})
    assert isinstance(r, Reject) and r.reason is RejectReason.PAN_LUHN


_LONG_DIGITS = re.compile(r"\d{13,}")


@pytest.mark.parametrize(("code", "changes", "field"), CASES)
def test_rejects_never_carry_a_pan_or_secret(code: str, changes: dict[str, str],
                                             field: str) -> None:
    r = _check(changes)
    assert isinstance(r, Reject)
    text = repr(r)
    assert not _LONG_DIGITS.search(text)
    for secret in ("pin_block", "cvv", "icvv", "kdd"):
        value = {**GOOD, **changes}[secret]
        if len(value) >= 8:
            assert value not in text
    assert r.masked_pan is None or "*" in r.masked_pan or len(r.masked_pan) < 13


def test_card_record_repr_masks() -> None:
    r = _check({})
    text = repr(r) + str(r)
    assert GOOD["pan"] not in text and "476173******0119" in text
    assert GOOD["cvv"] not in text and "FEDCBA" not in text


def test_fast_constructor_agrees_with_the_dataclass() -> None:
    r = _check({})
    assert isinstance(r, CardRecord)
    values = {f.name: getattr(r, f.name) for f in dataclasses.fields(CardRecord)}
    assert set(vars(r)) == set(values)
    assert CardRecord(**values) == r == _card_record(**values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.pan = "1"  # type: ignore[misc]


def test_batch_date_outside_yymm_range() -> None:
    issuer, lay = demo()
    with pytest.raises(ConfigError):
        Validator(issuer, lay, date(1999, 12, 31))


def test_service_code_digits() -> None:
    """ISO/IEC 7813 assignments: digit 1 in 1,2,5,6,7,9; digit 2 in 0,2,4; digit 3 in 0..7."""
    valid = {f"{a}{b}{c}" for a in "125679" for b in "024" for c in "01234567"}
    for n in range(1000):
        code = f"{n:03d}"
        assert service_code_valid(code) is (code in valid)


def test_name_characters() -> None:
    """ISO/IEC 7813 track 1 set 0x20..0x5F minus the sentinels % ? and separator ^."""
    expected = {chr(c) for c in range(0x20, 0x60)} - set("%^?")
    assert expected == NAME_CHARACTERS
    assert name_problem("O'BRIEN/MARY-ANN") is None
    assert name_problem("DR. A. SMITH, JR") is None
    assert name_problem(" /") is None  # the EMV "no name" convention: space + slash
    problem = name_problem("SMITH?")
    assert problem is not None and problem[0] is RejectReason.NAME_CHARSET


def test_reason_codes_are_stable_and_unique() -> None:
    codes = [r.value for r in RejectReason]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"R\d{3}", c) for c in codes)
    assert str(RejectReason.PAN_LUHN) == "R001 PAN_LUHN"
    assert RejectReason.SENSITIVE_UNDECRYPTABLE.stage == "prepare"
    assert RejectReason.SENSITIVE_FORMAT.stage == "validate"
