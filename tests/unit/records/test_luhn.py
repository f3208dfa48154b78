"""Luhn check digit (ISO/IEC 7812-1 Annex B) against published numbers and a naive oracle."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidInputError
from pipeline.records.luhn import luhn_check_digit, luhn_valid
from tests.conftest import load_vectors


def naive_luhn_valid(number: str) -> bool:
    """Annex B read literally: double every second digit from the right, add digit sums."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit *= 2
            digit = digit // 10 + digit % 10
        total += digit
    return total % 10 == 0


@pytest.mark.parametrize("vector", load_vectors("luhn")["vectors"])
def test_published_numbers(vector: dict[str, object]) -> None:
    number = str(vector["number"])
    assert luhn_valid(number) is vector["valid"]
    if vector["valid"]:
        assert luhn_check_digit(number[:-1]) == number[-1]


@pytest.mark.parametrize("bad", ["", "12a4", "١٢٣", "12 34", 1234])
def test_rejects_non_digits(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        luhn_valid(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        luhn_check_digit(bad)  # type: ignore[arg-type]
