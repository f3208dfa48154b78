"""The key model: pure values that name, describe and bind keys (no I/O).

Outside a key-store backend the system holds only a :class:`KeyRef`
(label + version) and, where it needs to describe a key, a :class:`KeyRecord`
(metadata: algorithm, TR-31 usage, state, KCV ... never key bytes).

References:
    * ANSI X9.143-2022 / ASC X9 TR-31:2018 header fields: key usage (5.1.2,
      Table 2), algorithm (Table 3), mode of use (Table 4), exportability
      (Table 6).
    * NIST SP 800-57 Part 1 Rev. 5, Table 2 (comparable security strengths)
      and section 7 (key states: pre-activation, active, suspended,
      deactivated, compromised, destroyed).
    * DOMAIN.md section 2 (the key hierarchy HMK -> KEK / TK / IMK / KMC /
      issuer key pair).

Example:
    >>> ref = KeyRef("demo-imk-ac", 3)
    >>> str(ref)
    'demo-imk-ac@v3'
    >>> KeyRef.parse("demo-imk-ac@v3") == ref
    True
    >>> KeyAlgorithm.TDES2.strength_bits()
    80
    >>> KeyAlgorithm.RSA.strength_bits(1408)
    80
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from pipeline.errors import InvalidInputError

__all__ = [
    "DerivationMethod",
    "Exportability",
    "IccKeyPair",
    "IssuerCertificateRecord",
    "KeyAlgorithm",
    "KeyRecord",
    "KeyRef",
    "KeyRole",
    "KeyState",
    "KeyUsage",
    "WrappedKey",
    "rsa_strength_bits",
]

# NIST SP 800-57 Part 1 Rev. 5, Table 2: (minimum modulus bits, strength bits).
_RSA_STRENGTH: tuple[tuple[int, int], ...] = (
    (15360, 256),
    (7680, 192),
    (3072, 128),
    (2048, 112),
    (1024, 80),
)


def rsa_strength_bits(bits: int) -> int:
    """Security strength of an RSA modulus of ``bits`` bits (SP 800-57 Table 2).

    Moduli between table rows get the strength of the row below (a 1408-bit
    issuer key is rated 80 bits, like RSA-1024).  Under 1024 bits: 0.

    Example:
        >>> rsa_strength_bits(1984), rsa_strength_bits(2048), rsa_strength_bits(512)
        (80, 112, 0)
    """
    for minimum, strength in _RSA_STRENGTH:
        if bits >= minimum:
            return strength
    return 0


class KeyAlgorithm(Enum):
    """Key algorithm and (for symmetric keys) length.

    Example:
        >>> KeyAlgorithm.AES256.key_length, KeyAlgorithm.RSA.key_length
        (32, None)
        >>> KeyAlgorithm("tdes2").tr31_algorithm
        'T'
    """

    TDES2 = "tdes2"
    TDES3 = "tdes3"
    AES128 = "aes128"
    AES192 = "aes192"
    AES256 = "aes256"
    SM4 = "sm4"
    RSA = "rsa"
    SM2 = "sm2"

    @property
    def key_length(self) -> int | None:
        """Clear key length in bytes for symmetric keys, ``None`` for key pairs."""
        return _KEY_LENGTH[self]

    @property
    def is_symmetric(self) -> bool:
        """True for block-cipher keys (3DES, AES, SM4)."""
        return self not in (KeyAlgorithm.RSA, KeyAlgorithm.SM2)

    @property
    def tr31_algorithm(self) -> str:
        """TR-31 header algorithm character (X9.143 Table 3).

        SM4 has no code in X9.143; this project stores it under the
        proprietary numeric code ``"4"`` (numeric values are reserved for
        proprietary use) inside key blocks that never leave the soft store.
        """
        return _TR31_ALGORITHM[self]

    def strength_bits(self, bits: int | None = None) -> int:
        """Comparable security strength (NIST SP 800-57 Part 1 Table 2).

        TDES2 80, TDES3 112, AES-n n, SM4 128, SM2 128 (256-bit curve),
        RSA from the modulus size ``bits`` (required for RSA).

        Example:
            >>> KeyAlgorithm.SM4.strength_bits(), KeyAlgorithm.RSA.strength_bits(3072)
            (128, 128)
        """
        if self is KeyAlgorithm.RSA:
            if bits is None:
                raise InvalidInputError("bits", "RSA strength needs the modulus size")
            return rsa_strength_bits(bits)
        return _STRENGTH[self]

    @classmethod
    def from_config(cls, name: str, key_length: int) -> KeyAlgorithm:
        """Map a config name (``tdes``, ``aes``, ``sm4``) and a byte length to a member.

        Example:
            >>> KeyAlgorithm.from_config("tdes", 16)
            <KeyAlgorithm.TDES2: 'tdes2'>
        """
        key = (name.lower(), key_length)
        table = {
            ("tdes", 16): cls.TDES2,
            ("tdes", 24): cls.TDES3,
            ("aes", 16): cls.AES128,
            ("aes", 24): cls.AES192,
            ("aes", 32): cls.AES256,
            ("sm4", 16): cls.SM4,
        }
        if key in table:
            return table[key]
        try:
            return cls(name.lower())
        except ValueError:
            raise InvalidInputError(
                "algorithm", f"unknown algorithm {name!r} for a {key_length}-byte key"
            ) from None


_KEY_LENGTH: dict[KeyAlgorithm, int | None] = {
    KeyAlgorithm.TDES2: 16,
    KeyAlgorithm.TDES3: 24,
    KeyAlgorithm.AES128: 16,
    KeyAlgorithm.AES192: 24,
    KeyAlgorithm.AES256: 32,
    KeyAlgorithm.SM4: 16,
    KeyAlgorithm.RSA: None,
    KeyAlgorithm.SM2: None,
}

_STRENGTH: dict[KeyAlgorithm, int] = {
    KeyAlgorithm.TDES2: 80,
    KeyAlgorithm.TDES3: 112,
    KeyAlgorithm.AES128: 128,
    KeyAlgorithm.AES192: 192,
    KeyAlgorithm.AES256: 256,
    KeyAlgorithm.SM4: 128,
    KeyAlgorithm.SM2: 128,
}

_TR31_ALGORITHM: dict[KeyAlgorithm, str] = {
    KeyAlgorithm.TDES2: "T",
    KeyAlgorithm.TDES3: "T",
    KeyAlgorithm.AES128: "A",
    KeyAlgorithm.AES192: "A",
    KeyAlgorithm.AES256: "A",
    KeyAlgorithm.SM4: "4",
    KeyAlgorithm.RSA: "R",
    KeyAlgorithm.SM2: "E",
}


class KeyUsage(Enum):
    """TR-31 key usage (X9.143 Table 2) binding what a key may do.

    ``HM`` is internal to this project (the host master key; never exported,
    never in a key block).  The permission table that maps a usage to the
    operations it allows is :mod:`pipeline.keys.usage`.
    """

    K0 = "K0"  # key encryption / wrapping (issuer KEK, bureau TK)
    K1 = "K1"  # TR-31 key block protection key (KBPK)
    D0 = "D0"  # symmetric data encryption (cardholder data at rest)
    E0 = "E0"  # EMV/chip issuer master key: application cryptograms (IMK-AC)
    E1 = "E1"  # EMV/chip issuer master key: SM for confidentiality (IMK-SMC)
    E2 = "E2"  # EMV/chip issuer master key: SM for integrity (IMK-SMI)
    E5 = "E5"  # EMV/chip issuer master key: card personalisation (KMC)
    S0 = "S0"  # asymmetric key pair for digital signature (issuer / CA key)
    M6 = "M6"  # ISO 9797-1:2011 MAC algorithm 5 (CMAC): audit / manifest MAC
    M7 = "M7"  # HMAC: keyed PAN tokens
    HM = "HM"  # host master key (internal, never exported)


class KeyRole(Enum):
    """The key's place in the hierarchy of DOMAIN.md section 2."""

    HMK = "hmk"
    KEK = "kek"
    TK = "tk"
    KBPK = "kbpk"
    IMK_AC = "imk-ac"
    IMK_SMI = "imk-smi"
    IMK_SMC = "imk-smc"
    KMC = "kmc"
    ISSUER_SIGNING = "issuer-signing"
    CA_SIGNING = "ca-signing"  # demo only: the test CA
    AUDIT_MAC = "audit-mac"
    PAN_TOKEN = "pan-token"  # noqa: S105 (a role name, not a secret)
    DATA = "data"


