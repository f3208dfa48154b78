"""Arithmetic on the SM2 recommended curve (GB/T 32918.5-2017, "sm2p256v1").

Private helper of :mod:`pipeline.crypto.sm2`; bytes-level callers use that
module.  Points are affine ``(x, y)`` pairs of ``gmpy2.mpz`` (``None`` is the
point at infinity) or Jacobian ``(X, Y, Z)`` triples with x = X/Z^2, y = Y/Z^3.

Speed (measured on the development machine, one core): a 256-bit modular
multiplication costs ~115 ns with ``gmpy2.mpz`` against ~310 ns with plain
``int``, and a modular inversion ~0.8 us (``gmpy2.invert``) against ~13 us
(``pow(x, -1, p)``).  Because the inversion is that cheap, an *affine*
addition (one inversion, three multiplications) beats a mixed Jacobian
addition (eleven multiplications) in Python, and needs no final inversion.

Fixed base ``[k]G`` (:func:`mul_base`): ``k`` is cut into ``W``-bit windows,
``k = sum(k_j 2^(W j))``, and the table holds every ``i 2^(W j) G`` for
``1 <= i < 2^W`` as affine points, so ``[k]G`` is the sum of at most
``ceil(256/W)`` table points and needs no doubling.  The table is built once
per process, on first use.  The points are summed pairwise in a tree whose
levels share one inversion (Montgomery's trick, :func:`_sum_points`): ~5
inversions instead of ~23, measured 1.25x faster than a chain of affine
additions.  Any two partial sums of one scalar's windows are multiples of G
by different positive integers whose sum is at most k, so for ``0 < k < n``
no pair is equal or opposite and the additions never hit the doubling or
infinity cases; :func:`_sum_points` still falls back to careful additions
if one ever does.

Variable base ``[s]G + [t]P`` (:func:`mul_base_add`): ``[t]P`` by a width-5
NAF over Jacobian coordinates (a = -3 doubling), plus ``[s]G`` from the table.

Fixed second base ``[s]G + [t]Q`` (:func:`mul_base_add_fixed`): for a public
key Q that verifies many signatures (the issuer key behind every ICC
certificate), :class:`FixedBaseTable` holds the same kind of table for Q, and
both scalars' window points are summed in one tree: ~55 additions with ~6
inversions instead of ~256 Jacobian doublings; a whole verification is
measured 4.2-4.8x faster than with :func:`mul_base_add` (``bench/bench_sm2.py``).
Points of the two tables can coincide, so here the careful fallback is
reachable (and tested).

Native code (``pipeline/crypto/native/sm2_curve.c``, a CFFI extension built by
``tests/setup.sh``): when the compiled module ``_sm2_native`` is importable,
:func:`mul_base` and :func:`mul_base_x` for 0 < k < n, :func:`mul_base_add_fixed`,
:func:`mul_base_add_fixed_x_equals` and :func:`point_bytes_on_curve` run in C over
fixed-base tables built in a few milliseconds (width :data:`NATIVE_WIDTH` for
[k]G, :data:`NATIVE_VT_WIDTH` for verification): [k]G in constant time
(signed digits, entries 1..32 of every table row read in full, no branch
on k), its Jacobian result randomised in C by a random factor r,
(X r^2, Y r^3, Z r), so that the
variable-time :func:`gmpy2.invert` of Z r here learns nothing about k;
[s]G + [t]Q in variable time (public scalars), and for a signature check only
whether its x is v mod n, tested in C as X == v Z^2 without an inversion.
Each computes the same answers as the Python code below, which stays the
reference and the fallback (``CARDPREP_SM2_NATIVE=0`` forces it); tests
compare the two on random and edge scalars.  Measured on the development
machine: [k]G ~10 us in C (~14 us with the call and the affine conversion
here) against 50-80 us in Python, a precomputed verification check ~12 us
in C (~14 us with the call) against 76-134 us.

NOT constant time (the Python path): Python big integers leak timing through
their size and every branch here depends on the scalar.  That is acceptable
for per-card ICC keys and test/demo issuer keys; production issuer keys sign
inside an HSM.  The native [k]G removes the scalar-dependent branches and
table addresses from key generation and signing nonces.

Example:
    >>> x, y = mul_base(1)
    >>> (int(x), int(y)) == (GX, GY)
    True
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache
from typing import Any, NoReturn

import gmpy2
from gmpy2 import invert, mpz

from pipeline.errors import CryptoError, InvalidInputError

#: The ``sm2n_abi_version()`` this module's calls are written for (native/sm2_curve.c).
NATIVE_ABI_VERSION = 4


def _load_native() -> Any:
    """The compiled extension (``tests/setup.sh`` builds it), or None: Python then.

    A module compiled from another version of the C source (a tree updated
    without re-running the set-up) is not used: its functions may take other
    buffers than the calls below pass.
    """
    if os.environ.get("CARDPREP_SM2_NATIVE", "1") == "0":
        return None
    try:
        module = importlib.import_module("pipeline.crypto._sm2_native")
    except ImportError:
        return None
    try:
        version = module.lib.sm2n_abi_version()
    except AttributeError:  # compiled before the version function existed
        version = 1
    if version != NATIVE_ABI_VERSION:
        warnings.warn(
            f"pipeline.crypto._sm2_native is ABI version {version}, this code needs "
            f"{NATIVE_ABI_VERSION}: SM2 runs in Python; run tests/setup.sh to rebuild it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return module


_native: Any = _load_native()

# GB/T 32918.5-2017 section 3 (also GM/T 0003.5-2012): the recommended curve
# y^2 = x^3 + a x + b over F_p, base point G of prime order n, cofactor 1.
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

#: Window width of the fixed-base table (bits).  11 gives 23 windows of 2047
#: points and a top window of 7 (47,088 affine points, ~15 MB of RSS, built in
#: ~0.12 s) and at most 23 additions per ``[k]G``.  Measured [k]G/s on one core:
#: W=8 13.8k, W=10 15.7k, W=11 16.6k, W=12 17.8k (+27 MB), W=13 19.1k (+49 MB).
W = 11

#: Window width of the native table for the constant-time [k]G: ceil(256/6) = 43
#: rows of 63 points, ~176 KB.  The C code recodes k in signed digits (Booth), so
#: the width must not divide 256 (it refuses 2, 4 and 8) and it scans entries
#: 1..32 of each row.  Measured in C (us per [k]G): width 3 16.8, 5 11.2, 6 10.0,
#: 7 9.9 (with a table 1.7x the size).
NATIVE_WIDTH = 6

#: Window width of the native tables for the variable-time [s]G + [t]Q (G's and
#: each :class:`FixedBaseTable`'s): 32 rows of 255 points, ~522 KB, built in ~6 ms
#: (one inversion per row).  Measured in C (us per sum): width 6 16.4, 7 14.2, 8 12.5.
NATIVE_VT_WIDTH = 8

_p = mpz(P)
_b = mpz(B)
_from_bytes = mpz.from_bytes

# ``Any`` because gmpy2 ships no type information.
Affine = tuple[Any, Any]
Jacobian = tuple[Any, Any, Any]


def is_on_curve(x: int, y: int) -> bool:
    """Return True when ``0 <= x, y < p`` and y^2 = x^3 + a x + b (GB/T 32918.1 6.2.1 b, c).

    Example:
        >>> is_on_curve(GX, GY), is_on_curve(GX, GY + 1)
        (True, False)
    """
    if not (0 <= x < P and 0 <= y < P):
        return False
    mx, my = mpz(x), mpz(y)
    return bool((my * my - (mx * mx * mx - 3 * mx + _b)) % _p == 0)


def point_bytes_on_curve(xy: bytes) -> bool:
    """Return True when 64 bytes x || y (big-endian) are a point on the curve (see is_on_curve).

    In C when the extension is loaded.

    Example:
        >>> point_bytes_on_curve(GX.to_bytes(32, "big") + GY.to_bytes(32, "big"))
        True
        >>> point_bytes_on_curve(bytes(64))
        False
    """
    if len(xy) != 64:
        raise InvalidInputError("point", f"expected 64 bytes x || y, got {len(xy)}")
    if _native is not None:
        return bool(_native.lib.sm2n_point_valid(bytes(xy)))
    return is_on_curve(int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big"))


def _affine_double(x: Any, y: Any) -> Affine | None:
    """2(x, y) in affine coordinates (a = -3); None for a point of order 2."""
    p = _p
    if y == 0:
        return None
    lam = (3 * (x * x - 1)) * invert(2 * y, p) % p
    x3 = (lam * lam - 2 * x) % p
    return x3, (lam * (x - x3) - y) % p


def _affine_add(p1: Affine | None, p2: Affine | None) -> Affine | None:
    """p1 + p2 in affine coordinates, handling infinity, doubling and P + (-P)."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    p = _p
    x1, y1 = p1
    x2, y2 = p2
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        return _affine_double(x1, y1)
    lam = (y2 - y1) * invert(x2 - x1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def _jacobian_double(X: Any, Y: Any, Z: Any) -> Jacobian:
    """2(X, Y, Z) for a = -3 ("dbl-2001-b", Bernstein-Lange EFD); Z = 0 stays infinity."""
    p = _p
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = ((Y + Z) * (Y + Z) - gamma - delta) % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _jacobian_add_affine(X1: Any, Y1: Any, Z1: Any, x2: Any, y2: Any) -> Jacobian:
    """(X1, Y1, Z1) + (x2, y2) ("madd-2004-hmv"), handling infinity, doubling, P + (-P)."""
    p = _p
    if Z1 == 0:
        return x2, y2, mpz(1)
    T1 = Z1 * Z1 % p
    H = (T1 * x2 - X1) % p
    R = (T1 * Z1 % p * y2 - Y1) % p
    if H == 0:
        if R == 0:
            return _jacobian_double(X1, Y1, Z1)
        return mpz(1), mpz(1), mpz(0)
    HH = H * H % p
    HHH = HH * H % p
    V = X1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    return X3, (R * (V - X3) - Y1 * HHH) % p, Z1 * H % p


def _to_affine(X: Any, Y: Any, Z: Any) -> Affine | None:
    """Jacobian -> affine with one inversion; None for infinity."""
    if Z == 0:
        return None
    p = _p
    zi = invert(Z, p)
    zi2 = zi * zi % p
    return X * zi2 % p, Y * zi2 * zi % p


def _fixed_base_rows(base: Affine, width: int) -> tuple[tuple[Affine | None, ...], ...]:
    """Rows ``T[j][i] = i 2^(width j) B`` for ``1 <= i < 2^width`` (``T[j][0]`` unused).

    ``ceil(256 / width)`` rows; the top row only covers the bits left above
    ``width (rows - 1)``.  ``base`` must be a point of order n (any point on
    this curve but infinity).
    """
    windows = -(-256 // width)
    rows: list[tuple[Affine | None, ...]] = []
    for j in range(windows):
        top_bits = 256 - width * j
        size = 1 << min(width, top_bits)
        row: list[Affine | None] = [None, base]
        acc: Affine | None = base
        for _ in range(2, size):
            acc = _affine_add(acc, base)
            row.append(acc)
        rows.append(tuple(row))
        if j + 1 < windows:
            # 2^width * base = 2 * (2^(width-1) * base)
            half = row[1 << (width - 1)]
            assert half is not None
            doubled = _affine_double(*half)
            assert doubled is not None
            base = doubled
    return tuple(rows)


@cache
def _base_table() -> tuple[tuple[Affine | None, ...], ...]:
    """Rows ``T[j][i] = i 2^(W j) G`` (``T[j][0]`` unused), built once per process."""
    return _fixed_base_rows((mpz(GX), mpz(GY)), W)


def native_available() -> bool:
    """True when the native extension is loaded (see the module docstring).

    Example:
        >>> isinstance(native_available(), bool)
        True
    """
    return _native is not None


def _encode_xy(x: int, y: int) -> bytes:
    return int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def _native_table(point: Affine, width: int) -> Any:
    """A native fixed-base table for ``point`` (freed with the returned handle)."""
    ffi, lib = _native.ffi, _native.lib
    handle = lib.sm2n_table_new(_encode_xy(*point), width)
    if handle == ffi.NULL:
        raise InvalidInputError("point", "is not on the SM2 curve")
    return ffi.gc(handle, lib.sm2n_table_free)


@cache
def _native_base_table() -> Any:
    """G's native table for [k]G, built once per process."""
    return _native_table((mpz(GX), mpz(GY)), NATIVE_WIDTH)


@cache
def _native_base_table_vt() -> Any:
    """G's native table for verification sums, built once per process."""
    return _native_table((mpz(GX), mpz(GY)), NATIVE_VT_WIDTH)


def _native_point(rc: int, out: Any) -> Affine | None:
    """The affine point from the extension's Jacobian X || Y || Z (``rc`` 1), None (0).

    For [k]G the extension has already randomised the coordinates by a
    random factor r, (X r^2, Y r^3, Z r), so Z here is uniform and
    independent of the secret k, and :func:`gmpy2.invert` (whose time
    depends on its input) tells nothing about k.
    """
    if rc == 0:
        return None
    if rc != 1:
        _native_fault()
    raw = _native.ffi.buffer(out)[:]  # bytes(out) would copy element by element (10x slower)
    p = _p
    zi = invert(_from_bytes(raw[64:], "big"), p)
    zi2 = zi * zi % p
    return _from_bytes(raw[:32], "big") * zi2 % p, _from_bytes(raw[32:64], "big") * zi2 * zi % p


def _native_fault() -> NoReturn:
    """The extension's fault check failed (a result off the curve): never expected."""
    raise CryptoError("sm2 point", "native result is not on the curve (fault check)")


def warm_up() -> None:
    """Build the fixed-base table now rather than on the first signature.

    Example:
        >>> warm_up()
    """
    if _native is not None:
        _native_base_table()
        _native_base_table_vt()
    else:
        _base_table()


def _window_points(
    k: int, rows: tuple[tuple[Affine | None, ...], ...], width: int, out: list[Affine]
) -> None:
    """Append ``T[j][k_j]`` for every non-zero ``width``-bit window k_j of k (0 <= k < 2^256).

    Their sum is [k]B for the table's base B.
    """
    mask = (1 << width) - 1
    for row in rows:
        digit = k & mask
        k >>= width
        if digit:
            point = row[digit]
            assert point is not None
            out.append(point)


def _sum_points(points: list[Affine]) -> Affine | None:
    """The sum of ``points``, pairwise in a tree with one shared inversion per level.

    Level by level, ``(P0 + P1), (P2 + P3), ...`` are affine additions whose
    denominators x2 - x1 are inverted together by Montgomery's trick (one
    inversion and three multiplications each instead of one inversion
    each), so m points cost about log2(m) inversions.  If any pair has
    x1 == x2 (a doubling or P + (-P)) the shared inversion fails and the sum
    is redone one careful addition at a time (:func:`_sum_points_careful`).

    Example:
        >>> g = (mpz(GX), mpz(GY))
        >>> _sum_points([g, mul_base(2), mul_base(4)]) == mul_base(7)
        True
        >>> _sum_points([g, g]) == _affine_double(*g), _sum_points([]) is None
        (True, True)
    """
    p = _p
    level = points
    try:
        while len(level) > 1:
            pairs = len(level) >> 1
            dxs: list[Any] = []
            prefix: list[Any] = []
            acc: Any = mpz(1)
            for i in range(pairs):
                dx = level[2 * i + 1][0] - level[2 * i][0]
                dxs.append(dx)
                acc = acc * dx % p
                prefix.append(acc)
            inv = invert(acc, p)  # ZeroDivisionError when some dx == 0
            summed: list[Affine] = [level[-1]] * pairs
            for i in range(pairs - 1, -1, -1):
                inv_i = inv * prefix[i - 1] % p if i else inv  # 1 / dxs[i]
                inv = inv * dxs[i] % p
                x1, y1 = level[2 * i]
                x2, y2 = level[2 * i + 1]
                lam = (y2 - y1) * inv_i % p
                x3 = (lam * lam - x1 - x2) % p
                summed[i] = (x3, (lam * (x1 - x3) - y1) % p)
            if len(level) & 1:
                summed.append(level[-1])
            level = summed
    except ZeroDivisionError:
        return _sum_points_careful(points)
    return level[0] if level else None


def _sum_points_careful(points: list[Affine]) -> Affine | None:
    """The sum of ``points`` one addition at a time, handling doubling and infinity.

    Only reached when :func:`_sum_points` meets x1 == x2, which cannot happen
    for the windows of one scalar 0 < k < n (module docstring) but can when
    two scalars' windows are mixed (verification) or k >= n.

    Example:
        >>> g = (mpz(GX), mpz(GY))
        >>> _sum_points_careful([g, (g[0], _p - g[1])]) is None
        True
    """
    acc: Affine | None = None
    for point in points:
        acc = _affine_add(acc, point)
    return acc


def mul_base(k: int) -> Affine | None:
    """[k]G for 0 <= k < 2^256 by the fixed-base window table (GB/T 32918.1 A.3).

    Returns None (infinity) when k is 0 mod n.

    Example:
        >>> x, y = mul_base(2)
        >>> (x, y) == _affine_double(mpz(GX), mpz(GY))
        True
        >>> mul_base(N) is None, mul_base(N + 1) == (GX, GY)
        (True, True)
    """
    if _native is not None and 0 < k < N:
        out = _native.ffi.new("unsigned char[96]")
        rc = _native.lib.sm2n_mul_base_ct(
            _native_base_table(), int(k).to_bytes(32, "big"), os.urandom(32), out
        )
        return _native_point(rc, out)
    return _mul_base_py(k)


def mul_base_x(k: int) -> int:
    """The affine x of [k]G for 0 < k < n, as an int (a signature needs only x1, 6.1 A4).

    Example:
        >>> mul_base_x(1) == GX
        True
    """
    if _native is not None and 0 < k < N:
        out = _native.ffi.new("unsigned char[96]")
        rc = _native.lib.sm2n_mul_base_ct(
            _native_base_table(), int(k).to_bytes(32, "big"), os.urandom(32), out
        )
        if rc != 1:  # never infinity for 0 < k < n
            _native_fault()
        raw = _native.ffi.buffer(out)[:]
        p = _p
        zi = invert(_from_bytes(raw[64:], "big"), p)
        return int(_from_bytes(raw[:32], "big") * (zi * zi % p) % p)
    point = _mul_base_py(k)
    if point is None:
        raise InvalidInputError("k", "gives the point at infinity")
    return int(point[0])


def _mul_base_py(k: int) -> Affine | None:
    """[k]G in Python (the reference for the native path and its fallback)."""
    points: list[Affine] = []
    _window_points(k, _base_table(), W, points)
    return _sum_points(points)


def _wnaf(k: int, width: int) -> list[int]:
    """Width-``width`` non-adjacent form of k >= 0, least significant digit first."""
    digits: list[int] = []
    full = 1 << width
    half = full >> 1
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


_WNAF_WIDTH = 5


def mul_point(k: int, point: Affine) -> Affine | None:
    """[k]P for any point P on the curve (wNAF, Jacobian coordinates).

    Example:
        >>> mul_point(3, (mpz(GX), mpz(GY))) == mul_base(3)
        True
    """
    result = _mul_point_jacobian(k, point)
    return _to_affine(*result)


def _mul_point_jacobian(k: int, point: Affine) -> Jacobian:
    """[k]P as a Jacobian triple (Z = 0 for infinity)."""
    p = _p
    # Odd multiples P, 3P, ..., (2^(w-1) - 1)P in affine coordinates.
    twice = _affine_double(*point)
    odd: list[Affine | None] = [point]
    for _ in range((1 << (_WNAF_WIDTH - 2)) - 1):
        odd.append(_affine_add(odd[-1], twice))
    digits = _wnaf(k, _WNAF_WIDTH)
    if not digits:
        return mpz(1), mpz(1), mpz(0)
    top = odd[digits[-1] >> 1]  # the leading wNAF digit is positive
    if top is None:  # only if P had small order; not on this prime-order curve
        return mpz(1), mpz(1), mpz(0)
    X: Any = top[0]
    Y: Any = top[1]
    Z: Any = mpz(1)
    for d in reversed(digits[:-1]):
        # doubling inlined ("dbl-2001-b" with Z3 = 2 Y Z): 256 calls saved per scalar
        delta = Z * Z % p
        gamma = Y * Y % p
        beta = X * gamma % p
        alpha = 3 * (X - delta) * (X + delta) % p
        Z = 2 * Y * Z % p
        X = (alpha * alpha - 8 * beta) % p
        Y = (alpha * (4 * beta - X) - 8 * gamma * gamma) % p
        if d:
            q = odd[abs(d) >> 1]
            if q is None:
                continue
            X, Y, Z = _jacobian_add_affine(X, Y, Z, q[0], q[1] if d > 0 else p - q[1])
    return X, Y, Z


def mul_base_add(s: int, t: int, point: Affine) -> Affine | None:
    """[s]G + [t]P, as used by SM2 verification (GB/T 32918.2 7.1 B6).

    Example:
        >>> g = (mpz(GX), mpz(GY))
        >>> mul_base_add(2, 3, g) == mul_base(5)
        True
    """
    X, Y, Z = _mul_point_jacobian(t, point)
    sg = mul_base(s % N)
    if sg is not None:
        X, Y, Z = _jacobian_add_affine(X, Y, Z, sg[0], sg[1])
    return _to_affine(X, Y, Z)


class FixedBaseTable:
    """A fixed-base window table for one point Q of order n, as :func:`mul_base` has for G.

    Rows ``T[j][i] = i 2^(width j) Q``: ``ceil(256 / width)`` rows of
    ``2^width - 1`` affine points, so ``[t]Q`` is at most ``ceil(256 / width) - 1``
    affine additions and no doubling.  Built once per key that is used over
    and over (the issuer key that signs every card's ICC certificate), for
    :func:`mul_base_add_fixed`.  Memory and build time grow as
    ``2^width / width`` (measured with ``bench/bench_sm2.py``).

    Example:
        >>> table = FixedBaseTable((mpz(GX), mpz(GY)), width=4)
        >>> table.points, table.mul(5) == mul_base(5)
        (960, True)
    """

    __slots__ = ("_base", "_rows", "native", "points", "width")

    def __init__(self, point: Affine, width: int = 8) -> None:
        if not 2 <= width <= 16:
            raise InvalidInputError("width", f"must be 2..16, got {width}")
        x, y = point
        if not is_on_curve(int(x), int(y)):
            raise InvalidInputError("point", "is not on the SM2 curve")
        self.width: int = width
        self._base: Affine = (mpz(x), mpz(y))
        self._rows: tuple[tuple[Affine | None, ...], ...] | None = None
        windows = -(-256 // width)
        top = 256 - width * (windows - 1)  # bits in the top window
        self.points: int = (windows - 1) * ((1 << width) - 1) + (1 << top) - 1
        #: the native table (width NATIVE_VT_WIDTH) when the extension is loaded
        self.native: Any = (
            _native_table(self._base, NATIVE_VT_WIDTH) if _native is not None else None
        )

    @property
    def rows(self) -> tuple[tuple[Affine | None, ...], ...]:
        """The Python table rows, built on first use (the native path never needs them)."""
        if self._rows is None:
            self._rows = _fixed_base_rows(self._base, self.width)
        return self._rows

    def __repr__(self) -> str:
        return f"FixedBaseTable(width={self.width}, points={self.points})"

    def mul(self, k: int) -> Affine | None:
        """[k]Q for 0 <= k < 2^256 from the table (None for infinity)."""
        points: list[Affine] = []
        _window_points(k, self.rows, self.width, points)
        return _sum_points(points)


def mul_base_add_fixed(s: int, t: int, table: FixedBaseTable) -> Affine | None:
    """[s]G + [t]Q for 0 <= s, t < 2^256 from G's table and Q's ``table`` (GB/T 32918.2 7.1 B6).

    The windows of s pick points of G's table, those of t points of Q's, and
    all of them are summed by :func:`_sum_points`: at most ``ceil(256/W) +
    ceil(256/width)`` points, no doubling, a handful of inversions.  Points
    from the two tables can coincide (by chance or in a forged signature);
    :func:`_sum_points` then falls back to careful additions, so the answer
    is always exact.

    Example:
        >>> table = FixedBaseTable((mpz(GX), mpz(GY)), width=4)
        >>> mul_base_add_fixed(2, 3, table) == mul_base(5)
        True
        >>> mul_base_add_fixed(N - 3, 3, table) is None
        True
    """
    if table.native is not None and 0 <= s < 1 << 256 and 0 <= t < 1 << 256:
        out = _native.ffi.new("unsigned char[96]")
        rc = _native.lib.sm2n_mul2_vt(
            _native_base_table_vt(), int(s).to_bytes(32, "big"), table.native,
            int(t).to_bytes(32, "big"), out,
        )  # fmt: skip
        return _native_point(rc, out)
    return _mul_base_add_fixed_py(s, t, table)


def mul_base_add_fixed_x_equals(s: int, t: int, table: FixedBaseTable, v: int) -> bool:
    """True when [s]G + [t]Q is not infinity and its affine x is congruent to v mod n.

    The check of GB/T 32918.2 7.1 B7, (e + x1) mod n == r, is x1 = v mod n
    for v = (r - e) mod n; in C it needs no inversion (X == v Z^2, or (v + n) Z^2
    when v + n < p).  ``0 <= s, t < 2^256``, ``0 <= v < n``.

    Example:
        >>> table = FixedBaseTable((mpz(GX), mpz(GY)), width=4)
        >>> mul_base_add_fixed_x_equals(2, 3, table, int(mul_base(5)[0]) % N)
        True
        >>> mul_base_add_fixed_x_equals(N - 3, 3, table, 0)
        False
    """
    if not 0 <= v < N:
        raise InvalidInputError("v", "must be in [0, n-1]")
    if table.native is not None and 0 <= s < 1 << 256 and 0 <= t < 1 << 256:
        rc = _native.lib.sm2n_mul2_vt_x_equals(
            _native_base_table_vt(), int(s).to_bytes(32, "big"), table.native,
            int(t).to_bytes(32, "big"), int(v).to_bytes(32, "big"),
        )  # fmt: skip
        if rc < 0:
            _native_fault()
        return bool(rc == 1)
    point = _mul_base_add_fixed_py(s, t, table)
    return point is not None and int(point[0]) % N == v


def _mul_base_add_fixed_py(s: int, t: int, table: FixedBaseTable) -> Affine | None:
    """[s]G + [t]Q in Python (the reference for the native path and its fallback)."""
    points: list[Affine] = []
    _window_points(s, _base_table(), W, points)
    _window_points(t, table.rows, table.width, points)
    return _sum_points(points)


def mpz_version() -> str:
    """The GMP library version behind the arithmetic (for benchmark reports)."""
    return str(gmpy2.mp_version())
