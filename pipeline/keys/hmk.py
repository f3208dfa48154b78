"""The host master key (HMK): how it enters the soft key store.

The HMK is an AES-256 key (32 bytes) that wraps every stored key as a TR-31
version D key block (X9.143 section 6.3.2; AES-256 KBPK so it is at least as
strong as any key it protects, PCI PIN 18-3).  It enters either

* from 2..3 full-length XOR components held by different custodians (split
  knowledge and dual control, PCI PIN 6-1 / DOMAIN.md section 2), the
  combination checked against the expected KCV; or
* for demos only, from a passphrase file through scrypt (RFC 7914) with a
  random salt stored in the key store database.

The HMK's KCV (AES-CMAC, X9.24-1:2017 A.3, 5 bytes) is stored so that
opening a store with the wrong HMK fails clearly ("hmk: KCV mismatch").

Example:
    >>> c1, c2 = bytes(32), bytes.fromhex("11" * 32)
    >>> hmk = hmk_from_components([c1, c2], hmk_kcv(bytes.fromhex("11" * 32)))
    >>> hmk == bytes.fromhex("11" * 32)
    True
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path

from pipeline.crypto.kcv import kcv
from pipeline.crypto.kdf import scrypt_key
from pipeline.errors import CeremonyError, ConfigError, KeyStoreError
from pipeline.keys.components import xor_combine

__all__ = [
    "HMK_KCV_LENGTH",
    "HMK_KCV_METHOD",
    "HMK_LENGTH",
    "check_hmk",
    "hmk_from_components",
    "hmk_from_passphrase",
    "hmk_from_passphrase_file",
    "hmk_kcv",
]

HMK_LENGTH = 32
HMK_KCV_METHOD = "aes-cmac"
HMK_KCV_LENGTH = 5
_MIN_PASSPHRASE = 12


def hmk_kcv(hmk: bytes) -> bytes:
    """The HMK's check value: AES-CMAC(HMK)[00*16], leftmost 5 bytes (X9.24-1:2017 A.3)."""
    return kcv(hmk, HMK_KCV_METHOD, HMK_KCV_LENGTH)


def check_hmk(hmk: bytes, expected_kcv: bytes) -> bytes:
    """Return ``hmk`` if its KCV equals ``expected_kcv`` (compared over its length).

    Raises :class:`~pipeline.errors.KeyStoreError` ``hmk: KCV mismatch``
    naming both (public) KCVs.
    """
    if len(hmk) != HMK_LENGTH:
        raise KeyStoreError("hmk", f"must be {HMK_LENGTH} bytes (AES-256), got {len(hmk)}")
    if not 2 <= len(expected_kcv) <= HMK_KCV_LENGTH:
        raise KeyStoreError("hmk", f"expected KCV must be 2..5 bytes, got {len(expected_kcv)}")
    actual = kcv(hmk, HMK_KCV_METHOD, len(expected_kcv))
    if not hmac.compare_digest(actual, expected_kcv):
        raise KeyStoreError(
            "hmk",
            f"KCV mismatch: entered key has {actual.hex().upper()}, "
            f"expected {expected_kcv.hex().upper()}",
        )
    return hmk


def hmk_from_components(components: Sequence[bytes], expected_kcv: bytes) -> bytes:
    """Combine 2..3 32-byte XOR components into the HMK and check its KCV.

    Raises :class:`~pipeline.errors.CeremonyError` for a wrong number or length
    of components, :class:`~pipeline.errors.KeyStoreError` for a KCV mismatch.
    """
    if any(len(c) != HMK_LENGTH for c in components):
        raise CeremonyError(
            "components",
            f"HMK components must be {HMK_LENGTH} bytes each, got {[len(c) for c in components]}",
        )
    return check_hmk(xor_combine(components), expected_kcv)


def hmk_from_passphrase(passphrase: bytes, salt: bytes) -> bytes:
    """DEMO ONLY: HMK = scrypt(passphrase, salt, N=2^15, r=8, p=1), 32 bytes (RFC 7914)."""
    if len(passphrase) < _MIN_PASSPHRASE:
        raise ConfigError(
            "passphrase", f"demo HMK passphrase must be at least {_MIN_PASSPHRASE} bytes"
        )
    if len(salt) < 16:
        raise ConfigError("salt", f"scrypt salt must be at least 16 bytes, got {len(salt)}")
    return scrypt_key(passphrase, salt, HMK_LENGTH)


def hmk_from_passphrase_file(path: Path, salt: bytes) -> bytes:
    """DEMO ONLY: read the first line of ``path`` (trailing newline stripped) and derive the HMK.

    The salt is the store's (``SoftKeyStore`` keeps it in its database).
    """
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("passphrase_file", f"cannot read {path} ({type(exc).__name__})") from None
    lines = text.splitlines()
    return hmk_from_passphrase(lines[0] if lines else b"", salt)