class KeyState(Enum):
    """Lifecycle state (NIST SP 800-57 Part 1 section 7).

    ``DEACTIVATED`` is the state of a version superseded by a rotation: it
    may still process (decrypt, unwrap, verify) but never protect new data.
    """

    PRE_ACTIVE = "pre-active"
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    SUSPENDED = "suspended"
    RETIRED = "retired"
    DESTROY_PENDING = "destroy-pending"
    DESTROYED = "destroyed"


class Exportability(Enum):
    """TR-31 exportability byte (X9.143 Table 6)."""

    E = "E"  # exportable under a KEK/KBPK that is at least as strong
    N = "N"  # non-exportable
    S = "S"  # sensitive: exportable only in a non-key-block form (refused here)


class TranslateCheck(Enum):
    """What the backend checks in the clear, inside itself, while translating.

    A field encrypted under the wrong KEK, or corrupted, decrypts to noise;
    these checks turn that into a clear error instead of shipping noise.
    ``PIN_ISO0`` checks an ISO 9564-1 format 0 PIN block against the PAN
    (control nibble 0, PIN length 4..12, PIN digits 0..9, fill F);
    ``PIN_ISO0_TO_ISO2`` checks it likewise and re-encodes it as the format 2
    block the card holds in DGI 8010 (EMV CPS 1.1).

    Example:
        >>> TranslateCheck("iso9797-m2")
        <TranslateCheck.ISO9797_M2: 'iso9797-m2'>
    """

    NONE = "none"
    ISO9797_M2 = "iso9797-m2"
    PIN_ISO0 = "pin-iso0"
    PIN_ISO0_TO_ISO2 = "pin-iso0-to-iso2"


