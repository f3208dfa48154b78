"""Usage, mode-of-use, state, exportability and strength rules as data.

Three tables decide whether a key may take part in an operation:

* :data:`PERMITTED_USAGES` — operation -> the TR-31 usages allowed
  (X9.143 Table 2; PCI PIN Security Requirement 19: a key has one purpose).
* :data:`MODE_DIRECTIONS` — TR-31 mode of use (X9.143 Table 4) -> the
  directions (encrypt, decrypt, sign, ...) it allows.
* :data:`STATE_KINDS` — lifecycle state (NIST SP 800-57 Pt 1 section 7) ->
  the kinds of work it allows: new protection, processing of existing
  protected data (decrypt / unwrap / verify), or information only.

:func:`check` applies all three and raises with a message naming the key's
label, usage (or state / mode) and the refused operation.

Example:
    >>> Operation.ENCRYPT_DATA in permitted_operations(KeyUsage.K0)
    False
    >>> sorted(u.value for u in PERMITTED_USAGES[Operation.DERIVE_CARD_KEY])
    ['E0', 'E1', 'E2']
"""

from __future__ import annotations

from enum import Enum

from pipeline.errors import KeyStateError, KeyUsageError
from pipeline.keys.model import Exportability, KeyRecord, KeyState, KeyUsage

__all__ = [
    "MODE_DIRECTIONS",
    "PERMITTED_USAGES",
    "STATE_KINDS",
    "Direction",
    "Operation",
    "WorkKind",
    "check",
    "check_exportable",
    "check_strength",
    "permitted_operations",
]


class Direction(Enum):
    """What an operation does with the key, matched against the mode of use."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    MAC_GENERATE = "mac-generate"
    MAC_VERIFY = "mac-verify"
    DERIVE = "derive"
    NONE = "none"  # metadata-like use (KCV, being exported)


class WorkKind(Enum):
    """New protection, processing of already-protected data, or information only."""

    PROTECT = "protect"
    PROCESS = "process"
    INFO = "info"


class Operation(Enum):
    """Every way a stored key can be used (value: the name used in messages)."""

    DERIVE_CARD_KEY = "derive"
    DIVERSIFY = "diversify"
    WRAP_OUTPUT = "wrap"  # encrypt card keys / ICC private keys / secret DGIs under the TK
    TRANSLATE_FROM = "translate-from"
    TRANSLATE_TO = "translate-to"
    WRAP_KEY_BLOCK = "wrap-key-block"  # as the KBPK of an export
    UNWRAP_KEY_BLOCK = "unwrap-key-block"  # as the KBPK of an import
    EXPORT = "export"  # as the key being exported
    SIGN = "sign"
    MAC = "mac"
    VERIFY_MAC = "verify-mac"
    PAN_TOKEN = "pan-token"  # noqa: S105 (an operation name)
    ENCRYPT_DATA = "encrypt-data"
    DECRYPT_DATA = "decrypt-data"
    KCV = "kcv"
    CHECK_WRAPPED = "check-wrapped"  # KCV of a key held under this key (no clear output)

    @property
    def direction(self) -> Direction:
        """Direction checked against the key's mode of use."""
        return _OPERATION_TRAITS[self][0]

    @property
    def kind(self) -> WorkKind:
        """Kind of work checked against the key's state."""
        return _OPERATION_TRAITS[self][1]


