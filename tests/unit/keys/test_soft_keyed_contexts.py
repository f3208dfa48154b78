"""Soft store: the keyed CMAC and the GP diversifier are built once per entry (and purpose
or method), reused for every message or card, and dropped with the entry.

The constructions are counted by wrapping the classes the store uses; the outputs
are compared with their definitions (AES-CMAC under HKDF(key, mac/purpose); the
GP keys of :func:`pipeline.crypto.gp.diversify_card_keys` under the TK).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from pipeline.crypto import gp
from pipeline.crypto.kcv import kcv
from pipeline.crypto.kdf import hkdf_sha256
from pipeline.errors import KeyStateError
from pipeline.keys import soft
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store
from tests.unit.keys.test_store_soft import KMC, TK, _import

MAC_KEY = bytes.fromhex("F0E0D0C0B0A090807060504030201000F1E1D1C1B1A191817161514131211101")
POOL_KEY = bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F0")
KDDS = (bytes(range(10)), bytes(range(10, 20)), bytes(range(10)))


def _cmac(purpose: str, data: bytes, key: bytes = MAC_KEY) -> bytes:
    """The store MAC by its definition: AES-CMAC under HKDF(key, mac/purpose)."""
    c = CMAC(algorithms.AES(hkdf_sha256(key, b"cardprep/mac/" + purpose.encode(), 32)))
    c.update(data)
    return c.finalize()


def _tdes_decrypt(key: bytes, data: bytes) -> bytes:
    return Cipher(TripleDES(key + key[:8]), modes.ECB()).decryptor().update(data)


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    s = new_store(tmp_path, FakeClock())
    _import(s, "mac", KeyAlgorithm.AES256, KeyUsage.M6, KeyRole.AUDIT_MAC, MAC_KEY,
            owner="bureau:demo")  # fmt: skip
    _import(s, "kmc", KeyAlgorithm.TDES2, KeyUsage.E5, KeyRole.KMC, KMC)
    _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    _import(s, "pool", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, POOL_KEY,
            owner="bureau:keypool")  # fmt: skip
    return s


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple[Any, ...]]:
    """Replace ``owner.name`` (a class) by a wrapper that records its constructor arguments."""
    made: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    def build(*args: Any) -> Any:
        made.append(args)
        return real(*args)

    monkeypatch.setattr(owner, name, build)
    return made


def test_the_cmac_is_keyed_once_per_purpose_and_right_for_every_message(
    store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _counting(monkeypatch, soft, "KeyedCmac")
    key = store.active("mac")
    calls = [("keypool-entry", b"one"), ("audit", b"one"), ("keypool-entry", b"two"),
             ("keypool-entry", b""), ("audit", b"x" * 100)] * 2  # fmt: skip
    for purpose, data in calls:
        tag = store.mac(key, data, purpose)
        assert tag == _cmac(purpose, data)
        assert store.verify_mac(key, data, tag, purpose)
        assert not store.verify_mac(key, data, tag, "other")
    assert len(made) == 3  # keypool-entry, audit, other: once each for 30 MACs and checks


def test_the_keyed_cmac_is_dropped_with_its_entry(
    store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _counting(monkeypatch, soft, "KeyedCmac")
    key = store.active("pool")  # a pool storage key (an audit MAC key cannot be suspended)
    tag = store.mac(key, b"entry", "keypool-entry")
    assert tag == _cmac("keypool-entry", b"entry", POOL_KEY)
    store.suspend(key, actor="o", reason="test")
    with pytest.raises(KeyStateError, match="state suspended"):
        store.verify_mac(key, b"entry", tag, "keypool-entry")
    store.resume(key, actor="o")
    assert store.verify_mac(key, b"entry", tag, "keypool-entry")
    assert len(made) == 2  # a new entry after the state change: keyed again


def test_a_worker_refuses_a_suspended_mac_key_after_the_ttl(store: SoftKeyStore) -> None:
    key = store.active("pool")
    worker = SoftKeyStore(store.path, HMK, read_only=True, cache_ttl=0.0)
    tag = worker.mac(key, b"entry", "keypool-entry")
    assert worker.verify_mac(key, b"entry", tag, "keypool-entry")  # served by the keyed CMAC
    store.suspend(key, actor="o", reason="test")
    with pytest.raises(KeyStateError, match="state suspended"):
        worker.verify_mac(key, b"entry", tag, "keypool-entry")


def test_the_diversifier_is_built_once_per_kmc_and_method(
    store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kmc, tk = store.active("kmc"), store.active("tk")
    methods = (DerivationMethod.VISA2, DerivationMethod.EMV_CPS)
    keys = {(m, kdd): gp.diversify_card_keys(KMC, kdd, m.value) for m in methods for kdd in KDDS}
    made = _counting(monkeypatch, gp, "CardKeyDiversifier")
    for method in methods:
        for kdd in KDDS:
            wrapped = store.diversify_and_wrap(kmc, kdd, method, tk)
            expected = keys[method, kdd]
            assert tuple(_tdes_decrypt(TK, w.ciphertext) for w in wrapped) == expected
            assert [w.kcv for w in wrapped] == [kcv(k) for k in expected]
    assert len(made) == len(methods)
    store.suspend(kmc, actor="o", reason="test")
    with pytest.raises(KeyStateError, match="state suspended"):
        store.diversify_and_wrap(kmc, KDDS[0], DerivationMethod.VISA2, tk)
    store.resume(kmc, actor="o")
    store.diversify_and_wrap(kmc, KDDS[0], DerivationMethod.VISA2, tk)
    assert len(made) == len(methods) + 1  # dropped with the entry, keyed again