class DerivationMethod(Enum):
    """Per-card key derivation (EMV Book 2 A1.4) and GP KMC diversification.

    Example:
        >>> DerivationMethod("A"), DerivationMethod("emv")
        (<DerivationMethod.OPTION_A: 'A'>, <DerivationMethod.EMV_CPS: 'emv'>)
    """

    OPTION_A = "A"
    OPTION_B = "B"
    AES = "C"
    SM4 = "sm4"
    EMV_CPS = "emv"
    VISA2 = "visa2"
    KDF3 = "kdf3"

    @property
    def is_gp(self) -> bool:
        """True for GlobalPlatform KMC diversification methods."""
        return self in (DerivationMethod.EMV_CPS, DerivationMethod.VISA2, DerivationMethod.KDF3)


_REF_RE = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9._:-]{0,63})@v(?P<version>[1-9][0-9]{0,5})$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def check_label(label: str) -> str:
    """Validate a key label (1..64 of ``A-Z a-z 0-9 . _ : -``, no ``@``).

    Example:
        >>> check_label("demo-tk")
        'demo-tk'
    """
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise InvalidInputError("label", f"invalid key label {label!r}")
    return label


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A reference to one version of a key: all the rest of the system holds.

    Example:
        >>> str(KeyRef("demo-tk", 1))
        'demo-tk@v1'
    """

    label: str
    version: int

    def __post_init__(self) -> None:
        check_label(self.label)
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise InvalidInputError("version", f"must be a positive integer, got {self.version!r}")

    def __str__(self) -> str:
        return f"{self.label}@v{self.version}"

    @classmethod
    def parse(cls, text: str) -> KeyRef:
        """Parse ``"label@vN"``.

        Example:
            >>> KeyRef.parse("demo-kek@v2")
            KeyRef(label='demo-kek', version=2)
        """
        match = _REF_RE.match(text)
        if match is None:
            raise InvalidInputError("key_ref", f"expected 'label@vN', got {text!r}")
        return cls(match["label"], int(match["version"]))


@dataclass(frozen=True, slots=True)
class IssuerCertificateRecord:
    """The scheme CA's certificate over an issuer public key (EMV Book 2 5.3 / PBOC format 12).

    ``certificate`` is tag 90, ``remainder`` tag 92 (empty for SM2),
    ``exponent`` tag 9F32 (empty for SM2), ``ca_rid`` + ``ca_index`` name the
    CA public key (tag 8F), ``expiry`` is MMYY and ``serial`` 3 bytes hex.
    """

    certificate: bytes
    remainder: bytes
    exponent: bytes
    ca_rid: str
    ca_index: str
    expiry: str
    serial: str
    format: str  # "emv-02" or "pboc-12"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Everything known about one key version except its value.

    Timestamps are ISO-8601 UTC strings.  ``public_key`` is the RSA modulus
    or the SM2 point ``x || y`` (64 bytes); ``public_exponent`` is RSA only.
    """

    ref: KeyRef
    algorithm: KeyAlgorithm
    bits: int
    usage: KeyUsage
    role: KeyRole
    mode_of_use: str
    exportability: Exportability
    owner: str
    state: KeyState
    kcv: bytes
    kcv_method: str
    custodians: tuple[str, ...]
    created_at: str
    activated_at: str | None
    updated_at: str
    destroy_after: str | None = None
    destroyed_at: str | None = None
    public_key: bytes | None = None
    public_exponent: bytes | None = None
    certificate: IssuerCertificateRecord | None = None

    @property
    def label(self) -> str:
        """The key's label (``ref.label``)."""
        return self.ref.label

    @property
    def version(self) -> int:
        """The key's version (``ref.version``)."""
        return self.ref.version

    @property
    def strength_bits(self) -> int:
        """Security strength of this key (SP 800-57 Table 2)."""
        return self.algorithm.strength_bits(self.bits)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A card key encrypted under a transport key (ECB in the TK's algorithm).

    Example: a 2-key 3DES MK-AC is 16 bytes of ``ciphertext`` under the TK,
    with the clear key's ``kcv`` (3 bytes) and its ``kcv_method``.
    """

    ciphertext: bytes
    kcv: bytes
    kcv_method: str
    wrapped_under: KeyRef


@dataclass(frozen=True, slots=True)
class IccKeyPair:
    """An ICC key pair whose private part exists only under the TK.

    RSA: ``private_under_tk`` holds the CRT components in DGI 8201..8205
    order (q^-1 mod p, d mod (q-1), d mod (p-1), q, p), each encrypted
    under the TK (ECB; ISO 9797-1 padding method 2 only where not block
    aligned).  SM2: ``(d under TK,)``, ``public_key`` is ``x || y`` and
    ``public_exponent`` is empty.
    """

    algorithm: str
    public_key: bytes
    public_exponent: bytes
    private_under_tk: tuple[bytes, ...]
    wrapped_under: KeyRef
