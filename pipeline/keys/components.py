"""Key components and key shares: XOR split/combine and Shamir m-of-n over GF(2^8).

Split knowledge (DOMAIN.md section 2; PCI PIN / PCI CP logical, "a key exists
... as >= 2 full-length components or m-of-n shares"): a clear key outside a
secure device exists only as

* 2..3 **full-length XOR components** ``C1 ^ C2 (^ C3) = K``, every one of
  them the length of the key, so that any proper subset reveals nothing; or
* **m-of-n Shamir shares** (A. Shamir, "How to share a secret", CACM 22(11),
  1979), computed byte-wise over GF(2^8) with the AES polynomial
  x^8 + x^4 + x^3 + x + 1 (FIPS 197 section 4.2): share ``i`` (x = i, 1..n)
  holds ``f_j(i)`` for every byte ``j`` of the key, where ``f_j`` is a random
  polynomial of degree m - 1 whose constant term is key byte ``j``; any m
  shares interpolate ``f_j(0)``, fewer reveal nothing.

Everything here is pure (bytes in, bytes out); randomness comes from
:mod:`secrets` and may be injected for tests.  Nothing here logs or formats a
component: error messages name counts and lengths only.

Example:
    >>> key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> parts = xor_split(key, 3)
    >>> len(parts), all(len(p) == 16 for p in parts), xor_combine(parts) == key
    (3, True, True)
    >>> shares = shamir_split(key, 2, 3)
    >>> shamir_combine([shares[2], shares[0]], 2) == key
    True
    >>> gf_mul(0x57, 0x83) == 0xC1        # FIPS 197 section 4.2
    True
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

from pipeline.errors import CeremonyError, InvalidInputError

__all__ = [
    "MAX_XOR_COMPONENTS",
    "MIN_XOR_COMPONENTS",
    "Share",
    "component_kcvs",
    "format_share",
    "gf_div",
    "gf_mul",
    "parse_component",
    "parse_share",
    "shamir_combine",
    "shamir_split",
    "xor_combine",
    "xor_split",
]

MIN_XOR_COMPONENTS = 2
MAX_XOR_COMPONENTS = 3
_MAX_SHARES = 255  # x = 1..255; x = 0 is the secret itself

RandomBytes = Callable[[int], bytes]

# --- GF(2^8), AES polynomial 0x11B, log/antilog tables with generator 0x03 ----


def _xtime_mul(a: int, b: int) -> int:
    """Shift-and-add multiplication in GF(2^8) mod 0x11B (used to build the tables)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


def _tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x = _xtime_mul(x, 0x03)
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return tuple(exp), tuple(log)


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two bytes in GF(2^8) with the AES polynomial (FIPS 197 section 4.2).

    Example:
        >>> hex(gf_mul(0x57, 0x13))
        '0xfe'
    """
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    """Quotient ``a / b`` in GF(2^8); ``b`` must be non-zero.

    Example:
        >>> gf_mul(gf_div(0xC1, 0x83), 0x83) == 0xC1
        True
    """
    if b == 0:
        raise InvalidInputError("divisor", "division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


# --- XOR components ------------------------------------------------------------


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) == 0:
        raise InvalidInputError("key", "expected non-empty bytes")


def xor_split(
    key: bytes, count: int, random_bytes: RandomBytes = secrets.token_bytes
) -> tuple[bytes, ...]:
    """Split ``key`` into ``count`` (2..3) full-length XOR components.

    The first ``count - 1`` components are random; the last is the key XORed
    with them.  No parity adjustment is made: DES ignores parity bits, so KCVs
    are unaffected, and the store fixes parity on the combined key.

    Example:
        >>> c = xor_split(bytes(16), 2)
        >>> c[0] == c[1]
        True
    """
    _check_key(key)
    if not MIN_XOR_COMPONENTS <= count <= MAX_XOR_COMPONENTS:
        raise InvalidInputError(
            "components",
            f"XOR split takes {MIN_XOR_COMPONENTS}..{MAX_XOR_COMPONENTS} components, got {count}",
        )
    randoms = [bytes(random_bytes(len(key))) for _ in range(count - 1)]
    last = bytes(key)
    for r in randoms:
        if len(r) != len(key):
            raise InvalidInputError("random_bytes", f"returned {len(r)} bytes, need {len(key)}")
        last = _xor(last, r)
    return (*randoms, last)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def xor_combine(components: Sequence[bytes]) -> bytes:
    """XOR 2..3 full-length components into the key.

    Raises :class:`~pipeline.errors.CeremonyError` for too few or too many
    components (split knowledge needs at least two) and for unequal lengths.

    Example:
        >>> xor_combine([bytes.fromhex("0F0F"), bytes.fromhex("F0F1")]).hex()
        'fffe'
    """
    count = len(components)
    if not MIN_XOR_COMPONENTS <= count <= MAX_XOR_COMPONENTS:
        raise CeremonyError(
            "components",
            f"a key is combined from {MIN_XOR_COMPONENTS}..{MAX_XOR_COMPONENTS} "
            f"full-length components, got {count}",
        )
    lengths = sorted({len(c) for c in components})
    if len(lengths) != 1 or lengths[0] == 0:
        raise CeremonyError(
            "components", f"components must have one non-zero length, got {lengths}"
        )
    return reduce(_xor, (bytes(c) for c in components))


# --- Shamir shares --------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One Shamir share: its x coordinate (1..255) and one y byte per key byte.

    ``repr`` never shows the value.
    """

    index: int
    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 1 <= self.index <= _MAX_SHARES:
            raise InvalidInputError("share.index", f"must be 1..{_MAX_SHARES}, got {self.index!r}")
        if not isinstance(self.value, bytes) or not self.value:
            raise InvalidInputError("share.value", "expected non-empty bytes")

    def __repr__(self) -> str:
        return f"Share(index={self.index}, value=<{len(self.value)} bytes>)"


