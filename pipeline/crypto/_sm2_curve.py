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
``1 <= i < 2^W`` as affine points, so ``[k]G`` is at most ``ceil(256/W) - 1``
affine additions and no doubling.  The table is built once per process, on
first use.  With unsigned digits and ``0 < k < n`` no partial sum can equal
(or negate) the point being added, so the additions never hit the doubling
or infinity cases; :func:`mul_base` still falls back to the generic path if
one ever does.

Variable base ``[s]G + [t]P`` (:func:`mul_base_add`): ``[t]P`` by a width-5
NAF over Jacobian coordinates (a = -3 doubling), plus ``[s]G`` from the table.

NOT constant time: Python big integers leak timing through their size and
every branch here depends on the scalar.  That is acceptable for per-card ICC
keys and test/demo issuer keys; production issuer keys sign inside an HSM.

Example:
    >>> x, y = mul_base(1)
    >>> (int(x), int(y)) == (GX, GY)
    True
"""

from __future__ import annotations

from functools import cache
from typing import Any

import gmpy2
from gmpy2 import invert, mpz

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

_p = mpz(P)
_b = mpz(B)

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


@cache
def _base_table() -> tuple[tuple[Affine | None, ...], ...]:
    """Rows ``T[j][i] = i 2^(W j) G`` (``T[j][0]`` unused), built once per process."""
    windows = -(-256 // W)
    rows: list[tuple[Affine | None, ...]] = []
    base: Affine = (mpz(GX), mpz(GY))
    for j in range(windows):
        top_bits = 256 - W * j
        size = 1 << min(W, top_bits)
        row: list[Affine | None] = [None, base]
        acc: Affine | None = base
        for _ in range(2, size):
            acc = _affine_add(acc, base)
            row.append(acc)
        rows.append(tuple(row))
        if j + 1 < windows:
            # 2^W * base = 2 * (2^(W-1) * base)
            half = row[1 << (W - 1)]
            assert half is not None
            doubled = _affine_double(*half)
            assert doubled is not None
            base = doubled
    return tuple(rows)


def warm_up() -> None:
    """Build the fixed-base table now rather than on the first signature.

    Example:
        >>> warm_up()
    """
    _base_table()


def mul_base(k: int) -> Affine | None:
    """[k]G for 0 <= k < 2^256 by the fixed-base window table (GB/T 32918.1 A.3).

    Returns None (infinity) when k is 0 mod n.

    Example:
        >>> x, y = mul_base(2)
        >>> (x, y) == _affine_double(mpz(GX), mpz(GY))
        True
    """
    table = _base_table()
    p = _p
    mask = (1 << W) - 1
    k0 = k
    x: Any = None
    y: Any = None
    try:
        for row in table:
            digit = k & mask
            k >>= W
            if digit:
                point = row[digit]
                assert point is not None
                qx, qy = point
                if x is None:
                    x, y = qx, qy
                else:
                    lam = (qy - y) * invert(qx - x, p) % p
                    x3 = (lam * lam - x - qx) % p
                    y = (lam * (x - x3) - y) % p
                    x = x3
    except ZeroDivisionError:
        return _mul_base_careful(k0, table)
    if x is None:
        return None
    return x, y


def _mul_base_careful(k: int, table: tuple[tuple[Affine | None, ...], ...]) -> Affine | None:
    """[k]G from the same table with additions that handle every exceptional case.

    Only reached when :func:`mul_base`'s fast addition meets x1 == x2, which
    cannot happen for 0 < k < n (module docstring); kept so that a scalar
    outside that range still gets the right answer.

    Example:
        >>> _mul_base_careful(N, _base_table()) is None
        True
    """
    mask = (1 << W) - 1
    acc: Affine | None = None
    for row in table:
        digit = k & mask
        k >>= W
        if digit:
            acc = _affine_add(acc, row[digit])
    return acc


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


def mpz_version() -> str:
    """The GMP library version behind the arithmetic (for benchmark reports)."""
    return str(gmpy2.mp_version())
