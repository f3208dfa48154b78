"""Key check values (KCVs).

Several conventions exist and they give *different* values for the same key,
so the method name is stored beside every KCV:

=============  ====================================================  =========================
method         computation                                           source
=============  ====================================================  =========================
``tdes``       3DES-ECB(key)[00 * 8]                                  ANSI X9.24-1, common use
``aes-cmac``   AES-CMAC(key)[00 * 16]                                 ANSI X9.24-1:2017 A.3
``aes-gp``     AES-ECB(key)[01 * 16]                                  GlobalPlatform Amd D 7.2.2
``sm4``        SM4-ECB(key)[00 * 16]                                  no authoritative source;
                                                                      project convention
=============  ====================================================  =========================

The KCV is the leftmost ``length`` bytes (3 by default, 5 for X9.143 AES).

Example:
    >>> kcv(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
    '08D7B4'
    >>> kcv(bytes.fromhex("3F419E1CB7079442AA37474C2EFBF8B8"), "aes-cmac", 5).hex().upper()
    '08793E25AB'
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, modes

from pipeline.crypto.ciphers import Algorithm, primitive_for
from pipeline.crypto.mac import cmac
from pipeline.errors import InvalidInputError

__all__ = ["KcvMethod", "kcv", "kcv_function", "kcv_method_for"]


class KcvMethod(StrEnum):
    """KCV conventions; the string value is what configs and manifests store."""

    TDES = "tdes"
    AES_CMAC = "aes-cmac"
    AES_GP = "aes-gp"
    SM4 = "sm4"


def kcv_method_for(algorithm: Algorithm) -> KcvMethod:
    """The project's default KCV method for keys of ``algorithm``.

    Example:
        >>> kcv_method_for(Algorithm.AES).value
        'aes-cmac'
    """
    return {
        Algorithm.TDES: KcvMethod.TDES,
        Algorithm.AES: KcvMethod.AES_CMAC,
        Algorithm.SM4: KcvMethod.SM4,
    }[algorithm]


#: The single-block ECB methods: method -> (the algorithm's checked constructor, the block
#: that is encrypted); keyed by the method string (a KcvMethod hashes as its value), so a
#: KCV needs no Enum look-up (:func:`~pipeline.crypto.ciphers.primitive_for`).
_ECB_KCVS: dict[str, tuple[Callable[[bytes], BlockCipherAlgorithm], bytes]] = {
    KcvMethod.TDES: (primitive_for(Algorithm.TDES), bytes(8)),
    KcvMethod.AES_GP: (primitive_for(Algorithm.AES), b"\x01" * 16),
    KcvMethod.SM4: (primitive_for(Algorithm.SM4), bytes(16)),
}
_ECB = modes.ECB()  # noqa: S305 - a KCV is one ECB block by definition (X9.24-1)


def kcv(key: bytes, method: str = "tdes", length: int = 3) -> bytes:
    """Key check value of ``key`` by ``method`` (a :class:`KcvMethod` or its string).

    ``length`` is 1..block size bytes.  A key of the wrong length for the
    method raises :class:`~pipeline.errors.KeyLengthError`.  The ECB methods
    take the cheapest path for a key seen once (a fresh card key): one bare
    encryptor, one block, no reusable cipher object.
    """
    ecb = _ECB_KCVS.get(method) if isinstance(method, str) else None
    if ecb is not None:
        make, block = ecb
        block = Cipher(make(key), _ECB).encryptor().update(block)
    else:
        if method != KcvMethod.AES_CMAC:  # the one method not in _ECB_KCVS
            raise InvalidInputError(
                "method",
                f"unknown KCV method {method!r}; use one of {[x.value for x in KcvMethod]}",
            )
        block = cmac(Algorithm.AES, key, bytes(16))
    if not isinstance(length, int) or not 1 <= length <= len(block):
        raise InvalidInputError("length", f"KCV length must be 1..{len(block)}, got {length!r}")
    return block[:length]


def kcv_function(method: str = "tdes", length: int = 3) -> Callable[[bytes], bytes]:
    """:func:`kcv` with ``method`` and ``length`` checked once, for a caller that keeps it.

    The returned function gives ``kcv(key, method, length)`` for every key
    (the key's length still checked per key); a key store making several
    KCVs per card under fresh keys keeps one per method (issue 7).  An
    unknown method or a bad length raises here, as :func:`kcv` would.

    Example:
        >>> tdes = kcv_function("tdes")
        >>> tdes(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
        '08D7B4'
    """
    ecb = _ECB_KCVS.get(method) if isinstance(method, str) else None
    if ecb is None:
        kcv(bytes(16), method, length)  # raises for an unknown method or a bad length
        return lambda key: kcv(key, method, length)  # aes-cmac: one CMAC per key anyway
    make, block = ecb
    if not isinstance(length, int) or not 1 <= length <= len(block):
        raise InvalidInputError("length", f"KCV length must be 1..{len(block)}, got {length!r}")

    def compute(key: bytes) -> bytes:
        return Cipher(make(key), _ECB).encryptor().update(block)[:length]

    return compute
