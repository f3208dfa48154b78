"""SM2 digital signatures (GB/T 32918.2-2016) on the recommended curve (GB/T 32918.5).

Keys and signatures are raw bytes, as PBOC cards and certificates carry them:

* private key ``d``: 32 bytes big-endian, 1 <= d <= n - 2 (GB/T 32918.1 6.1);
* public key: 64 bytes ``x || y`` (no ``04`` prefix);
* signature: 64 bytes ``r || s`` (not DER; see :func:`signature_to_der`).

Signing follows GB/T 32918.2 section 6.1: Z_A = SM3(ENTL || ID || a || b ||
xG || yG || xA || yA) (section 5.5), e = SM3(Z_A || M), (x1, y1) = [k]G,
r = (e + x1) mod n, s = (1 + d)^-1 (k - r d) mod n.  Verification is section
7.1.  The user ID defaults to "1234567812345678" (GM/T 0009-2012 10; ENTL
0080).  Nonces come from :mod:`secrets`; a caller may pass ``k`` only to
reproduce published known answers.

Speed: the arithmetic is in :mod:`pipeline.crypto._sm2_curve` (gmpy2, a
fixed-base window table for G built once per process, ~0.15 s).  Build an
:class:`Sm2Signer` once per issuer key for the per-card loop: it keeps Z_A and
(1 + d)^-1 mod n; likewise one ``Sm2Verifier(public_key, precompute=True)``
for a key that verifies every card (a fixed-base table for that key too).
Figures: ``.venv/bin/python bench/bench_sm2.py``.

Not constant time as a whole.  With the native extension (the default once
built) [k]G for keys and nonces is constant time in C and comes back
projectively randomised, so its variable-time inversion here learns nothing
about k (:mod:`pipeline.crypto._sm2_curve`); the rest is Python integers and
gmpy2 (s = (1 + d)^-1 (k - r d) mod n), whose cost depends on the values, and
without the extension the table look-ups depend on the secret scalar too.  A
co-resident attacker timing this process could learn about nonces and keys.
Per-card ICC keys and demo issuer keys are acceptable here; production issuer
keys belong in an HSM (the key store's PKCS#11 path).

Example:
    >>> d = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
    >>> pub = public_key(d)
    >>> pub[:4].hex().upper()
    '09F9DF31'
    >>> sig = sign(d, b"message digest")
    >>> verify(pub, b"message digest", sig)
    >>> verify(pub, b"message digesT", sig)
    Traceback (most recent call last):
    ...
    pipeline.errors.SignatureError: signature: does not verify (GB/T 32918.2 7.1 B7)
"""

from __future__ import annotations

import secrets
from typing import Any

from cryptography.hazmat.primitives import hashes
from gmpy2 import mpz

from pipeline.crypto import _sm2_curve as curve
from pipeline.errors import InvalidInputError, KeyLengthError, SignatureError

__all__ = [
    "DEFAULT_UID",
    "FIXED_KEY_WIDTH",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Sm2Signer",
    "Sm2Verifier",
    "check_public_key",
    "generate_keypair",
    "message_digest",
    "public_key",
    "sign",
    "sign_digest",
    "signature_from_der",
    "signature_to_der",
    "verify",
    "verify_digest",
    "warm_up",
    "z_value",
]

#: Default signer identity (GM/T 0009-2012 section 10), ENTL = 0x0080.
DEFAULT_UID = b"1234567812345678"
PRIVATE_KEY_SIZE = 32
PUBLIC_KEY_SIZE = 64
SIGNATURE_SIZE = 64
#: Window width of the per-key table of ``Sm2Verifier(..., precompute=True)``.
#: Measured (CPU time, one core, random signatures): width 8 = 8,160 points,
#: ~20 ms, ~2.6 MB RSS; 10 = 25,638 points, ~65 ms, ~5.5 MB, only ~2% faster;
#: 11 = 47,088 points like G's table, ~0.12 s, ~9-14 MB.
FIXED_KEY_WIDTH = 8
_DIGEST_SIZE = 32
_MAX_UID_BYTES = 0xFFFF // 8  # ENTL is a 2-byte bit length (GB/T 32918.2 5.5)