_OPERATION_TRAITS: dict[Operation, tuple[Direction, WorkKind]] = {
    Operation.DERIVE_CARD_KEY: (Direction.DERIVE, WorkKind.PROTECT),
    Operation.DIVERSIFY: (Direction.DERIVE, WorkKind.PROTECT),
    Operation.WRAP_OUTPUT: (Direction.ENCRYPT, WorkKind.PROTECT),
    Operation.TRANSLATE_FROM: (Direction.DECRYPT, WorkKind.PROCESS),
    Operation.TRANSLATE_TO: (Direction.ENCRYPT, WorkKind.PROTECT),
    Operation.WRAP_KEY_BLOCK: (Direction.ENCRYPT, WorkKind.PROTECT),
    Operation.UNWRAP_KEY_BLOCK: (Direction.DECRYPT, WorkKind.PROCESS),
    Operation.EXPORT: (Direction.NONE, WorkKind.PROTECT),
    Operation.SIGN: (Direction.SIGN, WorkKind.PROTECT),
    Operation.MAC: (Direction.MAC_GENERATE, WorkKind.PROTECT),
    Operation.VERIFY_MAC: (Direction.MAC_VERIFY, WorkKind.PROCESS),
    Operation.PAN_TOKEN: (Direction.MAC_GENERATE, WorkKind.PROTECT),
    Operation.ENCRYPT_DATA: (Direction.ENCRYPT, WorkKind.PROTECT),
    Operation.DECRYPT_DATA: (Direction.DECRYPT, WorkKind.PROCESS),
    Operation.KCV: (Direction.NONE, WorkKind.INFO),
    Operation.CHECK_WRAPPED: (Direction.DECRYPT, WorkKind.PROCESS),
}

_ALL_BUT_HMK = frozenset(KeyUsage) - {KeyUsage.HM}

#: Operation -> TR-31 usages allowed to perform it.  The one source of truth.
#: K0 covers both an issuer KEK and a bureau TK (X9.143 "key encryption or
#: wrapping"); the manifest MAC under a TK-derived key (DESIGN.md step 5)
#: is why K0 may MAC.  The HMK (HM) does nothing through this table: the
#: backend uses it internally to wrap key blocks at rest.
PERMITTED_USAGES: dict[Operation, frozenset[KeyUsage]] = {
    Operation.DERIVE_CARD_KEY: frozenset({KeyUsage.E0, KeyUsage.E1, KeyUsage.E2}),
    Operation.DIVERSIFY: frozenset({KeyUsage.E5}),
    Operation.WRAP_OUTPUT: frozenset({KeyUsage.K0}),
    Operation.TRANSLATE_FROM: frozenset({KeyUsage.K0}),
    Operation.TRANSLATE_TO: frozenset({KeyUsage.K0}),
    Operation.WRAP_KEY_BLOCK: frozenset({KeyUsage.K0, KeyUsage.K1}),
    Operation.UNWRAP_KEY_BLOCK: frozenset({KeyUsage.K0, KeyUsage.K1}),
    Operation.EXPORT: _ALL_BUT_HMK,
    Operation.SIGN: frozenset({KeyUsage.S0}),
    Operation.MAC: frozenset({KeyUsage.M6, KeyUsage.K0}),
    Operation.VERIFY_MAC: frozenset({KeyUsage.M6, KeyUsage.K0}),
    Operation.PAN_TOKEN: frozenset({KeyUsage.M7}),
    Operation.ENCRYPT_DATA: frozenset({KeyUsage.D0}),
    Operation.DECRYPT_DATA: frozenset({KeyUsage.D0}),
    Operation.KCV: _ALL_BUT_HMK,
    Operation.CHECK_WRAPPED: frozenset({KeyUsage.K0}),
}

_D = Direction
#: TR-31 mode of use -> allowed directions (X9.143 Table 4).  ``NONE``
#: (KCV, being exported) is always allowed.
MODE_DIRECTIONS: dict[str, frozenset[Direction]] = {
    "N": frozenset(Direction),
    "B": frozenset({_D.ENCRYPT, _D.DECRYPT, _D.NONE}),
    "E": frozenset({_D.ENCRYPT, _D.NONE}),
    "D": frozenset({_D.DECRYPT, _D.NONE}),
    "C": frozenset({_D.MAC_GENERATE, _D.MAC_VERIFY, _D.NONE}),
    "G": frozenset({_D.MAC_GENERATE, _D.NONE}),
    "V": frozenset({_D.MAC_VERIFY, _D.NONE}),
    "S": frozenset({_D.SIGN, _D.NONE}),
    "T": frozenset({_D.SIGN, _D.DECRYPT, _D.NONE}),
    "X": frozenset({_D.DERIVE, _D.NONE}),
}

