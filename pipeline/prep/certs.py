"""ICC public-key certificates signed inside the key store (EMV Book 2 6.3; PBOC format 14).

The issuer private key never leaves the key store.  For RSA the certificate's
recovered block (``6A || 04 || ... || SHA-1 || BC``, Book 2 Table 14) is
framed by :func:`pipeline.crypto.emv_certs.build_icc_certificate` and the raw
private operation is done by ``store.sign(issuer_key, block)``; the adapter
:class:`StoreRsaSigner` gives the store the shape of a
:class:`~pipeline.crypto.rsa.RawRsaSigner` (``size_bytes``, ``private_op``).
For SM2 the signed data is the certificate's bytes 0..83 followed by the
static data to be authenticated (DOMAIN.md 4) and ``store.sign`` returns the
GB/T 32918.2 signature ``r || s``.

Every certificate is verified right after signing with the issuer *public*
key (the self-check of issue 5): a wrong signature, a framing error or a
certified key that is not the card's raises
:class:`~pipeline.errors.CertificateError`, which the preparer turns into a
reject ``R080 SELF_CHECK_CERT``.  For SM2 the issuer key is the same for
every card, so the preparer builds one precomputed verifier
(:func:`pboc_issuer_verifier`) and passes it instead of the key.

Example (a stand-in store whose "private operation" echoes the block):
    >>> from pipeline.keys.model import KeyRef
    >>> class Echo:
    ...     def sign(self, key, block): return block
    >>> signer = StoreRsaSigner(Echo(), KeyRef("demo-issuer-rsa", 1), bytes(176))
    >>> signer, len(signer.private_op(bytes(176)))
    (StoreRsaSigner(demo-issuer-rsa@v1, 1408-bit), 176)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.crypto import pboc_certs
from pipeline.crypto.emv_certs import build_icc_certificate, verify_icc_certificate
from pipeline.crypto.sm2 import Sm2Verifier
from pipeline.errors import CertificateError, ConfigError, InvalidInputError

if TYPE_CHECKING:
    from pipeline.keys.model import KeyRef
    from pipeline.keys.store import KeyStore

__all__ = [
    "StoreRsaSigner",
    "pboc_issuer_verifier",
    "sign_emv_icc_certificate",
    "sign_pboc_icc_certificate",
    "verify_emv_icc_certificate",
    "verify_pboc_icc_certificate",
]


class StoreRsaSigner:
    """A :class:`~pipeline.crypto.rsa.RawRsaSigner` whose private operation runs in the store.

    ``private_op(block)`` is ``store.sign(key, block)``: the raw RSA private
    operation on a block of the modulus length (the store's contract).
    """

    __slots__ = ("_key", "_store", "modulus", "size_bytes")

    def __init__(self, store: KeyStore, key: KeyRef, modulus: bytes) -> None:
        self._store = store
        self._key = key
        self.modulus = bytes(modulus)
        self.size_bytes = len(modulus)

    def __repr__(self) -> str:
        return f"StoreRsaSigner({self._key}, {self.size_bytes * 8}-bit)"

    def private_op(self, block: bytes) -> bytes:
        """``block^d mod n`` computed by the key store (EMV Book 2 A2.1.2)."""
        result = self._store.sign(self._key, block)
        if len(result) != self.size_bytes:
            raise CertificateError(
                "issuer signature", f"store returned {len(result)} bytes, not {self.size_bytes}"
            )
        return result


def sign_emv_icc_certificate(
    signer: StoreRsaSigner,
    *,
    pan: str,
    expiry_mmyy: str,
    serial: bytes,
    icc_modulus: bytes,
    icc_exponent: bytes,
    static_data: bytes,
) -> tuple[bytes, bytes]:
    """ICC PK certificate (tag 9F46) and remainder (9F48) signed by the store (Book 2 Table 14)."""
    return build_icc_certificate(
        signer,
        signer.size_bytes,
        pan,
        expiry_mmyy,
        serial,
        icc_modulus,
        icc_exponent,
        static_data,
    )


def verify_emv_icc_certificate(
    cert: bytes,
    remainder: bytes,
    *,
    issuer_modulus: bytes,
    issuer_exponent: bytes,
    icc_modulus: bytes,
    icc_exponent: bytes,
    static_data: bytes,
    pan: str,
) -> None:
    """Self-check: the certificate recovers, its hash verifies and it certifies this card's key.

    Book 2 6.4 steps 1-8 with the issuer public key; raises CertificateError.
    """
    recovered = verify_icc_certificate(
        cert, issuer_modulus, issuer_exponent, remainder, icc_exponent, static_data, pan=pan
    )
    if recovered.modulus != icc_modulus:
        raise CertificateError("icc certificate", "certifies a key other than the card's")


def sign_pboc_icc_certificate(
    store: KeyStore,
    issuer_key: KeyRef,
    *,
    pan: str,
    expiry_mmyy: str,
    serial: bytes,
    icc_public_key: bytes,
    static_data: bytes,
) -> bytes:
    """PBOC ICC certificate format 14 (tag 9F46): body || SM2 signature by the store.

    The signature covers the body and the static data (DOMAIN.md 4).
    """
    body = pboc_certs.icc_certificate_body(pan, expiry_mmyy, serial, icc_public_key)
    signature = store.sign(issuer_key, body + static_data)
    return body + signature


def pboc_issuer_verifier(issuer_public_key: bytes) -> Sm2Verifier:
    """The reusable verifier for the self-check of every card's format-14 certificate.

    Build it once per preparer (per worker process): it validates the issuer
    key and computes its Z once, and holds a fixed-base table for the key
    (``Sm2Verifier(..., precompute=True)``, ~20 ms and ~2 MB once), which
    makes each card's check ~4x faster than verifying under the bare key.
    A key that is not an SM2 point is a batch-level ConfigError.

    Example:
        >>> from pipeline.crypto import sm2
        >>> pboc_issuer_verifier(sm2.generate_keypair()[1]).precomputed
        True
        >>> pboc_issuer_verifier(bytes(64))
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: issuer_public_key: point is not on the SM2 curve
    """
    try:
        return Sm2Verifier(issuer_public_key, precompute=True)
    except InvalidInputError as exc:
        raise ConfigError("issuer_public_key", exc.detail) from None


def verify_pboc_icc_certificate(
    cert: bytes,
    *,
    issuer_public_key: bytes | Sm2Verifier,
    icc_public_key: bytes,
    static_data: bytes,
    pan: str,
) -> None:
    """Self-check of a format-14 certificate under the issuer key (CertificateError).

    ``issuer_public_key`` is the 64-byte key or, per card in a batch, the
    verifier from :func:`pboc_issuer_verifier` built once.
    """
    recovered = pboc_certs.verify_pboc_icc_certificate(cert, issuer_public_key, static_data)
    if recovered.public_key != icc_public_key:
        raise CertificateError("icc certificate", "certifies a key other than the card's")
    if recovered.pan != pan:
        raise CertificateError("icc certificate pan", "differs from the card's PAN")