def _eval(coeffs: Sequence[int], x: int) -> int:
    """Horner evaluation of the polynomial with ``coeffs`` (constant first) at ``x``."""
    y = 0
    for c in reversed(coeffs):
        y = gf_mul(y, x) ^ c
    return y


def shamir_split(
    key: bytes, threshold: int, count: int, random_bytes: RandomBytes = secrets.token_bytes
) -> tuple[Share, ...]:
    """Split ``key`` into ``count`` shares, any ``threshold`` of which recover it.

    ``2 <= threshold <= count <= 255``.  Shares get x = 1..count.

    Example:
        >>> [s.index for s in shamir_split(bytes(16), 3, 5)]
        [1, 2, 3, 4, 5]
    """
    _check_key(key)
    if not 2 <= threshold <= count <= _MAX_SHARES:
        raise InvalidInputError(
            "shares", f"need 2 <= m <= n <= {_MAX_SHARES}, got m={threshold} n={count}"
        )
    randoms = bytes(random_bytes(len(key) * (threshold - 1)))
    if len(randoms) != len(key) * (threshold - 1):
        raise InvalidInputError("random_bytes", "returned the wrong number of bytes")
    polys = [
        [key[j], *randoms[j * (threshold - 1) : (j + 1) * (threshold - 1)]] for j in range(len(key))
    ]
    return tuple(Share(x, bytes(_eval(poly, x) for poly in polys)) for x in range(1, count + 1))


def shamir_combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the key from at least ``threshold`` shares by Lagrange interpolation at 0.

    Fewer shares than the threshold, a repeated x coordinate or unequal
    lengths raise :class:`~pipeline.errors.CeremonyError`.  A wrong share
    cannot be detected here: it yields a wrong key, which the KCV check of the
    ceremony catches.

    Example:
        >>> s = shamir_split(b"\\x42" * 16, 2, 2)
        >>> shamir_combine(s, 2) == b"\\x42" * 16
        True
    """
    if threshold < 2:
        raise CeremonyError("threshold", f"must be at least 2, got {threshold}")
    if len(shares) < threshold:
        raise CeremonyError(
            "shares", f"{threshold} shares are needed to recover the key, got {len(shares)}"
        )
    xs = [s.index for s in shares]
    if len(set(xs)) != len(xs):
        raise CeremonyError("shares", f"share indexes must be distinct, got {sorted(xs)}")
    lengths = {len(s.value) for s in shares}
    if len(lengths) != 1:
        raise CeremonyError("shares", f"shares must have one length, got {sorted(lengths)}")
    used = list(shares)[:threshold]
    basis = []  # Lagrange basis l_i(0) = prod_{j != i} x_j / (x_j - x_i); minus is XOR
    for i, si in enumerate(used):
        num, den = 1, 1
        for j, sj in enumerate(used):
            if i != j:
                num = gf_mul(num, sj.index)
                den = gf_mul(den, sj.index ^ si.index)
        basis.append(gf_div(num, den))
    length = lengths.pop()
    out = bytearray(length)
    for li, s in zip(basis, used, strict=True):
        for k in range(length):
            out[k] ^= gf_mul(li, s.value[k])
    return bytes(out)


# --- text form and KCVs -----------------------------------------------------------


def parse_component(text: str, field: str = "component") -> bytes:
    """Parse a component typed or read from a file: hex digits, spaces/dashes allowed.

    Example:
        >>> parse_component("0123 4567-89AB CDEF").hex()
        '0123456789abcdef'
    """
    cleaned = "".join(text.split()).replace("-", "")
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise InvalidInputError(
            field, f"expected hex digits, got {len(cleaned)} characters"
        ) from None
    if not value:
        raise InvalidInputError(field, "is empty")
    return value


def parse_share(text: str, field: str = "share") -> Share:
    """Parse a share written as ``<index>:<hex>`` (the form :func:`format_share` writes).

    Example:
        >>> parse_share("2:00ff").index
        2
    """
    head, sep, tail = text.strip().partition(":")
    if not sep or not head.strip().isdigit():
        raise InvalidInputError(field, "expected '<index>:<hex>'")
    return Share(int(head.strip()), parse_component(tail, field))


def format_share(share: Share) -> str:
    """Text form of a share, ``<index>:<HEX>``.

    Example:
        >>> format_share(Share(3, bytes.fromhex("00ff")))
        '3:00FF'
    """
    return f"{share.index}:{share.value.hex().upper()}"


def component_kcvs(
    components: Sequence[bytes], kcv_fn: Callable[[bytes], bytes]
) -> tuple[bytes, ...]:
    """KCV of each component (or share value) as if it were a key, by ``kcv_fn``.

    Custodians compare these with the KCVs on their envelopes before entry.

    Example:
        >>> component_kcvs([b"ab", b"cd"], lambda k: k[:1])
        (b'a', b'c')
    """
    return tuple(kcv_fn(bytes(c)) for c in components)
