"""GlobalPlatform card static key diversification from the issuer KMC.

The card's KDD (key diversification data) is the first 10 bytes of its
INITIALIZE UPDATE response.  Three methods (names as GlobalPlatformPro uses
them, ``library/src/main/java/pro/javacard/gp/keys/PlaintextKeys.java``):

* ``emv`` (EMV CPS v1.1 section 3.2.3, 3DES KMC):
  K = 3DES-ECB(KMC)[KDD[4..9] || F0 || kk || KDD[4..9] || 0F || kk],
  kk = 01 ENC, 02 MAC, 03 DEK.
* ``visa2`` (VISA2 / "CPG 2.02", 3DES KMC): the same with KDD[0..1] ||
  KDD[4..7] in place of KDD[4..9].
* ``kdf3`` (AES KMC, SCP03 cards): NIST SP 800-108 KDF in counter mode with
  AES-CMAC under the KMC, 8-bit counter *first*, fixed input
  ``00 00 00 || kk || 00 || KDD[0..9]`` (16 bytes per PRF call together with
  the counter), output as long as the KMC, kk = 01 ENC, 02 MAC, 03 DEK.

Source and doubt for ``kdf3``: GlobalPlatform Amendment D (SCP03) defines the
SP 800-108 KDF for *session* keys (label 00*11 || constant || 00 || L ||
counter || context, constants 04 S-ENC, 06 S-MAC, 07 S-RMAC, table 4-1) but
not the diversification of card *static* keys from a master key, which is
issuer- or vendor-specific.  We implement the construction GlobalPlatformPro
calls ``kdf3`` (template ``$_ 00 00 00 $k 00 $0..$9``: empty prefix, the
counter, then the constants and KDD, no L field), because it is the one with
public known answers (GlobalPlatformPro TestPlaintextKeys: KCVs for AES-128 /
192 / 256 and one full AES-256 key from an external source).  A card issued
with the Amendment D-style label layout would need a fourth method.

Keys are returned as computed: no parity adjustment (the EMV CPS examples of
GPKeySetTest in openjavacard-tools are raw 3DES outputs).

Example:
    >>> kmc = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    >>> enc, mac, dek = diversify_card_keys(kmc, bytes(10))
    >>> enc.hex().upper()
    '5D9A62E01DF1FA7A93F231000F4AC272'
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.mac import KeyedCmac
from pipeline.errors import InvalidInputError, KeyLengthError

__all__ = ["CardKeyDiversifier", "GpDiversification", "diversify_card_keys"]

_KEY_TYPES = (0x01, 0x02, 0x03)  # ENC, MAC, DEK


class GpDiversification(Enum):
    """Card static key diversification methods (value: the string callers pass)."""

    EMV = "emv"
    VISA2 = "visa2"
    KDF3 = "kdf3"


#: The three ``emv`` / ``visa2`` cipher inputs (module docstring: six KDD bytes || F0 || kk
#: || six || 0F || kk, for kk = ENC, MAC, DEK) in a row with the six bytes left as ``%s``:
#: one formatting call per card, one ECB call for the three blocks.
_EMV_BLOCKS = b"".join(b"%s\xf0" + bytes([kk]) + b"%s\x0f" + bytes([kk]) for kk in _KEY_TYPES)


def _method(method: str | GpDiversification) -> GpDiversification:
    try:
        return GpDiversification(method)
    except ValueError:
        raise InvalidInputError(
            "method", f"unknown diversification {method!r}; use emv, visa2 or kdf3"
        ) from None


def _check_kdd(kdd: bytes) -> bytes:
    if len(kdd) != 10:
        raise InvalidInputError("kdd", f"must be 10 bytes, got {len(kdd)}")
    return bytes(kdd)


class CardKeyDiversifier:
    """One KMC, one method: the card static keys of any KDD, cipher keyed once.

    For the data-preparation hot loop (one call per card): the 3DES KMC's
    cipher (``emv``, ``visa2``: the three blocks of EMV CPS v1.1 3.2.3 go
    through the reused ECB context in one call, ECB being block by block) or
    the AES KMC's keyed CMAC (``kdf3``, SP 800-38B; the SP 800-108 PRF) is
    built here once instead of per card.  The keys equal
    :func:`diversify_card_keys`'.  Not thread-safe.

    Example:
        >>> d = CardKeyDiversifier(bytes.fromhex("404142434445464748494A4B4C4D4E4F"), "emv")
        >>> d.diversify(bytes(10))[0].hex().upper()
        '5D9A62E01DF1FA7A93F231000F4AC272'
    """

    __slots__ = ("_encrypt", "_prf", "_rounds", "_size", "method")

    def __init__(self, kmc: bytes, method: str | GpDiversification = "emv") -> None:
        m = self.method = _method(method)
        self._size = len(kmc)
        self._encrypt: Callable[[bytes], bytes] | None = None
        self._prf: Callable[[bytes], bytes] | None = None
        if m is GpDiversification.KDF3:
            if len(kmc) not in (16, 24, 32):
                raise KeyLengthError(
                    "kmc", f"kdf3 needs an AES KMC of 16, 24 or 32 bytes, got {len(kmc)}"
                )
            self._prf = KeyedCmac(Algorithm.AES, bytes(kmc)).mac
            self._rounds = range(1, -(-len(kmc) // 16) + 1)
            return
        if len(kmc) != 16:
            raise KeyLengthError("kmc", f"{m.value} needs a 16-byte 3DES KMC, got {len(kmc)}")
        # whole blocks by construction (three 16-byte inputs), so the bare update is safe
        self._encrypt = BlockCipher(Algorithm.TDES, kmc).ecb_encryptor()

    def __repr__(self) -> str:  # never show the key
        return f"CardKeyDiversifier({self.method.value}, {self._size * 8}-bit KMC)"

    def diversify(self, kdd: bytes) -> tuple[bytes, bytes, bytes]:
        """Card static keys (ENC, MAC, DEK) for the card's 10-byte KDD."""
        kdd = _check_kdd(kdd)
        if self._prf is not None:
            enc, mac, dek = (self._kdf3(kdd, kk) for kk in _KEY_TYPES)
            return enc, mac, dek
        assert self._encrypt is not None
        six = kdd[4:10] if self.method is GpDiversification.EMV else kdd[0:2] + kdd[4:8]
        out = self._encrypt(_EMV_BLOCKS % (six, six, six, six, six, six))
        return out[:16], out[16:32], out[32:]

    def _kdf3(self, kdd: bytes, kk: int) -> bytes:
        """SP 800-108 counter mode, counter first (see the module docstring), one key."""
        assert self._prf is not None
        prf, fixed = self._prf, bytes([0x00, 0x00, 0x00, kk, 0x00]) + kdd
        out = b"".join([prf(bytes([i]) + fixed) for i in self._rounds])
        return out[: self._size]


def diversify_card_keys(kmc: bytes, kdd: bytes, method: str = "emv") -> tuple[bytes, bytes, bytes]:
    """Card static keys (ENC, MAC, DEK) from the KMC and the card's 10-byte KDD.

    ``method``: ``"emv"`` or ``"visa2"`` (16-byte 3DES KMC), ``"kdf3"`` (AES KMC
    of 16, 24 or 32 bytes).  See the module docstring for sources; for many
    cards under one KMC use :class:`CardKeyDiversifier`.

    Example:
        >>> kmc = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
        >>> kdd = bytes.fromhex("00010203040506070809")
        >>> from pipeline.crypto.kcv import kcv
        >>> [kcv(k).hex().upper() for k in diversify_card_keys(kmc, kdd, "visa2")]
        ['2BE598', '58DA38', '3C328E']
    """
    m = _method(method)
    kdd = _check_kdd(kdd)
    return CardKeyDiversifier(kmc, m).diversify(kdd)
