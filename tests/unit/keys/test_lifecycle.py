"""Key lifecycle: transitions, refusals, rotation, destruction after the waiting period."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.crypto.kcv import kcv as compute_kcv
from pipeline.errors import InvalidInputError, KeyStateError, KeyStoreError
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRef, KeyRole, KeyState, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import FakeClock, tk_imk_store

PAN = "4761739001010119"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SoftKeyStore:
    s = tk_imk_store(tmp_path, clock)
    s.generate("data", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "bureau:demo", actor="o")
    return s


def derive(store: SoftKeyStore, imk: KeyRef) -> object:
    return store.derive_and_wrap(imk, PAN, "01", DerivationMethod.OPTION_A, KeyRef("tk", 1))


def test_suspend_refuses_new_work_until_resumed(store: SoftKeyStore) -> None:
    imk = KeyRef("imk", 1)
    derive(store, imk)  # cached in this process
    assert store.suspend(imk, actor="o", reason="incident").state is KeyState.SUSPENDED
    with pytest.raises(KeyStateError, match=r"imk@v1: state suspended \(usage E0\) .*derive"):
        derive(store, imk)
    with pytest.raises(KeyStateError, match=r"state suspended"):
        store.suspend(imk, actor="o")
    assert store.resume(imk, actor="o").state is KeyState.ACTIVE
    derive(store, imk)


def test_pre_active_key_needs_activation(store: SoftKeyStore) -> None:
    rec = store.generate(
        "imk2", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo", actor="o",
        activate=False,
    )  # fmt: skip
    with pytest.raises(KeyStateError, match=r"state pre-active"):
        derive(store, rec.ref)
    store.activate(rec.ref, actor="o")
    derive(store, rec.ref)


def test_rotate_makes_a_new_version_and_the_old_only_processes(store: SoftKeyStore) -> None:
    old = KeyRef("data", 1)
    box = store.encrypt_data(old, b"secret", "output")
    new = store.rotate("data", actor="o")
    assert new.ref == KeyRef("data", 2) and new.state is KeyState.ACTIVE
    assert store.active("data") == new.ref
    assert store.get(old).state is KeyState.DEACTIVATED
    assert store.decrypt_data(old, box, "output") == b"secret"  # processing allowed
    with pytest.raises(KeyStateError, match=r"data@v1: state deactivated .*encrypt-data"):
        store.encrypt_data(old, b"more", "output")
    assert store.decrypt_data(new.ref, store.encrypt_data(new.ref, b"x", "o"), "o") == b"x"
    store.rotate("imk", actor="o")
    with pytest.raises(KeyStateError, match=r"state deactivated"):
        derive(store, KeyRef("imk", 1))


def test_retired_key_refused_for_all_work(store: SoftKeyStore) -> None:
    imk = KeyRef("imk", 1)
    store.retire(imk, actor="o")
    with pytest.raises(KeyStateError, match=r"state retired"):
        derive(store, imk)
    with pytest.raises(KeyStateError, match=r"no ACTIVE version"):
        store.active("imk")
    assert store.kcv(imk) == store.get(imk).kcv  # information only


def test_destruction_waits_seven_days(store: SoftKeyStore, clock: FakeClock) -> None:
    imk = KeyRef("imk", 1)
    kcv = store.get(imk).kcv
    with pytest.raises(KeyStateError, match=r"state active .*schedule_destruction"):
        store.schedule_destruction(imk, actor="o")
    store.retire(imk, actor="o")
    pending = store.schedule_destruction(imk, actor="o")
    assert pending.state is KeyState.DESTROY_PENDING
    assert pending.destroy_after == "2025-01-08T00:00:00Z"
    clock.advance(days=6, hours=23)
    with pytest.raises(KeyStateError, match=r"destroy refused before 2025-01-08"):
        store.destroy(imk, actor="o")
    clock.advance(hours=1)
    gone = store.destroy(imk, actor="o")
    assert gone.state is KeyState.DESTROYED and gone.destroyed_at == "2025-01-08T00:00:00Z"
    evidence = store.destruction_evidence(imk)
    assert evidence["kcv"] == kcv.hex().upper() and evidence["destroyed_by"] == "o"
    assert len(evidence["key_block_sha256"]) == 64
    row = store._conn.execute("SELECT key_block FROM keys WHERE label='imk'").fetchone()
    assert row == (None,)
    with pytest.raises(KeyStateError, match=r"state destroyed"):
        store.kcv(imk)
    with pytest.raises(KeyStateError, match=r"state destroyed"):
        store.restore(imk, actor="o")
    assert store.get(imk).kcv == kcv  # the record stays
    assert store.audit_trail.verify().ok


def test_restore_before_destruction(store: SoftKeyStore, clock: FakeClock) -> None:
    imk = KeyRef("imk", 1)
    store.suspend(imk, actor="o")
    store.schedule_destruction(imk, actor="o", wait_days=10)
    clock.advance(days=3)
    restored = store.restore(imk, actor="o")
    assert restored.state is KeyState.SUSPENDED and restored.destroy_after is None
    with pytest.raises(KeyStateError, match=r"state suspended .*destroy"):
        store.destroy(imk, actor="o")
    with pytest.raises(InvalidInputError, match=r"wait_days"):
        store.schedule_destruction(imk, actor="o", wait_days=0)


def test_resume_after_a_rotation_does_not_make_two_active(store: SoftKeyStore) -> None:
    store.suspend(KeyRef("imk", 1), actor="o")
    store.rotate("imk", actor="o")
    assert store.resume(KeyRef("imk", 1), actor="o").state is KeyState.DEACTIVATED
    assert store.active("imk") == KeyRef("imk", 2)


def test_audit_key_cannot_be_retired(store: SoftKeyStore) -> None:
    with pytest.raises(KeyStateError, match=r"audit MAC keys .* retire refused"):
        store.retire(KeyRef("audit-mac", 1), actor="o")
    store.rotate("audit-mac", actor="o")
    store.generate("x", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    report = store.audit_trail.verify()
    assert report.ok, report.problems
    assert {e.mac_key for e in store.audit_trail.events()} == {"audit-mac@v1", "audit-mac@v2"}


def test_component_keys_rotate_by_ceremony_only(store: SoftKeyStore) -> None:
    value = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    store.import_components(
        "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, "issuer:demo", [value, bytes(16)],
        compute_kcv(value), custodians=["a", "b"], actor="o",
    )  # fmt: skip
    with pytest.raises(KeyStoreError, match=r"entered from components"):
        store.rotate("kek", actor="o")


def test_every_transition_is_audited_with_actor(store: SoftKeyStore) -> None:
    imk = KeyRef("imk", 1)
    store.suspend(imk, actor="cust-alice")
    store.resume(imk, actor="cust-bob")
    events = list(store.audit_trail.events())
    assert [(e.actor, e.action, e.result) for e in events[-2:]] == [
        ("cust-alice", "key.suspend", "ok"),
        ("cust-bob", "key.resume", "ok"),
    ]
    assert events[-1].subject.startswith("imk@v1 kcv=")
