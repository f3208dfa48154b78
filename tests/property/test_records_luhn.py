"""Luhn (ISO/IEC 7812-1 Annex B): pipeline.records.luhn against a literal reading of
the annex (tests/unit/records/test_luhn.py:naive_luhn_valid) on random digit strings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records.luhn import luhn_check_digit, luhn_valid
from tests.unit.records.test_luhn import naive_luhn_valid


@settings(max_examples=300)
@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_agrees_with_naive_oracle(number: str) -> None:
    assert luhn_valid(number) is naive_luhn_valid(number)
    completed = number + luhn_check_digit(number)
    assert naive_luhn_valid(completed)
