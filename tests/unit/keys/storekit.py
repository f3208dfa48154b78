"""Helpers for the key-store tests (plain functions; no shared conftest)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore

HMK = bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2)


@dataclass
class FakeClock:
    """An injectable clock that tests move forward by hand."""

    now: datetime = field(default_factory=lambda: datetime(2025, 1, 1, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def new_store(tmp_path: Path, clock: FakeClock | None = None, hmk: bytes = HMK) -> SoftKeyStore:
    """A fresh empty store (components-style HMK) with its audit key."""
    return SoftKeyStore.create(
        tmp_path / f"keys-{secrets.token_hex(4)}.db",
        hmk,
        actor="officer-1",
        hmk_custodians=("cust-a", "cust-b"),
        clock=clock or FakeClock(),
    )


def tk_imk_store(tmp_path: Path, clock: FakeClock | None = None) -> SoftKeyStore:
    """:func:`new_store` plus an active 3DES TK (``tk``, K0) and IMK-AC (``imk``, E0)."""
    s = new_store(tmp_path, clock)
    s.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    s.generate("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo", actor="o")
    return s
