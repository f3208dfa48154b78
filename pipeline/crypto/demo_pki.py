"""TEST ONLY: a throw-away EMV RSA PKI (CA -> issuer) for tests and the demo.

NEVER use these keys for real cards: the CA private key is generated in this
process and held in clear.  Real issuer certificates come from the payment
scheme's CA; this module exists so that every chain the system produces in
tests and demos can be verified back to a CA public key (EMV Book 2 5.1,
Figure 2: CA -> issuer -> ICC).

The default RID ``A000000999`` and CA index ``99`` are made-up test values,
not a registered scheme key.

Example:
    >>> pki = generate_demo_pki(ca_bits=1024, issuer_bits=1024)
    >>> pki.label
    'TEST ONLY - demo EMV PKI, never for production or real cards'
    >>> pki.verify_issuer().issuer_identifier.hex().upper()
    '476173FF'
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pipeline.crypto.emv_certs import (
    CaPublicKey,
    IccCertificate,
    IssuerCertificate,
    build_issuer_certificate,
    capk_checksum,
    import_ca_public_key,
    verify_icc_certificate,
    verify_issuer_certificate,
)
from pipeline.crypto.rsa import RsaPrivateKey, RsaSigner, generate_rsa_key
from pipeline.errors import CertificateError

TEST_ONLY_LABEL = "TEST ONLY - demo EMV PKI, never for production or real cards"
DEMO_RID = bytes.fromhex("A000000999")
DEMO_CA_INDEX = b"\x99"


@dataclass(frozen=True, slots=True)
class DemoPki:
    """TEST ONLY: a CA key pair and an issuer key pair certified by it.

    The private keys are excluded from ``repr``.
    """

    label: str
    ca_key: RsaPrivateKey = field(repr=False)
    ca_public_key: CaPublicKey
    issuer_identifier: str
    issuer_key: RsaPrivateKey = field(repr=False)
    issuer_certificate: bytes
    issuer_remainder: bytes
    issuer_exponent: bytes
    expiry: str
    serial: bytes

    def issuer_signer(self) -> RsaSigner:
        """A signer for ICC certificates under the demo issuer key."""
        return RsaSigner(self.issuer_key)

    def verify_issuer(self) -> IssuerCertificate:
        """Verify the issuer certificate against the CA public key (Book 2 5.3)."""
        return verify_issuer_certificate(
            self.issuer_certificate,
            self.ca_public_key.modulus,
            self.ca_public_key.exponent,
            self.issuer_remainder,
            self.issuer_exponent,
        )

    def verify_icc(
        self, cert: bytes, remainder: bytes, icc_exponent: bytes, static_data: bytes
    ) -> IccCertificate:
        """Verify a whole chain CA -> issuer -> ICC certificate (Book 2 5.3 then 6.4)."""
        issuer = self.verify_issuer()
        return verify_icc_certificate(
            cert, issuer.modulus, issuer.exponent, remainder, icc_exponent, static_data
        )


def generate_demo_pki(
    ca_bits: int = 1984,
    issuer_bits: int = 1408,
    issuer_identifier: str = "476173",
    *,
    rid: bytes = DEMO_RID,
    ca_index: bytes = DEMO_CA_INDEX,
    expiry: str = "1230",
    ca_exponent: int = 3,
    issuer_exponent: int = 3,
    serial: bytes | None = None,
) -> DemoPki:
    """TEST ONLY: generate a CA key, an issuer key and the issuer certificate.

    The CA public key is imported through the checksum check and the issuer
    certificate is verified before the value is returned.
    """
    if issuer_bits > ca_bits:
        raise CertificateError(
            "demo pki lengths", f"issuer key {issuer_bits} bits exceeds CA key {ca_bits} bits"
        )
    ca_key = generate_rsa_key(ca_bits, ca_exponent)
    issuer_key = generate_rsa_key(issuer_bits, issuer_exponent)
    ca_public = import_ca_public_key(
        rid,
        ca_index,
        ca_key.modulus,
        ca_key.exponent_bytes,
        capk_checksum(rid, ca_index, ca_key.modulus, ca_key.exponent_bytes),
        expiry,
    )
    cert_serial = serial if serial is not None else secrets.token_bytes(3)
    cert, remainder = build_issuer_certificate(
        RsaSigner(ca_key),
        ca_key.size_bytes,
        issuer_identifier,
        expiry,
        cert_serial,
        issuer_key.modulus,
        issuer_key.exponent_bytes,
    )
    pki = DemoPki(
        label=TEST_ONLY_LABEL,
        ca_key=ca_key,
        ca_public_key=ca_public,
        issuer_identifier=issuer_identifier,
        issuer_key=issuer_key,
        issuer_certificate=cert,
        issuer_remainder=remainder,
        issuer_exponent=issuer_key.exponent_bytes,
        expiry=expiry,
        serial=cert_serial,
    )
    pki.verify_issuer()
    return pki
