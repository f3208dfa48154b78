"""Product profiles as frozen values: what a card of one product contains (EMV CPS, Book 3).

A :class:`ProductProfile` is loaded once from ``config/products/<id>.yaml``
(:func:`pipeline.profiles.load_product`) and is immutable and picklable, so
it can be shipped to worker processes.  It names:

* the keys by label (the engine resolves them to :class:`~pipeline.keys.model.KeyRef`
  at the start of a batch) and the per-card derivation method (EMV Book 2
  A1.4 Option A / B / C, or PBOC SM4);
* the card key sets and their DGIs (``8000``/``9000``, ``8001``/``9001`` ...),
  the KMC-derived key DGI, the ICC private key DGIs (``8201``..``8205`` for
  RSA CRT, or the SM2 DGI the chip vendor uses), the offline PIN DGIs;
* the CA public key (RID, index) that certified the issuer key;
* the records (SFI, record number, tags, ODA flag) from which the AFL,
  the static data to be authenticated and the record DGIs are built;
* constant data objects (``5F28``, ``9F07``, ``8C``/``8D``, ``8E``, IACs ...),
  the SELECT response (DGI ``9102``) and the GPO responses (``9104`` ...).

Example:
    >>> RecordTemplate(2, 1, (b"\\x5a",), oda=True).dgi == 0x0201
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.keys.model import DerivationMethod
from pipeline.keys.pool import DryPolicy

__all__ = [
    "CARD_TAGS",
    "CERTIFICATE_TAGS",
    "CaKeyId",
    "CertificateSpec",
    "DryPolicy",
    "GpoResponse",
    "IccKeyAlgorithm",
    "IccKeySource",
    "IccKeySpec",
    "KeySetSpec",
    "KmcSpec",
    "PinSpec",
    "ProductProfile",
    "RecordTemplate",
    "Scheme",
]


class Scheme(Enum):
    """Payment scheme family of a product: EMV RSA or PBOC SM."""

    EMV = "emv"
    PBOC = "pboc"


class IccKeyAlgorithm(Enum):
    """ICC key pair algorithm for offline data authentication."""

    RSA = "rsa"
    SM2 = "sm2"


class IccKeySource(Enum):
    """Where the ICC key pair comes from: generated per card, or a pre-generated pool."""

    INLINE = "inline"
    POOL = "pool"


#: Tags whose value the preparer computes from the card record, keys and certificates.
CARD_TAGS: dict[bytes, str] = {
    b"\x57": "track 2 equivalent data",
    b"\x5a": "application PAN",
    b"\x5f\x20": "cardholder name",
    b"\x5f\x24": "application expiration date",
    b"\x5f\x25": "application effective date",
    b"\x5f\x30": "service code",
    b"\x5f\x34": "PAN sequence number",
    b"\x82": "application interchange profile",
    b"\x9f\x4a": "SDA tag list",
}

#: Certificate data objects (issuer certificate from the key store, ICC certificate per card).
CERTIFICATE_TAGS: dict[bytes, str] = {
    b"\x8f": "CA public key index",
    b"\x90": "issuer public key certificate",
    b"\x92": "issuer public key remainder",
    b"\x9f\x32": "issuer public key exponent",
    b"\x9f\x46": "ICC public key certificate",
    b"\x9f\x47": "ICC public key exponent",
    b"\x9f\x48": "ICC public key remainder",
}

#: Tags an RSA-only product may name; a PBOC SM2 certificate has no remainder or exponent.
RSA_ONLY_TAGS: frozenset[bytes] = frozenset({b"\x92", b"\x9f\x32", b"\x9f\x47", b"\x9f\x48"})


@dataclass(frozen=True, slots=True)
class CaKeyId:
    """The CA public key that certified the issuer key: RID (5 bytes) and index (tag 8F)."""

    rid: bytes
    index: bytes


@dataclass(frozen=True, slots=True)
class KeySetSpec:
    """One set of card master keys (MK-AC, MK-SMI, MK-SMC) and its DGIs.

    ``dgi`` holds the three keys under the TK, concatenated; ``kcv_dgi`` their
    KCVs in clear (3 bytes each).  The IMK labels default to the profile's.
    """

    name: str
    dgi: int
    kcv_dgi: int
    imk_ac: str
    imk_smi: str
    imk_smc: str
    derivation: DerivationMethod


@dataclass(frozen=True, slots=True)
class KmcSpec:
    """GlobalPlatform card keys KENC/KMAC/KDEK from the KMC (DOMAIN.md 3).

    ``dgi`` holds KENC || KMAC || KDEK under the TK; ``kcv_dgi`` (optional)
    their KCVs.  Both numbers are bureau / chip specific.
    """

    key: str
    method: DerivationMethod
    dgi: int
    kcv_dgi: int | None


@dataclass(frozen=True, slots=True)
class IccKeySpec:
    """The ICC key pair: algorithm, size, exponent, source, private-key DGIs, dry-pool policy.

    RSA: ``dgis`` are the 5 CRT DGIs in the order ``q^-1 mod p, d mod (q-1),
    d mod (p-1), q, p`` (CPS 8201..8205).  SM2: one DGI for ``d``.
    ``pool_empty`` says what a card of a ``source: pool`` product does when
    the pool has no free entry: generate its pair inline (default) or fail
    the shard (:class:`~pipeline.keys.pool.DryPolicy`); the loader accepts it
    only with ``source: pool``.

    Example:
        >>> spec = IccKeySpec(IccKeyAlgorithm.SM2, None, None, IccKeySource.POOL, (0x8100,))
        >>> spec.pool_empty.value
        'inline'
    """

    algorithm: IccKeyAlgorithm
    bits: int | None
    exponent: int | None
    source: IccKeySource
    dgis: tuple[int, ...]
    pool_empty: DryPolicy = DryPolicy.INLINE


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """ICC certificate parameters: expiry policy (the card's own expiry)."""

    expiry: str = "card"


@dataclass(frozen=True, slots=True)
class PinSpec:
    """Offline PIN: ``dgi`` gets the reference PIN block under the TK, ``try_dgi`` the limit."""

    dgi: int
    try_dgi: int
    try_limit: int


@dataclass(frozen=True, slots=True)
class GpoResponse:
    """A GET PROCESSING OPTIONS response DGI: AIP (``82``) and the AFL (``94``)."""

    dgi: int
    aip: bytes


@dataclass(frozen=True, slots=True)
class RecordTemplate:
    """One record of the card: SFI, record number, its tags in order, ODA flag."""

    sfi: int
    record: int
    tags: tuple[bytes, ...]
    oda: bool = False

    @property
    def dgi(self) -> int:
        """The record DGI ``SFI || record`` (CPS 4.2)."""
        return (self.sfi << 8) | self.record


@dataclass(frozen=True, slots=True)
class ProductProfile:
    """A validated product profile (see the module docstring and docs/PROFILES.md).

    Mappings are stored as tuples of pairs so the value stays hashable and
    picklable; use :meth:`constant` to look one up.
    """

    id: str
    version: int
    scheme: Scheme
    description: str
    aid: bytes
    derivation: DerivationMethod
    tk: str
    issuer_key: str
    ca: CaKeyId
    key_sets: tuple[KeySetSpec, ...]
    kmc: KmcSpec | None
    icc_key: IccKeySpec
    certificate: CertificateSpec
    pin: PinSpec | None
    secret_dgis: tuple[tuple[str, int], ...]
    select_dgi: int
    select_tags: tuple[tuple[bytes, bytes], ...]
    aip: bytes
    afl: bytes
    sda_tag_list: bytes | None
    gpo: tuple[GpoResponse, ...]
    records: tuple[RecordTemplate, ...]
    constants: tuple[tuple[bytes, bytes], ...]
    source: str = ""

    def constant(self, tag: bytes) -> bytes | None:
        """The constant value of ``tag`` in this profile, or None.

        Example:
            >>> # profile.constant(b"\\x5f\\x28") -> b"\\x08\\x40"
        """
        for name, value in self.constants:
            if name == tag:
                return value
        return None

    @property
    def encrypted_dgis(self) -> frozenset[int]:
        """Every DGI id this product writes under the TK."""
        ids = {ks.dgi for ks in self.key_sets} | set(self.icc_key.dgis)
        ids |= {dgi for _, dgi in self.secret_dgis}
        if self.kmc is not None:
            ids.add(self.kmc.dgi)
        if self.pin is not None:
            ids.add(self.pin.dgi)
        return frozenset(ids)

    def key_labels(self) -> dict[str, str]:
        """Every key label the product uses, by role (for manifests and resolution)."""
        labels = {"tk": self.tk, "issuer": self.issuer_key}
        for ks in self.key_sets:
            labels[f"{ks.name}.imk_ac"] = ks.imk_ac
            labels[f"{ks.name}.imk_smi"] = ks.imk_smi
            labels[f"{ks.name}.imk_smc"] = ks.imk_smc
        if self.kmc is not None:
            labels["kmc"] = self.kmc.key
        return labels
