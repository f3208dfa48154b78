"""SM2 signatures (GB/T 32918.2): the published example, input validation, edge cases, DER."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from pipeline.crypto import _sm2_curve as curve
from pipeline.crypto import sm2
from pipeline.errors import InvalidInputError, KeyLengthError, SignatureError
from tests.conftest import load_vectors

N = curve.N
(VECTOR,) = load_vectors("sm2")
D = bytes.fromhex(VECTOR["inputs"]["private_key_d"])
K = bytes.fromhex(VECTOR["inputs"]["k"])
MESSAGE = bytes.fromhex(VECTOR["inputs"]["message_hex"])
UID = bytes.fromhex(VECTOR["inputs"]["user_id_hex"])
EXPECTED = VECTOR["expected"]
PUB = bytes.fromhex(EXPECTED["public_key_x"] + EXPECTED["public_key_y"])
SIG = bytes.fromhex(EXPECTED["r"] + EXPECTED["s"])


def _scalar(value: int) -> bytes:
    return value.to_bytes(32, "big")


# --- GB/T 32918.5 / GM/T 0003.5 Annex A example ------------------------------------


def test_public_key_matches_published_example() -> None:
    assert sm2.public_key(D) == PUB


def test_sign_with_published_nonce_reproduces_r_and_s() -> None:
    assert sm2.sign(D, MESSAGE, uid=UID, k=K) == SIG
    assert sm2.Sm2Signer(D).sign(MESSAGE, k=K) == SIG


def test_published_signature_verifies() -> None:
    sm2.verify(PUB, MESSAGE, SIG, uid=UID)


def test_z_and_e_of_the_example() -> None:
    """Z_A and e are the vector file's own computation (not published); r, s above are."""
    ours = VECTOR["our_computation"]
    assert sm2.z_value(PUB, UID).hex().upper() == ours["ZA"]
    assert sm2.message_digest(PUB, MESSAGE, UID).hex().upper() == ours["e"]
    assert sm2.sign_digest(D, bytes.fromhex(ours["e"]), k=K) == SIG


def test_default_uid_is_gmt_0009() -> None:
    assert sm2.DEFAULT_UID == UID == b"1234567812345678"


# --- round trips and tampering -------------------------------------------------------


def test_random_signatures_differ_and_verify() -> None:
    d, pub = sm2.generate_keypair()
    first, second = sm2.sign(d, b"m"), sm2.sign(d, b"m")
    assert first != second
    sm2.verify(pub, b"m", first)
    sm2.verify(pub, b"m", second)


def test_custom_uid_must_match() -> None:
    d, pub = sm2.generate_keypair()
    sig = sm2.sign(d, b"m", uid=b"ALICE123@YAHOO.COM")
    sm2.verify(pub, b"m", sig, uid=b"ALICE123@YAHOO.COM")
    with pytest.raises(SignatureError):
        sm2.verify(pub, b"m", sig)


def test_empty_uid_is_allowed() -> None:
    d, pub = sm2.generate_keypair()
    sm2.verify(pub, b"m", sm2.sign(d, b"m", uid=b""), uid=b"")


@pytest.mark.parametrize("position", [0, 17, 31, 32, 50, 63])
def test_flipped_signature_bit_fails(position: int) -> None:
    tampered = bytearray(SIG)
    tampered[position] ^= 0x01
    with pytest.raises(SignatureError):
        sm2.verify(PUB, MESSAGE, bytes(tampered))


def test_other_message_and_other_key_fail() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        sm2.verify(PUB, MESSAGE + b"!", SIG)
    _, other = sm2.generate_keypair()
    with pytest.raises(SignatureError, match="does not verify"):
        sm2.verify(other, MESSAGE, SIG)


def test_signer_repr_hides_the_private_key() -> None:
    signer = sm2.Sm2Signer(D)
    assert D.hex() not in repr(signer).lower()
    assert D.hex()[:8] not in repr(signer).lower()
    assert signer.public_key == PUB
    assert signer.z == sm2.z_value(PUB)


# --- key generation -------------------------------------------------------------------


def test_generate_keypair_is_consistent() -> None:
    d, pub = sm2.generate_keypair()
    assert len(d) == 32 and len(pub) == 64
    assert sm2.public_key(d) == pub


@pytest.mark.parametrize(("draw", "expected_d"), [(0, 1), (N - 3, N - 2)])
def test_generate_keypair_range_ends(
    monkeypatch: pytest.MonkeyPatch, draw: int, expected_d: int
) -> None:
    """d = randbelow(n - 2) + 1 covers exactly [1, n - 2] (GB/T 32918.1 6.1)."""
    calls: list[int] = []

    def fake_randbelow(bound: int) -> int:
        calls.append(bound)
        return draw

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    d, pub = sm2.generate_keypair()
    assert calls == [N - 2]
    assert int.from_bytes(d, "big") == expected_d
    assert pub == sm2.public_key(d)


