"""Reject reason codes: stable, documented in docs/INPUT.md.

A bad record becomes a reject row carrying one of these codes (DESIGN.md
principle 5).  The member name is the mnemonic and the value the stable code;
``str(reason)`` gives both.  Codes R001..R070 are raised while parsing and
validating an input file (this package); R071 and above are raised at
prepare time by :mod:`pipeline.prep` (the key store decrypts, self-checks).

Example:
    >>> str(RejectReason.PAN_LUHN), RejectReason("R050").name
    ('R001 PAN_LUHN', 'DUPLICATE_CARD')
"""

from __future__ import annotations

from enum import Enum

__all__ = ["RejectReason"]


class RejectReason(Enum):
    """Why a record was rejected (value: the stable code)."""

    PAN_LUHN = "R001"
    PAN_LENGTH = "R002"
    PAN_NOT_DIGITS = "R003"
    PSN_FORMAT = "R004"
    EXPIRY_FORMAT = "R010"
    EXPIRY_PAST = "R011"
    EFFECTIVE_DATE = "R012"
    SERVICE_CODE = "R020"
    NAME_CHARSET = "R030"
    NAME_LENGTH = "R031"
    UNKNOWN_BIN = "R040"
    UNKNOWN_PRODUCT = "R041"
    DUPLICATE_CARD = "R050"
    FIELD_LENGTH = "R060"
    FIELD_MISSING = "R061"
    CHARSET = "R062"
    RECORD_TYPE = "R063"
    RECORD_LENGTH = "R064"
    FIELD_FORMAT = "R065"
    RECORD_SYNTAX = "R066"
    SENSITIVE_FORMAT = "R070"
    SENSITIVE_UNDECRYPTABLE = "R071"
    SELF_CHECK_CERT = "R080"
    SELF_CHECK_KCV = "R081"
    KEY_POOL_EMPTY = "R090"

    @property
    def code(self) -> str:
        """The stable code, e.g. ``"R001"``."""
        return self.value

    @property
    def stage(self) -> str:
        """``"validate"`` for codes this package raises, ``"prepare"`` for the rest."""
        return "validate" if self.value <= "R070" else "prepare"

    def __str__(self) -> str:
        return f"{self.value} {self.name}"
