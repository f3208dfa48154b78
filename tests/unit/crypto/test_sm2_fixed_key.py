"""SM2 verification under a fixed, reused public key: ``Sm2Verifier(..., precompute=True)``.

The precomputed verifier sums window points of G's table and of a table for
Q (``_sm2_curve.FixedBaseTable``) in a tree with shared inversions; the plain
verifier runs a wNAF ladder over Q.  These tests hold the two to the published
GB/T 32918 example, to each other, and to the exceptional cases (points of the
two tables that coincide) that only the fixed-key path can meet.
"""

from __future__ import annotations

import doctest
import secrets
from types import ModuleType

import pytest

from pipeline.crypto import _sm2_curve as curve
from pipeline.crypto import pboc_certs, sm2
from pipeline.errors import InvalidInputError, KeyLengthError, SignatureError
from tests.conftest import load_vectors

N = curve.N
G = (curve.mpz(curve.GX), curve.mpz(curve.GY))
(VECTOR,) = load_vectors("sm2")
MESSAGE = bytes.fromhex(VECTOR["inputs"]["message_hex"])
UID = bytes.fromhex(VECTOR["inputs"]["user_id_hex"])
EXPECTED = VECTOR["expected"]
PUB = bytes.fromhex(EXPECTED["public_key_x"] + EXPECTED["public_key_y"])
SIG = bytes.fromhex(EXPECTED["r"] + EXPECTED["s"])


@pytest.fixture(scope="module")
def example_verifier() -> sm2.Sm2Verifier:
    return sm2.Sm2Verifier(PUB, UID, precompute=True)


# --- GB/T 32918.5 / GM/T 0003.5 Annex A example --------------------------------------


def test_published_example_verifies_with_the_precomputed_verifier(
    example_verifier: sm2.Sm2Verifier,
) -> None:
    assert example_verifier.precomputed
    example_verifier.verify(MESSAGE, SIG)
    example_verifier.verify_digest(bytes.fromhex(VECTOR["our_computation"]["e"]), SIG)


def test_published_example_tampered_is_rejected(example_verifier: sm2.Sm2Verifier) -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        example_verifier.verify(MESSAGE + b"!", SIG)
    for index in (0, 31, 32, 63):
        forged = bytearray(SIG)
        forged[index] ^= 0x01
        with pytest.raises(SignatureError):
            example_verifier.verify(MESSAGE, bytes(forged))


def test_published_example_needs_its_uid() -> None:
    with pytest.raises(SignatureError):
        sm2.Sm2Verifier(PUB, b"another id", precompute=True).verify(MESSAGE, SIG)


# --- agreement with the plain (wNAF) verifier --------------------------------------------


def test_random_keys_messages_and_signatures_agree_with_the_plain_verifier() -> None:
    """50 random keys: valid signatures pass both, every other signature fails both."""
    for _ in range(50):
        d, pub = sm2.generate_keypair()
        plain = sm2.Sm2Verifier(pub)
        fast = sm2.Sm2Verifier(pub, precompute=True)
        message = secrets.token_bytes(secrets.randbelow(300))
        signature = sm2.sign(d, message)
        plain.verify(message, signature)
        fast.verify(message, signature)
        wrong = [
            secrets.token_bytes(64),
            sm2.sign(d, message + b"x"),
            signature[32:] + signature[:32],
        ]
        for candidate in wrong:
            outcomes = []
            for verifier in (plain, fast):
                try:
                    verifier.verify(message, candidate)
                    outcomes.append("ok")
                except SignatureError as exc:
                    outcomes.append(exc.detail)
            assert outcomes[0] == outcomes[1] != "ok"


def test_table_point_sum_equals_the_wnaf_ladder() -> None:
    """[s]G + [t]Q by the two tables equals the Jacobian wNAF path, random Q, s, t."""
    for _ in range(5):
        q = curve.mul_base(secrets.randbelow(N - 2) + 1)
        assert q is not None
        table = curve.FixedBaseTable(q, width=secrets.choice([4, 5, 8]))
        for _ in range(40):
            s, t = secrets.randbelow(N), secrets.randbelow(N)
            assert curve.mul_base_add_fixed(s, t, table) == curve.mul_base_add(s, t, q)
        assert table.mul(1) == q
        assert table.mul(0) is None
        assert table.mul(N) is None


