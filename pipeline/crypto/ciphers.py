"""Block ciphers: 3DES (two- and three-key), AES and SM4 in ECB and CBC mode.

A :class:`BlockCipher` is built once per key and reused: it keeps one ECB
encryptor and one ECB decryptor context for the life of the object, because a
new ``cryptography`` cipher context costs about 13 times the cipher itself on
one or two blocks (DESIGN.md, speed model).  CBC is chained over the reused
ECB contexts (decryption in one ECB call, encryption block by block) so it
needs no new context either.

3DES goes through ``cryptography.hazmat.decrepit.ciphers.algorithms.TripleDES``
with a two-key key expanded to K1||K2||K1 (ANSI X9.52 keying option 2); the
old import path and two-key ``TripleDES`` keys are deprecated in cryptography
48+.  SM4 is GB/T 32907-2016; AES is FIPS 197.

Not thread-safe: give each thread (or process) its own instance.

Example:
    >>> c = BlockCipher(Algorithm.TDES, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    >>> c.encrypt_ecb(bytes(8)).hex().upper()
    '08D7B4FB629D0885'
    >>> fix_parity(bytes.fromhex("0000")).hex()
    '0101'
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

from pipeline.errors import InvalidInputError, KeyLengthError

__all__ = [
    "INVERT_TABLE",
    "ODD_PARITY_TABLE",
    "Algorithm",
    "BlockCipher",
    "fix_parity",
    "has_odd_parity",
    "key_lengths",
    "primitive",
    "primitive_for",
    "xor",
]


class Algorithm(Enum):
    """Block cipher algorithms the project uses (value: the name stored in configs)."""

    TDES = "tdes"
    AES = "aes"
    SM4 = "sm4"

    @property
    def block_size(self) -> int:
        """Block size in bytes: 8 for 3DES, 16 for AES and SM4."""
        return 8 if self is Algorithm.TDES else 16


_KEY_LENGTHS: dict[Algorithm, tuple[int, ...]] = {
    Algorithm.TDES: (16, 24),
    Algorithm.AES: (16, 24, 32),
    Algorithm.SM4: (16,),
}


def key_lengths(algorithm: Algorithm) -> tuple[int, ...]:
    """Key lengths in bytes accepted for ``algorithm``.

    Example:
        >>> key_lengths(Algorithm.AES)
        (16, 24, 32)
    """
    return _KEY_LENGTHS[algorithm]


def _check_key(algorithm: Algorithm, key: bytes) -> None:
    if not isinstance(key, bytes | bytearray):
        raise InvalidInputError("key", f"expected bytes, got {type(key).__name__}")
    allowed = _KEY_LENGTHS[algorithm]
    if len(key) not in allowed:
        raise KeyLengthError(
            "key",
            f"{algorithm.value} key must be {' or '.join(map(str, allowed))} bytes, got {len(key)}",
        )


def _tdes(key: bytes) -> BlockCipherAlgorithm:
    # X9.52 keying option 2: K1||K2||K1 for a two-key (double-length) key.
    return TripleDES(key + key[:8] if len(key) == 16 else key)


def _checked(
    algorithm: Algorithm, construct: Callable[[bytes], BlockCipherAlgorithm]
) -> Callable[[bytes], BlockCipherAlgorithm]:
    """``construct`` behind the key check of ``algorithm``, its allowed lengths bound once.

    A ``bytes`` key of an allowed length goes straight to the constructor: a
    card makes up to 11 KCVs, each under a new key (issue 7).
    """
    allowed = _KEY_LENGTHS[algorithm]

    def make(key: bytes) -> BlockCipherAlgorithm:
        if type(key) is not bytes or len(key) not in allowed:
            _check_key(algorithm, key)  # raises unless a bytearray of an allowed length
            key = bytes(key)
        return construct(key)

    return make


_PRIMITIVES: dict[Algorithm, Callable[[bytes], BlockCipherAlgorithm]] = {
    Algorithm.TDES: _checked(Algorithm.TDES, _tdes),
    Algorithm.AES: _checked(Algorithm.AES, algorithms.AES),
    Algorithm.SM4: _checked(Algorithm.SM4, algorithms.SM4),
}


def primitive(algorithm: Algorithm, key: bytes) -> BlockCipherAlgorithm:
    """The ``cryptography`` algorithm object for ``key`` (3DES two-key keys expanded).

    For modules of this package that need a mode ``BlockCipher`` does not
    offer (CMAC, one-block KCVs); the key length is checked.
    """
    return _PRIMITIVES[algorithm](key)


def primitive_for(algorithm: Algorithm) -> Callable[[bytes], BlockCipherAlgorithm]:
    """:func:`primitive` bound to ``algorithm``: for a table built once (no Enum look-up per key).

    Example:
        >>> primitive_for(Algorithm.TDES)(bytes(16)).key_size
        192
    """
    return _PRIMITIVES[algorithm]


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length byte strings.

    Example:
        >>> xor(b"\\x0f\\xf0", b"\\xff\\xff").hex()
        'f00f'
    """
    if len(a) != len(b):
        raise InvalidInputError("data", f"xor of unequal lengths {len(a)} and {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# Odd-parity table: for every byte value, the same 7 high bits with bit 0 set so
# that the byte has an odd number of 1 bits (FIPS 46-3 / ANSI X3.92).
ODD_PARITY_TABLE = bytes((b & 0xFE) | ((bin(b & 0xFE).count("1") + 1) & 1) for b in range(256))
#: ``bytes.translate`` table that inverts every bit (x xor FF).
INVERT_TABLE = bytes(0xFF - b for b in range(256))
_ODD_PARITY = ODD_PARITY_TABLE


def fix_parity(key: bytes) -> bytes:
    """Return ``key`` with every byte adjusted to odd parity (DES key parity bit = bit 0).

    EMV Book 2 A1.4: derived 3DES ICC master keys carry odd parity.

    Example:
        >>> fix_parity(bytes.fromhex("0001FEFF")).hex().upper()
        '0101FEFE'
    """
    return bytes(key).translate(_ODD_PARITY)


def has_odd_parity(key: bytes) -> bool:
    """True when every byte of ``key`` has an odd number of 1 bits.

    Example:
        >>> has_odd_parity(bytes.fromhex("0101")), has_odd_parity(bytes.fromhex("00"))
        (True, False)
    """
    return bytes(key) == bytes(key).translate(_ODD_PARITY)


class BlockCipher:
    """One key, one algorithm, reusable ECB/CBC encryption and decryption.

    Example:
        >>> sm4 = BlockCipher(Algorithm.SM4, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
        >>> sm4.encrypt_ecb(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
        '681EDF34D206965E86B3E94F536E4246'
    """

    __slots__ = ("_cipher", "_dec", "_enc", "algorithm", "block_size", "key_size")

    def __init__(self, algorithm: Algorithm, key: bytes) -> None:
        if not isinstance(algorithm, Algorithm):
            raise InvalidInputError("algorithm", f"expected Algorithm, got {algorithm!r}")
        _check_key(algorithm, key)
        self.algorithm = algorithm
        self.block_size = algorithm.block_size
        self.key_size = len(key)
        self._cipher = Cipher(primitive(algorithm, key), modes.ECB())  # noqa: S305 - ECB is the primitive; modes are built on it
        self._enc: CipherContext = self._cipher.encryptor()
        self._dec: CipherContext | None = None

    def __repr__(self) -> str:  # never show the key
        return f"BlockCipher({self.algorithm.name}, {self.key_size * 8}-bit key)"

    def _check_data(self, data: bytes, field: str = "data") -> None:
        if len(data) % self.block_size:
            raise InvalidInputError(
                field,
                f"length {len(data)} is not a multiple of the "
                f"{self.algorithm.value} block size {self.block_size}",
            )

    def _check_iv(self, iv: bytes | None) -> bytes:
        if iv is None:
            return bytes(self.block_size)
        if len(iv) != self.block_size:
            raise InvalidInputError("iv", f"must be {self.block_size} bytes, got {len(iv)}")
        return bytes(iv)

    def ecb_encryptor(self) -> Callable[[bytes], bytes]:
        """The reused ECB encryptor's ``update`` for hot loops (no length check).

        The caller guarantees whole blocks; a partial block would be buffered
        by the context and corrupt every later call, so use
        :meth:`encrypt_ecb` anywhere the length is not fixed by construction.
        """
        return self._enc.update

    def encrypt_ecb(self, data: bytes) -> bytes:
        """Encrypt whole blocks in ECB mode with the reused encryptor context."""
        self._check_data(data)
        return self._enc.update(data)

    def decrypt_ecb(self, data: bytes) -> bytes:
        """Decrypt whole blocks in ECB mode with the reused decryptor context."""
        self._check_data(data)
        if self._dec is None:
            self._dec = self._cipher.decryptor()
        return self._dec.update(data)

    def encrypt_cbc(self, data: bytes, iv: bytes | None = None) -> bytes:
        """Encrypt whole blocks in CBC mode (ISO/IEC 10116), zero IV by default.

        Example:
            >>> c = BlockCipher(Algorithm.AES, bytes(16))
            >>> iv = b"\\x01" * 16
            >>> c.decrypt_cbc(c.encrypt_cbc(bytes(32), iv=iv), iv=iv) == bytes(32)
            True
        """
        self._check_data(data)
        chain = self._check_iv(iv)
        bs = self.block_size
        enc = self._enc.update
        out = bytearray()
        for i in range(0, len(data), bs):
            chain = enc(xor(data[i : i + bs], chain))
            out += chain
        return bytes(out)

    def decrypt_cbc(self, data: bytes, iv: bytes | None = None) -> bytes:
        """Decrypt whole blocks in CBC mode, zero IV by default (one ECB call, one XOR)."""
        self._check_data(data)
        chain = self._check_iv(iv)
        if not data:
            return b""
        plain = self.decrypt_ecb(data)
        return xor(plain, chain + bytes(data[: -self.block_size]))

    def cbc_mac(self, data: bytes, iv: bytes | None = None) -> bytes:
        """Last block of the CBC encryption of ``data`` (ISO/IEC 9797-1 algorithm 1 core).

        ``data`` must already be padded to whole blocks.
        """
        self._check_data(data)
        chain = self._check_iv(iv)
        bs = self.block_size
        enc = self._enc.update
        for i in range(0, len(data), bs):
            chain = enc(xor(data[i : i + bs], chain))
        return chain
