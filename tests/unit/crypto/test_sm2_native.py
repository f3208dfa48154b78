"""The native SM2 point arithmetic (``pipeline/crypto/native/sm2_curve.c``) against the Python one.

``_sm2_curve.mul_base`` and ``mul_base_add_fixed`` run in C when the
extension is built (``tests/setup.sh``).  These tests hold the C results to
the pure-Python reference (``_mul_base_py``, ``_mul_base_add_fixed_py``, which
the GB/T 32918 known answers and the gmssl cross-checks in ``test_sm2.py``
established) on edge and random scalars, on every exceptional case of the
variable-time sum, and hold the fallback (``CARDPREP_SM2_NATIVE=0``) to the
same published answers in a separate interpreter.  No published vector exists
for intermediate points such as [2^j]G; the reference is our own Python.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto import _sm2_curve as curve
from pipeline.crypto import sm2
from pipeline.errors import InvalidInputError

N = curve.N
G = (curve.mpz(curve.GX), curve.mpz(curve.GY))
ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(
    os.environ.get("CARDPREP_SM2_NATIVE") == "0", reason="native SM2 disabled by the environment"
)


def test_the_extension_is_built() -> None:
    assert curve.native_available(), (
        "pipeline.crypto._sm2_native is not importable or of another ABI version: run "
        "`bash tests/setup.sh` (it compiles pipeline/crypto/native/sm2_curve.c)"
    )


def test_the_c_source_the_build_script_and_the_loader_agree_on_the_abi_version() -> None:
    from pipeline.crypto import _sm2_native_build  # noqa: PLC0415

    source = (ROOT / "pipeline/crypto/native/sm2_curve.c").read_text()
    assert f"#define SM2N_ABI_VERSION {curve.NATIVE_ABI_VERSION}\n" in source
    assert _sm2_native_build.ABI_VERSION == curve.NATIVE_ABI_VERSION
    assert curve._native.lib.sm2n_abi_version() == curve.NATIVE_ABI_VERSION


def test_a_module_of_another_abi_version_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(curve, "NATIVE_ABI_VERSION", curve.NATIVE_ABI_VERSION + 1)
    with pytest.warns(RuntimeWarning, match="ABI version"):
        assert curve._load_native() is None


def _edge_scalars() -> list[int]:
    """1, 2, n-1, n-2, every power of two below n, digit patterns of both tables' windows."""
    out = [1, 2, 3, N - 1, N - 2, N // 2, (N + 1) // 2]
    out += [1 << j for j in range(256) if 1 << j < N]
    out += [(1 << j) - 1 for j in range(1, 256)]
    for width in (curve.NATIVE_WIDTH, curve.NATIVE_VT_WIDTH):
        for digit in (1, (1 << width) - 1, 1 << (width - 1)):
            k = 0
            for j in range(0, 256, width):
                k |= digit << j
            out.append(k % N or 1)
    return out


def test_mul_base_matches_python_on_edge_scalars() -> None:
    for k in _edge_scalars():
        assert curve.mul_base(k) == curve._mul_base_py(k), hex(k)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=N - 1))
def test_mul_base_matches_python(k: int) -> None:
    assert curve.mul_base(k) == curve._mul_base_py(k)


def test_mul_base_outside_1_to_n_minus_1_takes_the_python_path() -> None:
    assert curve.mul_base(0) is None
    assert curve.mul_base(N) is None
    assert curve.mul_base(N + 5) == curve.mul_base(5)


def test_mul_base_results_are_on_the_curve_and_affine() -> None:
    for _ in range(50):
        x, y = curve.mul_base(secrets.randbelow(N - 1) + 1)  # type: ignore[misc]
        assert curve.is_on_curve(int(x), int(y))


@pytest.fixture(scope="module")
def keyed() -> tuple[curve.FixedBaseTable, int]:
    """A table for Q = [d]G, and d."""
    d = secrets.randbelow(N - 2) + 1
    q = curve._mul_base_py(d)
    assert q is not None
    return curve.FixedBaseTable(q), d