def test_public_key_of_n_minus_2_is_minus_two_g() -> None:
    pub = sm2.public_key(_scalar(N - 2))
    two_g = sm2.public_key(_scalar(2))
    assert pub[:32] == two_g[:32]
    assert int.from_bytes(pub[32:], "big") == curve.P - int.from_bytes(two_g[32:], "big")


# --- input validation ----------------------------------------------------------------


@pytest.mark.parametrize("d", [_scalar(0), _scalar(N - 1), _scalar(N), b"\xff" * 32])
def test_private_key_out_of_range(d: bytes) -> None:
    with pytest.raises(InvalidInputError, match=r"^d: private key is outside"):
        sm2.public_key(d)
    with pytest.raises(InvalidInputError, match=r"^d:"):
        sm2.sign(d, b"m")


@pytest.mark.parametrize("d", [b"", b"\x01" * 31, b"\x01" * 33])
def test_private_key_wrong_length(d: bytes) -> None:
    with pytest.raises(KeyLengthError, match="d: expected 32 bytes"):
        sm2.Sm2Signer(d)


def test_private_key_wrong_type() -> None:
    with pytest.raises(InvalidInputError, match="d: expected bytes"):
        sm2.public_key(D.hex())  # type: ignore[arg-type]


def test_public_key_not_on_curve() -> None:
    bad = PUB[:63] + bytes([PUB[63] ^ 1])
    with pytest.raises(InvalidInputError, match="public_key: point is not on the SM2 curve"):
        sm2.verify(bad, MESSAGE, SIG)
    with pytest.raises(InvalidInputError, match="public_key"):
        sm2.z_value(bad)


def test_public_key_coordinate_not_reduced() -> None:
    """x + p has the same residue as x but is not a valid encoding (GB/T 32918.1 6.2.1 b)."""
    x = int.from_bytes(PUB[:32], "big")
    if x + curve.P < 1 << 256:
        bad = (x + curve.P).to_bytes(32, "big") + PUB[32:]
    else:
        bad = b"\xff" * 32 + PUB[32:]
    with pytest.raises(InvalidInputError, match="public_key"):
        sm2.verify(bad, MESSAGE, SIG)


@pytest.mark.parametrize("pub", [b"", b"\x04" + bytes(64), bytes(63)])
def test_public_key_wrong_length(pub: bytes) -> None:
    with pytest.raises(KeyLengthError, match="public_key: expected 64 bytes"):
        sm2.verify(pub, MESSAGE, SIG)


def test_uid_too_long() -> None:
    with pytest.raises(InvalidInputError, match="uid: at most 8191 bytes"):
        sm2.z_value(PUB, b"a" * 8192)
    sm2.z_value(PUB, b"a" * 8191)


@pytest.mark.parametrize("signature", [b"", SIG[:63], SIG + b"\x00"])
def test_signature_wrong_length(signature: bytes) -> None:
    with pytest.raises(SignatureError, match="signature: expected 64 bytes"):
        sm2.verify(PUB, MESSAGE, signature)


