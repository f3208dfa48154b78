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


# --- ABI 3: the randomised [k]G, x-only results, the verification check, point validity ----


def _jacobian_out(k: int, blind: bytes) -> tuple[int, int, int]:
    """The raw (X, Y, Z) the extension writes for [k]G randomised by ``blind``."""
    ffi, lib = curve._native.ffi, curve._native.lib
    out = ffi.new("unsigned char[96]")
    assert lib.sm2n_mul_base_ct(curve._native_base_table(), k.to_bytes(32, "big"), blind, out) == 1
    raw = ffi.buffer(out)[:]
    return tuple(int.from_bytes(raw[i : i + 32], "big") for i in (0, 32, 64))  # type: ignore[return-value]


@pytest.mark.parametrize(
    "blind",
    [0, 1, 2, curve.P - 1, curve.P, curve.P + 1, (1 << 256) - 1, secrets.randbits(256)],
)
def test_mul_base_randomisation_keeps_the_point_and_scales_z(blind: int) -> None:
    # (X r^2, Y r^3, Z r) for r = blind mod p, r = 1 when that is 0: the same affine point.
    k = secrets.randbelow(N - 1) + 1
    x1, y1, z1 = _jacobian_out(k, (1).to_bytes(32, "big"))
    xr, yr, zr = _jacobian_out(k, blind.to_bytes(32, "big"))
    r = blind % curve.P or 1
    p = curve.P
    assert (xr, yr, zr) == (x1 * r * r % p, y1 * r * r * r % p, z1 * r % p)
    expected = curve._mul_base_py(k)
    assert expected is not None
    zi = pow(zr, -1, p)
    assert (xr * zi * zi % p, yr * zi * zi * zi % p) == expected


def test_mul_base_z_is_randomised_per_call() -> None:
    ffi = curve._native.ffi
    k = secrets.randbelow(N - 1) + 1
    zs = set()
    for _ in range(5):
        out = ffi.new("unsigned char[96]")
        curve._native.lib.sm2n_mul_base_ct(
            curve._native_base_table(), k.to_bytes(32, "big"), secrets.token_bytes(32), out
        )
        zs.add(ffi.buffer(out)[64:])
    assert len(zs) == 5


def test_mul_base_x_matches_python_on_edge_scalars() -> None:
    for k in _edge_scalars():
        point = curve._mul_base_py(k)
        assert point is not None
        assert curve.mul_base_x(k) == int(point[0]), hex(k)
        assert type(curve.mul_base_x(k)) is int


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=N - 1))
def test_mul_base_x_matches_python(k: int) -> None:
    point = curve._mul_base_py(k)
    assert point is not None
    assert curve.mul_base_x(k) == int(point[0])


def test_mul_base_x_outside_1_to_n_minus_1() -> None:
    with pytest.raises(InvalidInputError, match="infinity"):
        curve.mul_base_x(N)
    assert curve.mul_base_x(N + 5) == curve.mul_base_x(5)


def _x_equals_both(s: int, t: int, table: curve.FixedBaseTable, v: int) -> bool:
    """The C answer, held to the Python reference of the same check."""
    native = curve.mul_base_add_fixed_x_equals(s, t, table, v)
    point = curve._mul_base_add_fixed_py(s, t, table)
    assert native == (point is not None and int(point[0]) % N == v), (s, t, v)
    return native


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=N - 1), st.integers(min_value=0, max_value=N - 1))
def test_x_equals_matches_python(s: int, t: int) -> None:
    fixed = _fixed_for_7()
    point = curve._mul_base_add_fixed_py(s, t, fixed)
    if point is None:
        assert not _x_equals_both(s, t, fixed, 0)
        return
    x = int(point[0]) % N
    assert _x_equals_both(s, t, fixed, x)
    assert not _x_equals_both(s, t, fixed, (x + 1) % N)
    assert not _x_equals_both(s, t, fixed, (x - 1) % N)


def test_x_equals_exceptional_cases(keyed: tuple[curve.FixedBaseTable, int]) -> None:
    table, d = keyed
    t = secrets.randbelow(N - 1) + 1
    s = (-t * d) % N  # the sum is infinity: never equal, whatever v
    for v in (0, 1, N - 1):
        assert not _x_equals_both(s, t, table, v)
    s = (t * d) % N  # a doubling inside the sum
    x = int(curve._mul_base_py((2 * t * d) % N)[0])  # type: ignore[index]
    assert _x_equals_both(s, t, table, x % N)
    assert not _x_equals_both(0, 0, table, 0)
    assert _x_equals_both(5, 0, table, int(curve._mul_base_py(5)[0]) % N)  # type: ignore[index]
    for v in (-1, N, N + 1):
        with pytest.raises(InvalidInputError, match="v"):
            curve.mul_base_add_fixed_x_equals(1, 1, table, v)