def test_fixed_table_has_a_native_part(keyed: tuple[curve.FixedBaseTable, int]) -> None:
    assert keyed[0].native is not None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=N - 1), st.integers(min_value=0, max_value=N - 1))
def test_mul_base_add_fixed_matches_python(s: int, t: int) -> None:
    fixed = _fixed_for_7()
    assert curve.mul_base_add_fixed(s, t, fixed) == curve._mul_base_add_fixed_py(s, t, fixed)


_TABLE_7: list[curve.FixedBaseTable] = []


def _fixed_for_7() -> curve.FixedBaseTable:
    """A table for [7]G, built once (hypothesis calls the test many times)."""
    if not _TABLE_7:
        q = curve._mul_base_py(7)
        assert q is not None
        _TABLE_7.append(curve.FixedBaseTable(q, width=4))
    return _TABLE_7[0]


def test_mul_base_add_fixed_matches_python_on_edge_scalars(
    keyed: tuple[curve.FixedBaseTable, int],
) -> None:
    table = keyed[0]
    edges = _edge_scalars()
    for s, t in zip(edges, reversed(edges), strict=True):
        assert curve.mul_base_add_fixed(s, t, table) == curve._mul_base_add_fixed_py(s, t, table)


def test_mul_base_add_fixed_exceptional_cases(keyed: tuple[curve.FixedBaseTable, int]) -> None:
    table, d = keyed
    t = secrets.randbelow(N - 1) + 1
    # [s]G = -[t]Q: the sum is infinity (P + (-P) inside the C sum)
    s = (-t * d) % N
    assert curve.mul_base_add_fixed(s, t, table) is None
    assert curve._mul_base_add_fixed_py(s, t, table) is None
    # [s]G = [t]Q: the last addition is a doubling
    s = (t * d) % N
    expected = curve._mul_base_py((2 * t * d) % N)
    assert curve.mul_base_add_fixed(s, t, table) == expected
    # zero scalars on either side
    assert curve.mul_base_add_fixed(0, 0, table) is None
    assert curve.mul_base_add_fixed(5, 0, table) == curve._mul_base_py(5)
    assert curve.mul_base_add_fixed(0, 3, table) == curve._mul_base_py((3 * d) % N)


def test_table_of_g_itself_meets_every_window_collision() -> None:
    # Q = G: every window point of s and of t comes from the same multiples of G,
    # so equal and opposite partial sums are frequent.
    same = curve.FixedBaseTable(G)
    for s, t in [(1, 1), (1, N - 1), (N - 1, N - 1), (2, N - 2)] + [
        (secrets.randbelow(N), secrets.randbelow(N)) for _ in range(50)
    ]:
        assert curve.mul_base_add_fixed(s, t, same) == curve._mul_base_py((s + t) % N)


def test_a_table_for_a_point_off_the_curve_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="not on the SM2 curve"):
        curve._native_table((curve.mpz(1), curve.mpz(2)), curve.NATIVE_WIDTH)


def test_sign_and_verify_round_trip_on_the_native_path() -> None:
    d, pub = sm2.generate_keypair()
    verifier = sm2.Sm2Verifier(pub, precompute=True)
    for _ in range(20):
        message = secrets.token_bytes(40)
        signature = sm2.sign(d, message)
        verifier.verify(message, signature)  # native [s]G + [t]Q
        sm2.verify(pub, message, signature)  # the Python wNAF ladder over Q


def test_the_python_fallback_still_gives_the_published_answers() -> None:
    """Without the extension, the SM2 tests (GB/T 32918 known answers, gmssl) still pass."""
    env = dict(os.environ, CARDPREP_SM2_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/crypto/test_sm2.py", "tests/unit/crypto/test_sm2_fixed_key.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c",
         "from pipeline.crypto import _sm2_curve as c; print(c.native_available())"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "False"