# --- exceptional cases: points of the two tables coincide --------------------------------


def test_same_windows_in_both_tables_double_instead_of_failing() -> None:
    """Q = G with G's own width: every pair of window points is equal (the doubling case)."""
    table = curve.FixedBaseTable(G, width=curve.W)
    for _ in range(20):
        k = secrets.randbelow(N - 1) + 1
        assert curve.mul_base_add_fixed(k, k, table) == curve.mul_base(2 * k % N)


def test_opposite_scalars_sum_to_infinity() -> None:
    q_scalar = secrets.randbelow(N - 2) + 1
    q = curve.mul_base(q_scalar)
    assert q is not None
    table = curve.FixedBaseTable(q, width=8)
    t = secrets.randbelow(N - 1) + 1
    assert curve.mul_base_add_fixed(-q_scalar * t % N, t, table) is None


def test_signature_whose_point_is_infinity_is_rejected() -> None:
    """r, s chosen so that [s]G + [t]Q = O (GB/T 32918.2 7.1 B6-B7): both verifiers refuse."""
    d, pub = sm2.generate_keypair()
    d_int = int.from_bytes(d, "big")
    for _ in range(20):
        t = secrets.randbelow(N - 1) + 1
        s = -d_int * t % N
        r = (t - s) % N
        if r and s:
            break
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for verifier in (sm2.Sm2Verifier(pub), sm2.Sm2Verifier(pub, precompute=True)):
        with pytest.raises(SignatureError, match="does not verify"):
            verifier.verify(b"m", signature)


def test_key_equal_to_g_still_verifies() -> None:
    """d = 1 makes Q = G: the two tables share points, the fallback keeps answers exact."""
    d = (1).to_bytes(32, "big")
    fast = sm2.Sm2Verifier(sm2.public_key(d), precompute=True)
    for _ in range(20):
        message = secrets.token_bytes(16)
        fast.verify(message, sm2.sign(d, message))


# --- inputs ---------------------------------------------------------------------------


def test_bad_public_key_is_refused_before_building_a_table() -> None:
    with pytest.raises(InvalidInputError, match="not on the SM2 curve"):
        sm2.Sm2Verifier(bytes(64), precompute=True)
    with pytest.raises(KeyLengthError):
        sm2.Sm2Verifier(PUB[:-1], precompute=True)


def test_table_refuses_bad_width_and_off_curve_point() -> None:
    with pytest.raises(InvalidInputError, match="width"):
        curve.FixedBaseTable(G, width=1)
    with pytest.raises(InvalidInputError, match="width"):
        curve.FixedBaseTable(G, width=17)
    with pytest.raises(InvalidInputError, match="not on the SM2 curve"):
        curve.FixedBaseTable((G[0], G[1] + 1), width=4)


def test_malformed_signatures_fail_the_same_way(example_verifier: sm2.Sm2Verifier) -> None:
    for bad, match in (
        (SIG[:-1], "expected 64 bytes"),
        (bytes(64), "r is outside"),
        (SIG[:32] + N.to_bytes(32, "big"), "s is outside"),
        ((N - int(SIG[32:].hex(), 16)).to_bytes(32, "big") + SIG[32:], "t = r \\+ s = 0"),
    ):
        with pytest.raises(SignatureError, match=match):
            example_verifier.verify(MESSAGE, bad)


def test_repr_says_precomputed_and_shows_no_more_than_4_key_bytes(
    example_verifier: sm2.Sm2Verifier,
) -> None:
    assert repr(example_verifier) == "Sm2Verifier(public_key=09F9DF31.., precompute=True)"
    assert not sm2.Sm2Verifier(PUB).precomputed


@pytest.mark.parametrize("module", [curve, sm2, pboc_certs])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
