"""Masking of cardholder data for logs, reports and audit events.

PCI DSS 3.4 / DOMAIN.md section 2: a PAN is shown at most as its first six and
last four digits.

Example:
    >>> mask_pan("4761739001010119")
    '476173******0119'
"""

from __future__ import annotations

from pipeline.errors import InvalidInputError

_MIN_MASKABLE = 13


def mask_pan(pan: str) -> str:
    """Return ``pan`` with every digit but the first 6 and last 4 replaced by ``*``.

    A value too short to mask safely (under 13 characters) is fully masked.
    """
    if not isinstance(pan, str):
        raise InvalidInputError("pan", f"expected str, got {type(pan).__name__}")
    if len(pan) < _MIN_MASKABLE:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
