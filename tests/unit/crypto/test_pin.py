"""ISO 9564-1 format 0 checks and format 0 -> 2 re-encoding (pipeline.crypto.pin).

Known answer: the ISO 9564 format 0 worked example (PIN 1234, PAN
43219876543210987 -> 0412AC89ABCDEF67), also in tests/vectors/pin_block.json
(copied by the records engineer with its source).  Property: an independent
integer-arithmetic encoder agrees on random PINs and PANs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.crypto.pin import check_pin_block_iso0, pan_field_iso0, pin_block_iso0_to_iso2
from pipeline.errors import InvalidInputError
from tests.conftest import load_vectors


def _format0(pin: str, pan: str) -> bytes:
    field = int(f"0{len(pin):X}{pin}".ljust(16, "F"), 16)
    return (field ^ int(pan[-13:-1], 16)).to_bytes(8, "big")


@pytest.mark.parametrize("vector", load_vectors("pin_block")["vectors"])
def test_published_format0_blocks_pass_the_check(vector: dict[str, str]) -> None:
    assert vector["source"]
    block = bytes.fromhex(vector["pin_block"])
    check_pin_block_iso0(block, vector["pan"])
    expected = f"2{len(vector['pin']):X}{vector['pin']}".ljust(16, "F")
    assert pin_block_iso0_to_iso2(block, vector["pan"]).hex().upper() == expected


def test_known_answer() -> None:
    block = bytes.fromhex("0412AC89ABCDEF67")
    check_pin_block_iso0(block, "43219876543210987")
    assert pin_block_iso0_to_iso2(block, "43219876543210987") == bytes.fromhex("241234FFFFFFFFFF")
    assert pan_field_iso0("43219876543210987") == bytes.fromhex("0000987654321098")


@given(
    pin=st.text("0123456789", min_size=4, max_size=12),
    pan=st.text("0123456789", min_size=13, max_size=19),
)
def test_round_trip_against_independent_encoder(pin: str, pan: str) -> None:
    block = _format0(pin, pan)
    check_pin_block_iso0(block, pan)
    assert pin_block_iso0_to_iso2(block, pan).hex().upper() == f"2{len(pin):X}{pin}".ljust(16, "F")


@given(
    pin=st.text("0123456789", min_size=4, max_size=12),
    pan=st.text("0123456789", min_size=13, max_size=19),
    other=st.text("0123456789", min_size=13, max_size=19),
)
def test_wrong_pan_is_mostly_refused(pin: str, pan: str, other: str) -> None:
    """A block checked against another PAN decodes to a bad field unless the fields agree."""
    block = _format0(pin, pan)
    if pan[-13:-1] == other[-13:-1]:
        check_pin_block_iso0(block, other)
        return
    try:
        check_pin_block_iso0(block, other)
    except InvalidInputError as exc:
        assert pin not in str(exc)


@pytest.mark.parametrize(
    ("field", "why"),
    [
        ("141234FFFFFFFFFF", "control field"),
        ("031234FFFFFFFFFF", "PIN length"),
        ("0D1234FFFFFFFFFF", "PIN length"),
        ("04123AFFFFFFFFFF", "non-decimal"),
        ("041234FFFFFFFFF0", "fill"),
    ],
)
def test_each_rule_is_named(field: str, why: str) -> None:
    pan = "4761739001010119"
    block = (int(field, 16) ^ int(pan[-13:-1], 16)).to_bytes(8, "big")
    with pytest.raises(InvalidInputError, match=why) as info:
        check_pin_block_iso0(block, pan)
    assert "1234" not in str(info.value)


def test_bad_lengths() -> None:
    with pytest.raises(InvalidInputError, match="8 bytes"):
        check_pin_block_iso0(bytes(7), "4761739001010119")
    with pytest.raises(InvalidInputError, match="pan"):
        check_pin_block_iso0(bytes(8), None)
    with pytest.raises(InvalidInputError, match="pan"):
        pan_field_iso0("123")


@pytest.mark.parametrize(
    ("field", "why"),
    [("141234FFFFFFFFFF", "control field"), ("0D1234FFFFFFFFFF", "PIN length"),
     ("04123AFFFFFFFFFF", "non-decimal"), ("041234FFFFFFFFF0", "fill")],
)  # fmt: skip
def test_the_re_encoding_refuses_as_the_check(field: str, why: str) -> None:
    """pin_block_iso0_to_iso2 runs the very checks of check_pin_block_iso0 (one XOR)."""
    pan = "4761739001010119"
    block = (int(field, 16) ^ int(pan[-13:-1], 16)).to_bytes(8, "big")
    with pytest.raises(InvalidInputError, match=why):
        pin_block_iso0_to_iso2(block, pan)
    with pytest.raises(InvalidInputError, match="pan"):
        pin_block_iso0_to_iso2(_format0("1234", pan), None)  # type: ignore[arg-type]
    good = bytearray(_format0("123456", pan))
    assert pin_block_iso0_to_iso2(good, pan) == bytes.fromhex("26123456FFFFFFFF")