_SM3 = hashes.SM3()
_N = curve.N
_CURVE_BYTES = b"".join(v.to_bytes(32, "big") for v in (curve.A, curve.B, curve.GX, curve.GY))


def warm_up() -> None:
    """Build the process-wide fixed-base table now (otherwise the first keygen/sign does).

    Example:
        >>> warm_up()
    """
    curve.warm_up()


# --- decoding and validation ---------------------------------------------------


def _require_bytes(field: str, value: object, size: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidInputError(field, f"expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        error = KeyLengthError if field in ("d", "public_key") else InvalidInputError
        raise error(field, f"expected {size} bytes, got {len(value)}")
    return bytes(value)


def _private_scalar(d: bytes) -> int:
    """d as an integer, checked to be in [1, n-2] (GB/T 32918.1 6.1)."""
    value = int.from_bytes(_require_bytes("d", d, PRIVATE_KEY_SIZE), "big")
    if not 1 <= value <= _N - 2:
        raise InvalidInputError("d", "private key is outside [1, n-2]")
    return value


def _public_point(public_key: bytes) -> curve.Affine:
    """x || y as a curve point, validated per GB/T 32918.1 6.2.1 (cofactor 1: on-curve suffices)."""
    raw = _require_bytes("public_key", public_key, PUBLIC_KEY_SIZE)
    x = int.from_bytes(raw[:32], "big")
    y = int.from_bytes(raw[32:], "big")
    if not curve.is_on_curve(x, y):
        raise InvalidInputError("public_key", "point is not on the SM2 curve")
    return mpz(x), mpz(y)


def _check_uid(uid: bytes) -> bytes:
    raw = _require_bytes("uid", uid)
    if len(raw) > _MAX_UID_BYTES:
        raise InvalidInputError("uid", f"at most {_MAX_UID_BYTES} bytes, got {len(raw)}")
    return raw


def _nonce(k: bytes | None) -> int | None:
    if k is None:
        return None
    value = int.from_bytes(_require_bytes("k", k, 32), "big")
    if not 1 <= value <= _N - 1:
        raise InvalidInputError("k", "nonce is outside [1, n-1]")
    return value


def _encode_point(point: curve.Affine) -> bytes:
    # int and gmpy2.mpz both have to_bytes (no int() conversion needed)
    return bytes(point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big"))


# --- keys -------------------------------------------------------------------------


def public_key(d: bytes) -> bytes:
    """Public key [d]G of private key ``d`` as 64 bytes x || y (GB/T 32918.1 6.1).

    Example:
        >>> public_key((1).to_bytes(32, "big"))[:32].hex().upper()
        '32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7'
    """
    point = curve.mul_base(_private_scalar(d))
    assert point is not None  # d in [1, n-2] never gives infinity
    return _encode_point(point)


def check_public_key(public_key: bytes) -> None:
    """Raise unless ``public_key`` is 64 bytes x || y of a point on the curve (GB/T 32918.1 6.2.1).

    KeyLengthError for a wrong length, InvalidInputError for a point off the
    curve or a coordinate not below p.

    Example:
        >>> check_public_key(generate_keypair()[1])
        >>> check_public_key(bytes(64))
        Traceback (most recent call last):
        ...
        pipeline.errors.InvalidInputError: public_key: point is not on the SM2 curve
    """
    raw = _require_bytes("public_key", public_key, PUBLIC_KEY_SIZE)
    if not curve.point_bytes_on_curve(raw):
        raise InvalidInputError("public_key", "point is not on the SM2 curve")


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair (d, x || y) with d uniform in [1, n-2] from :mod:`secrets` (GB/T 32918.1 6.1).

    Example:
        >>> d, pub = generate_keypair()
        >>> public_key(d) == pub
        True
    """
    scalar = secrets.randbelow(_N - 2) + 1
    point = curve.mul_base(scalar)
    assert point is not None
    return scalar.to_bytes(32, "big"), _encode_point(point)


def z_value(public_key: bytes, uid: bytes = DEFAULT_UID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2 5.5).

    Example:
        >>> d = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
        >>> z_value(public_key(d)).hex().upper()[:16]
        'B2E14C5C79C6DF5B'
    """
    _public_point(public_key)
    return _z_unchecked(bytes(public_key), _check_uid(uid))


def _z_unchecked(public_key: bytes, uid: bytes) -> bytes:
    ctx = hashes.Hash(_SM3)
    ctx.update((len(uid) * 8).to_bytes(2, "big"))
    ctx.update(uid)
    ctx.update(_CURVE_BYTES)
    ctx.update(public_key)
    return ctx.finalize()


def message_digest(public_key: bytes, message: bytes, uid: bytes = DEFAULT_UID) -> bytes:
    """e = SM3(Z_A || M), the value signed (GB/T 32918.2 6.1 A1-A2).

    Example:
        >>> d = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
        >>> message_digest(public_key(d), b"message digest").hex().upper()[:16]
        'F0B43E94BA45ACCA'
    """
    ctx = hashes.Hash(_SM3)
    ctx.update(z_value(public_key, uid))
    ctx.update(_require_bytes("message", message))
    return ctx.finalize()


# --- signing ----------------------------------------------------------------------


def _sign_e(d: Any, inv_1_plus_d: Any, e: int, k: int | None) -> bytes:
    """GB/T 32918.2 6.1 A3-A7 on e; a fixed ``k`` that fails A5/A6 raises instead of retrying.

    ``d`` and ``inv_1_plus_d`` are ints or ``gmpy2.mpz`` (an :class:`Sm2Signer`
    keeps them as mpz: the A6 product is then ~0.3 us cheaper); s is the
    same number either way.
    """
    n = _N
    while True:
        nonce = secrets.randbelow(n - 1) + 1 if k is None else k
        r = (e + curve.mul_base_x(nonce)) % n
        if r == 0 or r + nonce == n:
            if k is not None:
                raise InvalidInputError("k", "gives r = 0 or r + k = n (GB/T 32918.2 6.1 A5)")
            continue
        s = inv_1_plus_d * (nonce - r * d) % n
        if s == 0:
            if k is not None:
                raise InvalidInputError("k", "gives s = 0 (GB/T 32918.2 6.1 A6)")
            continue
        return r.to_bytes(32, "big") + int(s).to_bytes(32, "big")


def _digest_int(e: bytes) -> int:
    return int.from_bytes(_require_bytes("e", e, _DIGEST_SIZE), "big")


class Sm2Signer:
    """Signs with one private key; build once, sign many times (the per-card loop).

    Precomputes the public key, Z_A and (1 + d)^-1 mod n.  The private key is
    never shown by ``repr``.  Not thread-safe (it reuses one hash context):
    give each thread its own signer.

    Example:
        >>> signer = Sm2Signer(generate_keypair()[0])
        >>> sig = signer.sign(b"static data")
        >>> verify(signer.public_key, b"static data", sig)
    """

    __slots__ = ("_d", "_inv", "_z_ctx", "public_key", "uid", "z")

    def __init__(self, d: bytes, uid: bytes = DEFAULT_UID) -> None:
        scalar = _private_scalar(d)
        self._d: Any = mpz(scalar)
        self._inv: Any = mpz(pow(1 + scalar, -1, _N))
        point = curve.mul_base(scalar)
        assert point is not None
        self.public_key: bytes = _encode_point(point)
        self.uid: bytes = _check_uid(uid)
        self.z: bytes = _z_unchecked(self.public_key, self.uid)
        self._z_ctx = hashes.Hash(_SM3)
        self._z_ctx.update(self.z)

    def __repr__(self) -> str:
        return f"Sm2Signer(public_key={self.public_key[:4].hex().upper()}..)"

    def digest(self, message: bytes) -> bytes:
        """e = SM3(Z_A || message) for this signer's key and user ID (GB/T 32918.2 6.1 A2)."""
        ctx = self._z_ctx.copy()
        ctx.update(_require_bytes("message", message))
        return ctx.finalize()

    def sign(self, message: bytes, k: bytes | None = None) -> bytes:
        """64-byte r || s over ``message`` (GB/T 32918.2 6.1); ``k`` only for known answers."""
        if not isinstance(message, bytes | bytearray):
            _require_bytes("message", message)  # raises InvalidInputError
        ctx = self._z_ctx.copy()  # the per-card path: digest() inlined
        ctx.update(message)
        e = int.from_bytes(ctx.finalize(), "big")
        return _sign_e(self._d, self._inv, e, None if k is None else _nonce(k))

    def sign_digest(self, e: bytes, k: bytes | None = None) -> bytes:
        """64-byte r || s over a precomputed 32-byte e = SM3(Z_A || M) (6.1 A3-A7)."""
        return _sign_e(self._d, self._inv, _digest_int(e), _nonce(k))


def sign(d: bytes, message: bytes, uid: bytes = DEFAULT_UID, k: bytes | None = None) -> bytes:
    """SM2 signature r || s (64 bytes) of ``message`` under ``d`` (GB/T 32918.2 6.1).

    ``k`` fixes the nonce, for known-answer tests only; by default it comes
    from :mod:`secrets`.  For many signatures with one key use :class:`Sm2Signer`.

    Example:
        >>> d, pub = generate_keypair()
        >>> len(sign(d, b"abc"))
        64
    """
    return Sm2Signer(d, uid).sign(message, k)


def sign_digest(d: bytes, e: bytes, k: bytes | None = None) -> bytes:
    """SM2 signature over a precomputed e = SM3(Z_A || M) (GB/T 32918.2 6.1 A3-A7).

    Example:
        >>> d, pub = generate_keypair()
        >>> sig = sign_digest(d, message_digest(pub, b"abc"))
        >>> verify(pub, b"abc", sig)
    """
    scalar = _private_scalar(d)
    return _sign_e(scalar, pow(1 + scalar, -1, _N), _digest_int(e), _nonce(k))


# --- verification -----------------------------------------------------------------


class Sm2Verifier:
    """Verifies signatures by one public key; validates the point and computes Z_A once.

    ``precompute=True`` also builds a fixed-base window table for the public
    key Q (:class:`~pipeline.crypto._sm2_curve.FixedBaseTable`, width
    :data:`FIXED_KEY_WIDTH`), so that [s]G + [t]Q in GB/T 32918.2 7.1 B6 is
    two sets of table look-ups and affine additions instead of a wNAF ladder
    over Q: measured 4.2-4.8x the verifications per second (~9,000-10,000/s
    against ~2,100/s on one core), for ~20 ms and ~2.6 MB of RSS once per key
    (figures: ``bench/bench_sm2.py``).  Use it for a key that checks
    many signatures, such as the issuer key behind every card's ICC
    certificate; the answers are the same either way.

    Example:
        >>> d, pub = generate_keypair()
        >>> Sm2Verifier(pub).verify(b"m", sign(d, b"m"))
        >>> Sm2Verifier(pub, precompute=True).verify(b"m", sign(d, b"m"))
    """

    __slots__ = ("_point", "_table", "_z_ctx", "public_key", "uid", "z")

    def __init__(
        self, public_key: bytes, uid: bytes = DEFAULT_UID, *, precompute: bool = False
    ) -> None:
        self._point: Any = _public_point(public_key)
        self.public_key: bytes = bytes(public_key)
        self.uid: bytes = _check_uid(uid)
        self.z: bytes = _z_unchecked(self.public_key, self.uid)
        self._z_ctx = hashes.Hash(_SM3)
        self._z_ctx.update(self.z)
        self._table: curve.FixedBaseTable | None = (
            curve.FixedBaseTable(self._point, FIXED_KEY_WIDTH) if precompute else None
        )

    @property
    def precomputed(self) -> bool:
        """True when this verifier holds a fixed-base table for its key."""
        return self._table is not None

    def __repr__(self) -> str:
        extra = ", precompute=True" if self._table is not None else ""
        return f"Sm2Verifier(public_key={self.public_key[:4].hex().upper()}..{extra})"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise SignatureError unless ``signature`` is valid over ``message`` (32918.2 7.1)."""
        ctx = self._z_ctx.copy()
        ctx.update(_require_bytes("message", message))
        self.verify_digest(ctx.finalize(), signature)

    def verify_digest(self, e: bytes, signature: bytes) -> None:
        """Verify over a precomputed e = SM3(Z_A || M) (GB/T 32918.2 7.1 B1, B2, B5-B7)."""
        e_int = _digest_int(e)
        if not isinstance(signature, bytes | bytearray):
            raise SignatureError("signature", f"expected bytes, got {type(signature).__name__}")
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                "signature", f"expected {SIGNATURE_SIZE} bytes r||s, got {len(signature)}"
            )
        n = _N
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not 1 <= r <= n - 1:
            raise SignatureError("signature", "r is outside [1, n-1] (GB/T 32918.2 7.1 B1)")
        if not 1 <= s <= n - 1:
            raise SignatureError("signature", "s is outside [1, n-1] (GB/T 32918.2 7.1 B2)")
        t = (r + s) % n
        if t == 0:
            raise SignatureError("signature", "t = r + s = 0 mod n (GB/T 32918.2 7.1 B5)")
        table = self._table
        if table is None:
            point = curve.mul_base_add(s, t, self._point)
            valid = point is not None and (e_int + int(point[0])) % n == r
        else:  # (e + x1) mod n == r  <=>  x1 = r - e (mod n), checked without leaving C
            valid = curve.mul_base_add_fixed_x_equals(s, t, table, (r - e_int) % n)
        if not valid:
            raise SignatureError("signature", "does not verify (GB/T 32918.2 7.1 B7)")


def verify(public_key: bytes, message: bytes, signature: bytes, uid: bytes = DEFAULT_UID) -> None:
    """Raise SignatureError unless r || s is a valid signature of ``message`` (GB/T 32918.2 7.1).

    A malformed public key or user ID raises InvalidInputError.

    Example:
        >>> d, pub = generate_keypair()
        >>> verify(pub, b"m", sign(d, b"m"))
    """
    Sm2Verifier(public_key, uid).verify(message, signature)


def verify_digest(public_key: bytes, e: bytes, signature: bytes) -> None:
    """Verify r || s over a precomputed e = SM3(Z_A || M) (GB/T 32918.2 7.1).

    Example:
        >>> d, pub = generate_keypair()
        >>> verify_digest(pub, message_digest(pub, b"m"), sign(d, b"m"))
    """
    Sm2Verifier(public_key).verify_digest(e, signature)


# --- DER interchange (GM/T 0009-2012 7.3: SM2Signature ::= SEQUENCE { r, s INTEGER }) ---


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # keeps a leading 00 if needed
    return b"\x02" + bytes([len(body)]) + body


def signature_to_der(signature: bytes) -> bytes:
    """Raw r || s as the DER SEQUENCE { INTEGER r, INTEGER s } (GM/T 0009-2012 7.3).

    Example:
        >>> signature_to_der(bytes(31) + b"\\x01" + bytes(31) + b"\\x80").hex()
        '300702010102020080'
    """
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        raise InvalidInputError("signature", f"expected {SIGNATURE_SIZE} bytes r||s")
    body = _der_integer(int.from_bytes(signature[:32], "big")) + _der_integer(
        int.from_bytes(signature[32:], "big")
    )
    return b"\x30" + bytes([len(body)]) + body


def signature_from_der(der: bytes) -> bytes:
    """DER SEQUENCE { INTEGER r, INTEGER s } as raw 64-byte r || s; strict DER only.

    Example:
        >>> signature_from_der(bytes.fromhex("300702010102020080"))[-1]
        128
    """
    raw = _require_bytes("signature", der)

    def integer(offset: int) -> tuple[int, int]:
        if offset + 2 > len(raw) or raw[offset] != 0x02:
            raise SignatureError("signature", f"expected DER INTEGER at offset {offset}")
        length = raw[offset + 1]
        body = raw[offset + 2 : offset + 2 + length]
        if length == 0 or len(body) != length or length > 33:
            raise SignatureError("signature", f"bad DER INTEGER length at offset {offset}")
        if body[0] & 0x80 or (length > 1 and body[0] == 0 and not body[1] & 0x80):
            raise SignatureError("signature", f"non-minimal or negative INTEGER at {offset}")
        return int.from_bytes(body, "big"), offset + 2 + length

    if len(raw) < 2 or raw[0] != 0x30 or raw[1] != len(raw) - 2:
        raise SignatureError("signature", "expected one DER SEQUENCE with a short length")
    r, offset = integer(2)
    s, offset = integer(offset)
    if offset != len(raw):
        raise SignatureError("signature", "trailing bytes after the DER SEQUENCE")
    if r >= 1 << 256 or s >= 1 << 256:
        raise SignatureError("signature", "r or s longer than 32 bytes")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
