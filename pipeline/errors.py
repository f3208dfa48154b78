"""The one exception hierarchy of cardprep.

Every error the project raises derives from :class:`CardprepError`.  Messages
name the field and the offending *non-secret* value (a label, a length, a
header field, a masked PAN), never key material, PINs, CVVs or full PANs.

Record-level problems are values (reject rows), not exceptions; these
exceptions are for the batch level and for programming errors at API edges.

Example:
    >>> try:
    ...     raise InvalidInputError("pan", "must be 12..19 digits, got 5 characters")
    ... except CardprepError as exc:
    ...     print(exc)
    pan: must be 12..19 digits, got 5 characters
"""

from __future__ import annotations


class CardprepError(Exception):
    """Root of every cardprep error.

    ``field`` names what was wrong (an argument, a header field, a key label);
    ``detail`` says why, quoting only non-secret values.
    """

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}")


# --- cryptographic primitives -------------------------------------------------


class CryptoError(CardprepError):
    """A primitive was given unusable input or detected a failed check."""


class InvalidInputError(CryptoError):
    """An argument has the wrong type, length or format (e.g. a non-digit PAN)."""


class KeyLengthError(InvalidInputError):
    """A key has a length the algorithm does not accept."""


class PaddingError(CryptoError):
    """Padding is missing or malformed after decryption."""


class MacError(CryptoError):
    """A MAC or cryptogram did not verify."""


class KeyBlockError(CryptoError):
    """A TR-31 / X9.143 key block is malformed, weak or fails its MAC."""


class KeyBlockHeaderError(KeyBlockError):
    """A key block header field is malformed or unsupported."""


class KeyBlockMacError(KeyBlockError, MacError):
    """A key block's MAC does not verify (wrong KBPK or tampering)."""


class KeyBlockStrengthError(KeyBlockError):
    """The key block protection key is weaker than the key it wraps."""


class CertificateError(CryptoError):
    """A certificate fails recovery, framing, hash or length rules."""


class SignatureError(CryptoError):
    """A signature does not verify."""


# --- keys, ceremonies, audit --------------------------------------------------


class KeyStoreError(CardprepError):
    """A key store refused or failed an operation."""


class KeyNotFoundError(KeyStoreError):
    """No key with this label/version exists."""


class KeyUsageError(KeyStoreError):
    """An operation is not permitted for the key's usage or exportability."""


class KeyStateError(KeyStoreError):
    """The key's lifecycle state forbids the operation."""


class CapabilityError(KeyStoreError):
    """The backend (e.g. an HSM token) cannot perform the operation."""


class CeremonyError(KeyStoreError):
    """A key ceremony rule (dual control, split knowledge, KCV) was violated."""


class CustodianError(CeremonyError):
    """A custodian is unknown, not eligible or not allowed to act."""


class AuditError(CardprepError):
    """The audit trail cannot be written or fails verification."""


# --- configuration, input, output ---------------------------------------------


class ConfigError(CardprepError):
    """A configuration file (layout, product, issuer, settings) is invalid."""


class PreparationError(CardprepError):
    """A card's data cannot be built (record template, static data, DGI rules)."""


class InputFileError(CardprepError):
    """A batch-level problem with an issuer input file (header, trailer, totals)."""


class ReconciliationError(CardprepError):
    """Records in != prepared + rejected: the batch must not publish."""


class PublishError(CardprepError):
    """A batch could not be published, or was already published."""


class VerificationError(CardprepError):
    """A published batch fails independent verification."""


class BatchPurgedError(VerificationError):
    """The batch was purged by retention: its outputs are gone on purpose.

    Raised by verification only when the ``purged.json`` tombstone is backed
    by a ``retention.purge`` event in the audit trail (the detail names when
    and which event), so that it is told apart from files gone missing.
    """


class InputFileCheckError(InputFileError):
    """An input file failed one named batch-level check (empty file, BOM, trailer, totals).

    ``check`` is a stable identifier (``"empty_file"``, ``"count"``, ``"hash_total"``
    ...; docs/INPUT.md lists them) so that callers and tests need not parse messages.
    """

    def __init__(self, path: str, check: str, detail: str) -> None:
        self.path = path
        self.check = check
        super().__init__(f"{path} [{check}]", detail)


class BatchLockedError(PublishError):
    """Another run holds the batch (or shard) lock: this run refuses or gave up waiting."""


class KeyPoolError(KeyStoreError):
    """The ICC key pool refused or failed an operation (bad entry, wrong storage key)."""


class KeyPoolEmptyError(KeyPoolError):
    """The ICC key pool has no free entry for the asked spec and the profile says fail."""
