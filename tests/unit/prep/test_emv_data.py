"""Card data element encoders (EMV 4.x Book 3 Annex A and section 4.3 formats).

No published known-answer vector for building tag 57 from its parts was
found; the expected values are spelled out by hand from Book 3 Annex A
(PAN, separator 'D', YYMM, service code, discretionary data, 'F' pad) using
the PAN of the public Visa test card (tests/vectors/known_answers.json), and
a property test parses the result back with an independent reading.
"""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import PreparationError
from pipeline.prep import emv_data as ed


def test_track2_known_layout() -> None:
    assert ed.track2_equivalent("4761739001010119", "2212", "201", "1758928889").hex().upper() == (
        "4761739001010119D22122011758928889"
    )
    # odd nibble count gets one trailing F
    assert ed.track2_equivalent("4761739001010119", "2212", "201").hex().upper() == (
        "4761739001010119D2212201"
    )
    assert ed.track2_equivalent("4761739001010119", "2212", "201", "5").hex().upper() == (
        "4761739001010119D22122015F"
    )


def test_track2_limits() -> None:
    pan = "6234560000000000017"  # 19 digits: 19 + 1 + 4 + 3 = 27 nibbles
    assert len(ed.track2_equivalent(pan, "2812", "220", "1" * 11)) == 19
    with pytest.raises(PreparationError, match="discretionary"):
        ed.track2_equivalent(pan, "2812", "220", "1" * 12)
    with pytest.raises(PreparationError, match="discretionary"):
        ed.track2_equivalent(pan, "2812", "220", "12A")
    with pytest.raises(PreparationError, match="service_code"):
        ed.track2_equivalent(pan, "2812", "22")
    with pytest.raises(PreparationError, match="expiry"):
        ed.track2_equivalent(pan, "2813", "220")


pans = st.integers(12, 19).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))


@settings(max_examples=200, deadline=None)
@given(
    pans,
    st.integers(0, 99),
    st.integers(1, 12),
    st.text("0123456789", min_size=3, max_size=3),
    st.text("0123456789", max_size=8),
)
def test_track2_parses_back(pan: str, yy: int, mm: int, code: str, disc: str) -> None:
    yymm = f"{yy:02d}{mm:02d}"
    nibbles = ed.track2_equivalent(pan, yymm, code, disc).hex().upper()
    body = nibbles[:-1] if nibbles.endswith("F") else nibbles
    got_pan, rest = body.split("D")
    assert (got_pan, rest[:4], rest[4:7], rest[7:]) == (pan, yymm, code, disc)
    assert len(nibbles) % 2 == 0 and nibbles.count("F") <= 1


def test_pan_5a() -> None:
    assert ed.application_pan("4761739001010119").hex().upper() == "4761739001010119"
    assert ed.application_pan("6234560000000000017").hex().upper() == "6234560000000000017F"
    with pytest.raises(PreparationError, match="pan"):
        ed.application_pan("4761739001")
    with pytest.raises(PreparationError, match="pan"):
        ed.application_pan("476173900101011X")


def test_error_never_shows_a_full_pan() -> None:
    with pytest.raises(PreparationError) as info:
        ed.application_pan("47617390010101191234")  # 20 digits
    assert "47617390010101191234" not in str(info.value)
    assert "476173" in str(info.value)


@pytest.mark.parametrize("yymm", ["2401", "2402", "2302", "2004", "9912", "0002"])
def test_expiration_date_is_last_day(yymm: str) -> None:
    year, month = 2000 + int(yymm[:2]), int(yymm[2:])
    day = calendar.monthrange(year, month)[1]
    assert ed.expiration_date(yymm) == bytes.fromhex(f"{yymm}{day:02d}")


def test_dates_and_numbers() -> None:
    assert ed.expiration_date("2402").hex() == "240229"
    assert ed.expiration_date("2302").hex() == "230228"
    assert ed.effective_date("2301").hex() == "230101"
    assert ed.certificate_expiry("2812") == "1228"
    assert ed.pan_sequence_number("01").hex() == "01"
    assert ed.service_code("201").hex() == "0201"
    assert ed.numeric("840", 2).hex() == "0840"
    assert ed.compressed_numeric("123", 3).hex().upper() == "123FFF"
    for bad in ("2413", "24", "24A1", "2400"):
        with pytest.raises(PreparationError, match="expiry"):
            ed.expiration_date(bad)
    with pytest.raises(PreparationError, match="psn"):
        ed.pan_sequence_number("1")
    with pytest.raises(PreparationError, match="service_code"):
        ed.service_code("2O1")
    with pytest.raises(PreparationError, match="value"):
        ed.numeric("12345", 2)


@pytest.mark.parametrize("code", [*range(0x100), 0x17F, 0x2028, 0x3000, 0xFF21, 0x1F600])
def test_cardholder_name_takes_exactly_the_common_character_set(code: int) -> None:
    """Book 4 Annex B: 20..7E and nothing else, each other character named as U+XXXX
    (the ASCII-and-printable shortcut must agree with the per-character rule)."""
    name = f"AB{chr(code)}CD"
    if 0x20 <= code <= 0x7E:
        assert ed.cardholder_name(name) == name.encode("ascii")
        return
    with pytest.raises(PreparationError, match=f"common set: U\\+{code:04X}$"):
        ed.cardholder_name(name)
    both = ", ".join(sorted({"U+0009", f"U+{code:04X}"})).replace("+", "\\+")
    with pytest.raises(PreparationError, match=f"common set: {both}$"):
        ed.cardholder_name(f"{chr(code)}A\tB")


def test_cardholder_name() -> None:
    assert ed.cardholder_name("DOE/JOHN") == b"DOE/JOHN"
    assert ed.cardholder_name("O'NEIL/ANN-MARIE.") == b"O'NEIL/ANN-MARIE."
    with pytest.raises(PreparationError, match="U\\+00C9"):
        ed.cardholder_name("\u00c9LISE/MARIE")
    with pytest.raises(PreparationError, match="U\\+000A"):
        ed.cardholder_name("DOE\nJOHN")
    with pytest.raises(PreparationError, match="length"):
        ed.cardholder_name("A")
    with pytest.raises(PreparationError, match="length"):
        ed.cardholder_name("A" * 27)
