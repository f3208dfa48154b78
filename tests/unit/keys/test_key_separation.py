"""One key, one purpose: a key value already in the soft store is not entered again.

QA found that two components combining to the demo TK's value were accepted as
a new IMK (``qa-copy-of-tk``, usage E0): the same key then served as a
transport key and as an issuer master key.  The store now refuses an entered
key (components, key block, test value) whose value a stored key holds, under
any label or usage, and names the stored key, never the value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.crypto.kcv import kcv
from pipeline.errors import KeyStoreError
from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import FakeClock, new_store

VALUE = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
OTHER = bytes.fromhex("1111111111111111AAAAAAAAAAAAAAAA")


def _enter(store: SoftKeyStore, label: str, value: bytes, usage: KeyUsage, role: KeyRole,
           split: bytes = bytes(16)) -> str:  # fmt: skip
    """Enter ``value`` as two XOR components (``value ^ split``, ``split``)."""
    first = bytes(a ^ b for a, b in zip(value, split, strict=True))
    rec = store.import_components(
        label, KeyAlgorithm.TDES2, usage, role, "issuer:demo", [first, split], kcv(value),
        custodians=["cust-a", "cust-b"], actor="officer-1",
    )  # fmt: skip
    return str(rec.ref)


def test_the_same_value_under_another_label_and_usage_is_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path, FakeClock())
    _enter(store, "tk", VALUE, KeyUsage.K0, KeyRole.TK)
    before = [str(r.ref) for r in store.list()]
    with pytest.raises(KeyStoreError) as caught:  # other components, same key
        _enter(store, "copy-of-tk", VALUE, KeyUsage.E0, KeyRole.IMK_AC, split=OTHER)
    assert caught.value.field == "copy-of-tk@v1"
    assert "already stored as tk@v1 (usage K0, active): one key, one purpose" in caught.value.detail
    assert VALUE.hex().upper() not in str(caught.value).upper()
    assert [str(r.ref) for r in store.list()] == before  # nothing stored
    assert store.audit_trail.verify().ok


def test_the_same_value_as_a_new_version_of_its_own_label_is_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path, FakeClock())
    _enter(store, "kek", VALUE, KeyUsage.K0, KeyRole.KEK)
    with pytest.raises(KeyStoreError, match=r"already stored as kek@v1"):
        _enter(store, "kek", VALUE, KeyUsage.K0, KeyRole.KEK)


def test_distinct_values_and_generated_keys_are_entered(tmp_path: Path) -> None:
    store = new_store(tmp_path, FakeClock())
    assert _enter(store, "tk", VALUE, KeyUsage.K0, KeyRole.TK) == "tk@v1"
    assert _enter(store, "imk", OTHER, KeyUsage.E0, KeyRole.IMK_AC) == "imk@v1"
    store.generate("data", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "bureau:demo",
                   actor="o")  # fmt: skip
    assert {r.ref.label for r in store.list()} >= {"tk", "imk", "data"}
