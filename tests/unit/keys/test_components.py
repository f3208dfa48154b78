"""XOR components and Shamir shares (pipeline.keys.components).

GF(2^8) arithmetic is checked against the worked examples of FIPS 197 section
4.2 (tests/vectors/gf256.json).  No public known-answer vector exists for
byte-wise Shamir over the AES field with this share layout, so the split is
cross-checked against an independent interpolation written here (schoolbook
multiplication, inverses by exponentiation a^254) on random inputs.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.kcv import kcv
from pipeline.errors import CeremonyError, InvalidInputError
from pipeline.keys.components import (
    Share,
    component_kcvs,
    format_share,
    gf_div,
    gf_mul,
    parse_component,
    parse_share,
    shamir_combine,
    shamir_split,
    xor_combine,
    xor_split,
)
from tests.conftest import load_vectors

GF = load_vectors("gf256")
KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # KCV 08D7B4 (known_answers.json)

# --- independent GF(2^8) used as the oracle ---------------------------------------


def _slow_mul(a: int, b: int) -> int:
    """Carry-less schoolbook product reduced mod 0x11B (bit by bit, no tables)."""
    p = 0
    for i in range(8):
        if (b >> i) & 1:
            p ^= a << i
    for bit in range(14, 7, -1):
        if (p >> bit) & 1:
            p ^= 0x11B << (bit - 8)
    return p


def _slow_inv(a: int) -> int:
    r = 1
    for _ in range(254):
        r = _slow_mul(r, a)
    return r


def _oracle_interpolate(points: list[tuple[int, int]]) -> int:
    """f(0) from points by Lagrange, with the oracle field."""
    acc = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = _slow_mul(term, _slow_mul(xj, _slow_inv(xi ^ xj)))
        acc ^= term
    return acc


# --- GF(2^8) --------------------------------------------------------------------


@pytest.mark.parametrize("v", GF["products"], ids=lambda v: f"{v['a']}x{v['b']}")
def test_gf_mul_fips197_examples(v: dict[str, str]) -> None:
    assert gf_mul(int(v["a"], 16), int(v["b"], 16)) == int(v["product"], 16)


def test_gf_inverse_known_example() -> None:
    v = GF["inverses"][0]
    assert gf_div(1, int(v["a"], 16)) == int(v["inverse"], 16)


@settings(max_examples=200)
@given(st.integers(0, 255), st.integers(0, 255))
def test_gf_mul_matches_schoolbook(a: int, b: int) -> None:
    assert gf_mul(a, b) == _slow_mul(a, b)


@settings(max_examples=100)
@given(st.integers(0, 255), st.integers(1, 255))
def test_gf_div_inverts_mul(a: int, b: int) -> None:
    assert gf_mul(gf_div(a, b), b) == a


def test_gf_div_by_zero_refused() -> None:
    with pytest.raises(InvalidInputError):
        gf_div(1, 0)


# --- XOR components ---------------------------------------------------------------


def test_xor_known_components_combine_to_known_kcv() -> None:
    """Two fixed components whose XOR is the known-answer key (KCV 08D7B4)."""
    c1 = bytes.fromhex("11111111111111112222222222222222")
    c2 = bytes(a ^ b for a, b in zip(KEY, c1, strict=True))
    assert kcv(xor_combine([c1, c2])).hex().upper() == "08D7B4"


@settings(max_examples=100)
@given(st.binary(min_size=8, max_size=32), st.integers(2, 3))
def test_xor_split_combine_roundtrip(key: bytes, n: int) -> None:
    parts = xor_split(key, n)
    assert len(parts) == n
    assert all(len(p) == len(key) for p in parts)
    assert xor_combine(parts) == key
    # independent: fold with int arithmetic
    acc = 0
    for p in parts:
        acc ^= int.from_bytes(p, "big")
    assert acc.to_bytes(len(key), "big") == key


def test_xor_split_uses_injected_randomness() -> None:
    parts = xor_split(KEY, 2, random_bytes=lambda n: b"\xff" * n)
    assert parts[0] == b"\xff" * 16
    assert parts[1] == bytes(b ^ 0xFF for b in KEY)


def test_xor_split_components_differ_from_key() -> None:
    parts = xor_split(KEY, 3)
    assert KEY not in parts


@pytest.mark.parametrize("n", [0, 1, 4])
def test_xor_split_refuses_bad_count(n: int) -> None:
    with pytest.raises(InvalidInputError, match="components"):
        xor_split(KEY, n)


@pytest.mark.parametrize("n", [1, 4])
def test_xor_combine_refuses_bad_count(n: int) -> None:
    with pytest.raises(CeremonyError, match="components"):
        xor_combine([KEY] * n)


def test_xor_combine_refuses_unequal_lengths() -> None:
    with pytest.raises(CeremonyError, match="length"):
        xor_combine([KEY, KEY[:8]])


# --- Shamir -------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    st.binary(min_size=1, max_size=24),
    st.integers(2, 5).flatmap(lambda m: st.tuples(st.just(m), st.integers(m, 6))),
    st.randoms(use_true_random=False),
)
def test_shamir_any_m_shares_recover(key: bytes, mn: tuple[int, int], rnd: object) -> None:
    m, n = mn
    shares = shamir_split(key, m, n)
    picked = list(shares)
    rnd.shuffle(picked)  # type: ignore[attr-defined]
    assert shamir_combine(picked[:m], m) == key
    # independent oracle interpolation of each byte
    subset = picked[:m]
    oracle = bytes(
        _oracle_interpolate([(s.index, s.value[k]) for s in subset]) for k in range(len(key))
    )
    assert oracle == key


def test_shamir_every_subset_of_three_of_five() -> None:
    shares = shamir_split(KEY, 3, 5)
    for subset in itertools.combinations(shares, 3):
        assert shamir_combine(list(subset), 3) == KEY


def test_shamir_fixed_randomness_gives_line_through_key() -> None:
    """m=2 with coefficient bytes all 0x01: share x = key ^ x (f(x) = k + 1*x)."""
    shares = shamir_split(bytes(4), 2, 3, random_bytes=lambda n: b"\x01" * n)
    assert [s.value for s in shares] == [b"\x01" * 4, b"\x02" * 4, b"\x03" * 4]


def test_shamir_one_share_of_two_is_consistent_with_every_secret() -> None:
    """Perfect secrecy for m=2: one share fits each of the 256 secrets with exactly one
    random coefficient, so it says nothing about the secret."""
    share = shamir_split(b"\x5a", 2, 3)[1]
    for secret in range(256):
        coeff = gf_div(share.value[0] ^ secret, share.index)
        again = shamir_split(bytes([secret]), 2, 3, random_bytes=lambda n, c=coeff: bytes([c]) * n)
        assert again[1] == share


def test_shamir_combine_refuses_too_few() -> None:
    shares = shamir_split(KEY, 3, 5)
    with pytest.raises(CeremonyError, match="3 shares are needed"):
        shamir_combine(shares[:2], 3)


def test_shamir_combine_refuses_duplicate_index() -> None:
    shares = shamir_split(KEY, 2, 3)
    with pytest.raises(CeremonyError, match="distinct"):
        shamir_combine([shares[0], shares[0]], 2)


def test_shamir_combine_refuses_unequal_lengths() -> None:
    with pytest.raises(CeremonyError, match="one length"):
        shamir_combine([Share(1, b"\x01\x02"), Share(2, b"\x01")], 2)


@pytest.mark.parametrize(("m", "n"), [(1, 3), (4, 3), (2, 256)])
def test_shamir_split_refuses_bad_parameters(m: int, n: int) -> None:
    with pytest.raises(InvalidInputError, match="shares"):
        shamir_split(KEY, m, n)


def test_share_index_range() -> None:
    with pytest.raises(InvalidInputError, match=r"share\.index"):
        Share(0, b"\x01")


def test_share_repr_hides_value() -> None:
    assert "01" not in repr(Share(1, b"\x01\x01"))


# --- text forms and KCVs -------------------------------------------------------------


def test_parse_component_tolerates_spacing() -> None:
    assert parse_component("0123 4567 89AB CDEF\nFEDC-BA98-7654-3210\n") == KEY


def test_parse_component_refuses_non_hex_without_echoing_it() -> None:
    with pytest.raises(InvalidInputError) as exc:
        parse_component("0123ZZ")
    assert "0123ZZ" not in str(exc.value)


def test_share_text_roundtrip() -> None:
    s = Share(7, KEY)
    assert parse_share(format_share(s)) == s


def test_parse_share_refuses_missing_index() -> None:
    with pytest.raises(InvalidInputError, match="index"):
        parse_share("00FF")


def test_component_kcvs_each_component() -> None:
    parts = xor_split(KEY, 2)
    assert component_kcvs(parts, kcv) == tuple(kcv(p) for p in parts)