@pytest.mark.parametrize(
    ("r", "s", "message"),
    [
        (0, 1, "r is outside"),
        (N, 1, "r is outside"),
        (1, 0, "s is outside"),
        (1, N, "s is outside"),
        (5, N - 5, "t = r \\+ s = 0"),
    ],
)
def test_signature_component_ranges(r: int, s: int, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        sm2.verify(PUB, MESSAGE, _scalar(r) + _scalar(s))


def test_verify_result_at_infinity_is_rejected() -> None:
    """P = G, s = 1, r = n - 2: t = n - 1 and [s]G + [t]P = [n]G = O (7.1 B6)."""
    g_pub = sm2.public_key(_scalar(1))
    with pytest.raises(SignatureError, match="does not verify"):
        sm2.verify(g_pub, b"m", _scalar(N - 2) + _scalar(1))


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(InvalidInputError, match="e: expected 32 bytes"):
        sm2.sign_digest(D, b"\x00" * 31)
    with pytest.raises(InvalidInputError, match="e: expected 32 bytes"):
        sm2.verify_digest(PUB, b"", SIG)


@pytest.mark.parametrize("k", [_scalar(0), _scalar(N), b"\x01" * 31])
def test_fixed_nonce_must_be_valid(k: bytes) -> None:
    with pytest.raises(InvalidInputError, match=r"^k:"):
        sm2.sign(D, MESSAGE, k=k)


def _x1(k: int) -> int:
    point = curve.mul_base(k)
    assert point is not None
    return int(point[0])


def test_fixed_nonce_giving_r_zero_raises() -> None:
    """Choose e = -x1 mod n so that r = (e + x1) mod n = 0 (GB/T 32918.2 6.1 A5)."""
    k = 12345
    e = (-_x1(k)) % N
    with pytest.raises(InvalidInputError, match="r = 0 or r \\+ k = n"):
        sm2.sign_digest(D, _scalar(e), k=_scalar(k))


def test_fixed_nonce_giving_r_plus_k_n_raises() -> None:
    k = 12345
    e = (N - k - _x1(k)) % N
    with pytest.raises(InvalidInputError, match="r = 0 or r \\+ k = n"):
        sm2.sign_digest(D, _scalar(e), k=_scalar(k))


def test_fixed_nonce_giving_s_zero_raises() -> None:
    """s = 0 when k = r d mod n: pick r = k / d, then e = r - x1 (6.1 A6)."""
    d = int.from_bytes(D, "big")
    k = 987654321
    r = k * pow(d, -1, N) % N
    e = (r - _x1(k)) % N
    with pytest.raises(InvalidInputError, match="s = 0"):
        sm2.sign_digest(D, _scalar(e), k=_scalar(k))


def test_random_nonce_retries_after_a_bad_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first nonce that gives r = 0 is discarded and a fresh one drawn (A5 -> A3)."""
    bad_k = 777
    e = (-_x1(bad_k)) % N
    draws = iter([bad_k - 1, 4242 - 1])
    monkeypatch.setattr(secrets, "randbelow", lambda bound: next(draws))
    sig = sm2.sign_digest(D, _scalar(e))
    sm2.verify_digest(PUB, _scalar(e), sig)
    assert sig == sm2.sign_digest(D, _scalar(e), k=_scalar(4242))


# --- DER interchange --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "s"), [(1, 1), (0x7F, 0x80), (N - 1, N - 1), (1 << 255, 0x00FF), (0xABCDEF, N - 2)]
)
def test_der_round_trip_matches_cryptography(r: int, s: int) -> None:
    """cryptography's DSS encoder is an independent DER implementation."""
    raw = _scalar(r) + _scalar(s)
    der = sm2.signature_to_der(raw)
    assert der == encode_dss_signature(r, s)
    assert decode_dss_signature(der) == (r, s)
    assert sm2.signature_from_der(der) == raw


@pytest.mark.parametrize(
    "der",
    [
        b"",
        bytes.fromhex("3007020101020101"),  # SEQUENCE length longer than its content
        bytes.fromhex("3007020101020101 00"),  # trailing byte inside the SEQUENCE
        bytes.fromhex("3006020101020101 00"),  # trailing byte after the SEQUENCE
        bytes.fromhex("3007020101020200 01"),  # non-minimal INTEGER
        bytes.fromhex("3006020101020181"),  # negative INTEGER
        bytes.fromhex("3006030101020101"),  # not an INTEGER
        bytes.fromhex("30050201010201"),  # truncated INTEGER
        bytes.fromhex("3026020101022101" + "00" * 32),  # s = 2^256, longer than 32 bytes
    ],
)
def test_der_rejects_malformed(der: bytes) -> None:
    with pytest.raises(SignatureError):
        sm2.signature_from_der(der)


def test_signature_to_der_needs_64_bytes() -> None:
    with pytest.raises(InvalidInputError, match="signature"):
        sm2.signature_to_der(b"\x01" * 63)


# --- curve arithmetic: fixed base against variable base --------------------------------


def test_mul_base_agrees_with_wnaf_on_edge_scalars() -> None:
    g: Any = (curve.mpz(curve.GX), curve.mpz(curve.GY))
    scalars = [1, 2, 3, (1 << curve.W) - 1, 1 << curve.W, (1 << 255) + 1, N - 2, N - 1]
    scalars += [secrets.randbelow(N - 1) + 1 for _ in range(20)]
    for k in scalars:
        assert curve.mul_base(k) == curve.mul_point(k, g), k


def test_mul_base_exceptional_scalars_use_careful_path() -> None:
    """k = n gives infinity and k = n + 1 gives G (partial sums collide with the table)."""
    assert curve.mul_base(0) is None
    assert curve.mul_base(N) is None
    assert curve.mul_base(N + 1) == (curve.GX, curve.GY)
    assert curve.mul_point(N, (curve.mpz(curve.GX), curve.mpz(curve.GY))) is None