_K = WorkKind
#: Lifecycle state -> kinds of work allowed.  DEACTIVATED = superseded by a
#: rotation: processes existing data only.  DESTROYED: nothing (no key left).
STATE_KINDS: dict[KeyState, frozenset[WorkKind]] = {
    KeyState.PRE_ACTIVE: frozenset({_K.INFO}),
    KeyState.ACTIVE: frozenset({_K.PROTECT, _K.PROCESS, _K.INFO}),
    KeyState.DEACTIVATED: frozenset({_K.PROCESS, _K.INFO}),
    KeyState.SUSPENDED: frozenset({_K.INFO}),
    KeyState.RETIRED: frozenset({_K.INFO}),
    KeyState.DESTROY_PENDING: frozenset({_K.INFO}),
    KeyState.DESTROYED: frozenset(),
}


def permitted_operations(usage: KeyUsage) -> frozenset[Operation]:
    """Operations a key of ``usage`` may perform (inverse view of the table).

    Example:
        >>> sorted(op.value for op in permitted_operations(KeyUsage.S0))
        ['export', 'kcv', 'sign']
    """
    return frozenset(op for op, usages in PERMITTED_USAGES.items() if usage in usages)


def check(record: KeyRecord, operation: Operation) -> None:
    """Refuse ``operation`` on ``record`` unless usage, mode of use and state allow it.

    Raises :class:`~pipeline.errors.KeyUsageError` (usage / mode) or
    :class:`~pipeline.errors.KeyStateError` (state); the message names the
    label@version, the usage or state, and the operation.

    Example:
        >>> from pipeline.keys.model import KeyRef  # doctest: +SKIP
        >>> check(kek_record, Operation.ENCRYPT_DATA)  # doctest: +SKIP
        Traceback (most recent call last):
        pipeline.errors.KeyUsageError: demo-kek@v1: usage K0 does not permit encrypt-data
    """
    name = str(record.ref)
    if record.usage not in PERMITTED_USAGES[operation]:
        raise KeyUsageError(name, f"usage {record.usage.value} does not permit {operation.value}")
    directions = MODE_DIRECTIONS.get(record.mode_of_use, frozenset())
    if operation.direction not in directions:
        raise KeyUsageError(
            name,
            f"usage {record.usage.value} mode of use {record.mode_of_use!r} "
            f"does not permit {operation.value}",
        )
    if operation.kind not in STATE_KINDS[record.state]:
        raise KeyStateError(
            name,
            f"state {record.state.value} (usage {record.usage.value}) "
            f"does not permit {operation.value}",
        )


def check_exportable(record: KeyRecord) -> None:
    """Refuse to let a non-exportable (N) or sensitive (S) key leave (X9.143 Table 6).

    Example:
        >>> check_exportable(non_exportable_record)  # doctest: +SKIP
        Traceback (most recent call last):
        pipeline.errors.KeyUsageError: demo-imk-ac@v1: usage E0 exportability N ... export
    """
    if record.exportability is not Exportability.E:
        raise KeyUsageError(
            str(record.ref),
            f"usage {record.usage.value} exportability {record.exportability.value} "
            f"does not permit {Operation.EXPORT.value}",
        )


def check_strength(
    wrapping: KeyRecord, wrapped: str, wrapped_bits: int, operation: Operation
) -> None:
    """Refuse protecting a key of ``wrapped_bits`` strength under a weaker key.

    PCI PIN Security Requirement 18-3 / NIST SP 800-57 Pt 1 section 5.6.1:
    a key is protected only by a key of equal or greater strength.

    Example:
        >>> check_strength(tdes2_kbpk, "aes@v1", 256, Operation.WRAP_KEY_BLOCK)  # doctest: +SKIP
        Traceback (most recent call last):
        pipeline.errors.KeyUsageError: kbpk@v1: usage K1 key of 80-bit strength is weaker ...
    """
    if wrapping.strength_bits < wrapped_bits:
        raise KeyUsageError(
            str(wrapping.ref),
            f"usage {wrapping.usage.value} key of {wrapping.strength_bits}-bit strength is "
            f"weaker than {wrapped} ({wrapped_bits}-bit): {operation.value} refused",
        )