def _sqrt_mod_p(a: int) -> int | None:
    """A square root mod p (p = 3 mod 4), or None."""
    root = pow(a, (curve.P + 1) // 4, curve.P)
    return root if root * root % curve.P == a % curve.P else None


def _point_with_x_at_least_n() -> curve.Affine:
    """A curve point whose x lies in [n, p): x mod n then differs from x (B7's rare case)."""
    x = N
    while True:
        y = _sqrt_mod_p(x**3 - 3 * x + curve.B)
        if y is not None:
            return curve.mpz(x), curve.mpz(y)
        x += 1


def test_x_equals_finds_x_between_n_and_p() -> None:
    # x in [n, p) happens with probability ~2^-128 in a real signature, so the point is made.
    r_point = _point_with_x_at_least_n()
    x = int(r_point[0])
    assert N <= x < curve.P
    table = curve.FixedBaseTable(r_point)
    assert _x_equals_both(0, 1, table, x - N)  # Z = 1
    assert not _x_equals_both(0, 1, table, (x - N + 1) % N)
    # the same point reached as G + (R - G): Z != 1 in the C sum
    minus_g = (G[0], curve._p - G[1])
    shifted = curve._affine_add(r_point, minus_g)
    assert shifted is not None
    table2 = curve.FixedBaseTable(shifted)
    assert _x_equals_both(1, 1, table2, x - N)
    assert not _x_equals_both(1, 1, table2, x - N + 1)


def test_x_equals_c_refuses_v_not_below_n(keyed: tuple[curve.FixedBaseTable, int]) -> None:
    lib = curve._native.lib
    one = (1).to_bytes(32, "big")
    for v in (N, curve.P - 1, (1 << 256) - 1):
        rc = lib.sm2n_mul2_vt_x_equals(
            curve._native_base_table_vt(), one, keyed[0].native, one, v.to_bytes(32, "big")
        )
        assert rc == -2


def test_x_equals_python_fallback_of_a_table_without_native_part(
    keyed: tuple[curve.FixedBaseTable, int],
) -> None:
    table, d = keyed
    python_only = curve.FixedBaseTable(curve._mul_base_py(d), width=4)  # type: ignore[arg-type]
    python_only.native = None
    for _ in range(5):
        s, t = secrets.randbelow(N), secrets.randbelow(N)
        x = int(curve._mul_base_add_fixed_py(s, t, table)[0]) % N  # type: ignore[index]
        assert curve.mul_base_add_fixed_x_equals(s, t, python_only, x)
        assert not curve.mul_base_add_fixed_x_equals(s, t, python_only, (x + 1) % N)


def _xy(x: int, y: int) -> bytes:
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def test_point_validity_in_c_matches_python() -> None:
    p = curve.P
    cases = [_xy(curve.GX, curve.GY), _xy(curve.GX, p - curve.GY), bytes(64), _xy(0, 0)]
    cases += [_xy(curve.GX, curve.GY + 1), _xy(curve.GX + 1, curve.GY)]
    r_point = _point_with_x_at_least_n()
    cases += [_xy(int(r_point[0]), int(r_point[1])), _xy(p, 0), _xy(p - 1, 0)]
    cases += [_xy((1 << 256) - 1, (1 << 256) - 1)]
    for _ in range(30):
        x, y = curve._mul_base_py(secrets.randbelow(N - 1) + 1)  # type: ignore[misc]
        cases += [_xy(int(x), int(y)), _xy(int(x), int(y) ^ 1), _xy(int(x) ^ 4, int(y))]
    for xy in cases:
        x, y = int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big")
        assert curve.point_bytes_on_curve(xy) == curve.is_on_curve(x, y), xy.hex()
    with pytest.raises(InvalidInputError):
        curve.point_bytes_on_curve(bytes(63))


def test_a_coordinate_not_below_p_is_refused_even_if_its_residue_is_on_the_curve() -> None:
    # GB/T 32918.1 6.2.1 b: x, y in [0, p-1].  Points with a small x (< 2^256 - p) or a small y
    # are made here, so that x + p (or y + p) still fits in 32 bytes.
    p = curve.P
    x = 0
    while (y := _sqrt_mod_p(x**3 - 3 * x + curve.B)) is None:
        x += 1
    assert curve.point_bytes_on_curve(_xy(x, y))
    assert not curve.point_bytes_on_curve(_xy(x + p, y))
    assert not curve.is_on_curve(x + p, y)
    small_y = min(y, p - y)
    # a point with y small: swap roles by taking the negation when p - y is the small one
    if small_y + p < 1 << 256:
        assert curve.point_bytes_on_curve(_xy(x, small_y))
        assert not curve.point_bytes_on_curve(_xy(x, small_y + p))


# --- ABI 4: signed-digit windows of the constant-time [k]G; the field arithmetic itself ----


def _booth_edge_scalars() -> list[int]:
    """Scalars whose signed 6-bit digits (the [k]G table's) sit at the recoding's boundaries.

    Window values 31 (the largest digit kept as it is), 32 (the first made negative), 33 and
    63 (negative digits whose carries ripple upwards), alternating 31/32; top windows near the
    only place a doubling could arise, k = 2 d 2^252 - n, and 2^256 - n plus multiples of
    2^252 (the low part that would need).
    """
    width = curve.NATIVE_WIDTH
    out = []
    for digits in ([31], [32], [33], [63], [31, 32], [32, 31], [1, 63], [63, 1]):
        k = 0
        for i, j in enumerate(range(0, 256, width)):
            k |= digits[i % len(digits)] << j
        out.append(k % N or 1)
    for d in range(16):
        for delta in (-2, -1, 0, 1, 2):
            out += [
                (2 * d * (1 << 252) - N + delta) % N,
                ((1 << 256) - N + d * (1 << 252) + delta) % N,
            ]
    return [k for k in out if k]


def test_mul_base_matches_python_on_signed_digit_edges() -> None:
    assert 256 % curve.NATIVE_WIDTH != 0  # the C code refuses widths that divide 256
    for k in _booth_edge_scalars():
        assert curve.mul_base(k) == curve._mul_base_py(k), hex(k)
        point = curve._mul_base_py(k)
        assert point is not None
        assert curve.mul_base_x(k) == int(point[0]), hex(k)


def test_mul_base_ct_refuses_a_table_whose_width_divides_256() -> None:
    ffi, lib = curve._native.ffi, curve._native.lib
    table = curve._native_table(G, 4)
    out = ffi.new("unsigned char[96]")
    assert lib.sm2n_mul_base_ct(table, (5).to_bytes(32, "big"), bytes(32), out) == -2


P = curve.P
R_INV = pow(1 << 256, -1, P)
MUL, SQR, ADD, SUB, INV = range(5)


def _field_op(op: int, a: int, b: int = 0) -> int | None:
    """The C field operation ``op`` on a, b as 32-byte operands; None when it refuses them."""
    ffi, lib = curve._native.ffi, curve._native.lib
    out = ffi.new("unsigned char[32]")
    if lib.sm2n_field_op(op, a.to_bytes(32, "big"), b.to_bytes(32, "big"), out) != 1:
        return None
    return int.from_bytes(ffi.buffer(out)[:], "big")


def _field_expected(op: int, a: int, b: int) -> int:
    if op == MUL:
        return a * b * R_INV % P
    if op == SQR:
        return a * a * R_INV % P
    if op == ADD:
        return (a + b) % P
    if op == SUB:
        return (a - b) % P
    return pow(a, -1, P) * (1 << 512) % P if a else 0


def _field_edges() -> list[int]:
    """0, 1, p-1, p-2, powers of two around every limb boundary and 2^255, all-ones limbs."""
    out = [0, 1, 2, 3, P - 1, P - 2, P - 3, P - 4, (P - 1) // 2, (P + 1) // 2]
    out += [(1 << 256) % P, (1 << 512) % P, (1 << 255) - 1, 1 << 255, (1 << 255) + 1]
    for e in (31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 159, 160, 191, 192, 223, 224, 254):
        out += [1 << e, (1 << e) - 1, (1 << e) + 1]
    ones = (1 << 64) - 1
    for mask in range(1, 16):  # limbs all ones or zero, below p
        value = sum(ones << (64 * i) for i in range(4) if mask >> i & 1)
        out += [value % P, P - 1 - (value % P)]
    out += [P - (1 << 224), P - (1 << 96), P - (1 << 64), (1 << 256) - P, curve.B, curve.GX]
    return sorted({v for v in out if 0 <= v < P})


def test_field_ops_match_python_integers_on_edge_values() -> None:
    edges = _field_edges()
    for a in edges:
        assert _field_op(SQR, a) == _field_expected(SQR, a, a), hex(a)
        assert _field_op(INV, a) == _field_expected(INV, a, a), hex(a)
        for b in edges:
            for op in (MUL, ADD, SUB):
                assert _field_op(op, a, b) == _field_expected(op, a, b), (op, hex(a), hex(b))


def test_field_ops_match_python_integers_on_random_values() -> None:
    rng = secrets.SystemRandom()
    for _ in range(3000):
        a, b = rng.randrange(P), rng.randrange(P)
        if rng.random() < 0.3:  # near p, the carries' edge
            a = P - 1 - rng.randrange(1 << 64)
        for op in (MUL, SQR, ADD, SUB):
            assert _field_op(op, a, b) == _field_expected(op, a, b), (op, hex(a), hex(b))
    for _ in range(50):
        a = rng.randrange(P)
        assert _field_op(INV, a) == _field_expected(INV, a, a), hex(a)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=P - 1), st.integers(min_value=0, max_value=P - 1))
def test_field_ops_match_python_integers(a: int, b: int) -> None:
    for op in (MUL, SQR, ADD, SUB):
        assert _field_op(op, a, b) == _field_expected(op, a, b), op


def test_field_op_refuses_operands_not_below_p_and_unknown_ops() -> None:
    assert _field_op(MUL, P, 1) is None
    assert _field_op(ADD, 1, P) is None
    assert _field_op(SUB, (1 << 256) - 1, 0) is None
    assert _field_op(5, 1, 1) is None
    assert _field_op(-1, 1, 1) is None
