"""Soft key store inventory MAC: rows restored, deleted or added, and meta edits, are refused.

A row MAC (tests/unit/keys/test_row_mac.py) binds every column of a row but
cannot tell an old, once-valid copy of ``label@vN`` from the current one, nor
notice a deleted row.  The store-wide inventory MAC (:mod:`pipeline.keys.inventory`,
HMAC under HKDF(HMK, "cardprep/inventory-mac") over ``meta``, every
``(label, version, row_mac)`` and the destruction evidence) does.  An
attacker here has write access to keys.db with ``sqlite3`` but not the HMK.

No published vector exists for this project-defined MAC: the stored value is
cross-checked against :func:`pipeline.keys.inventory.inventory_mac`
recomputed here from the raw SQLite tables after every legitimate change.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import pipeline.keys.soft as soft
from pipeline.audit.trail import AuditTrail
from pipeline.errors import KeyNotFoundError, KeyStoreError
from pipeline.keys.inventory import (
    EVIDENCE_FIELDS,
    INVENTORY_META,
    INVENTORY_SCHEME,
    inventory_data,
    inventory_mac,
    inventory_mac_key,
)
from pipeline.keys.model import (
    DerivationMethod,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
)
from pipeline.keys.rowmac import check_row_mac, row_mac_key
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store, tk_imk_store

PAN = "4761739001010119"
MISMATCH = r"key inventory MAC mismatch: a row was added, removed or restored"
STORE_WIDE = rf"^inventory: {MISMATCH}"
CERT = IssuerCertificateRecord(
    certificate=b"\x6a" + bytes(126) + b"\xbc", remainder=b"", exponent=b"\x03",
    ca_rid="A000000003", ca_index="92", expiry="1230", serial="000001", format="emv-02",
)  # fmt: skip


# --- helpers: the attacker's sqlite3, and an independent recomputation --------------------------


def _raw_row(db: Path, ref: KeyRef) -> dict[str, Any]:
    """Every column of ``ref``'s row as stored (the attacker's backup copy)."""
    with sqlite3.connect(db) as conn:
        cursor = conn.execute(
            "SELECT * FROM keys WHERE label=? AND version=?", (ref.label, ref.version)
        )
        values = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], values, strict=True))


def _put_row(db: Path, row: dict[str, Any]) -> None:
    """Write ``row`` back as is (replacing the current row of the same label@vN)."""
    cols = ", ".join(row)
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"INSERT OR REPLACE INTO keys ({cols}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


def _sql(db: Path, statement: str, *params: object) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, params).rowcount


def _recomputed_inventory(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        meta = conn.execute("SELECT name, value FROM meta").fetchall()
        keys = conn.execute("SELECT label, version, row_mac FROM keys").fetchall()
        evidence = conn.execute(
            f"SELECT {', '.join(EVIDENCE_FIELDS)} FROM destruction_evidence"
        ).fetchall()
    return inventory_mac(inventory_mac_key(HMK), meta, keys, evidence)


def _stored_inventory(db: Path) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM meta WHERE name=?", (INVENTORY_META,)).fetchone()
    return None if row is None else str(row[0])


def _derive(store: SoftKeyStore, imk: KeyRef, tk: KeyRef) -> object:
    return store.derive_and_wrap(imk, PAN, "01", DerivationMethod.OPTION_A, tk)


def _opens(db: Path) -> None:
    """The store opens read-write and read-only, and lists every row."""
    SoftKeyStore(db, HMK).close()
    with SoftKeyStore(db, HMK, read_only=True) as s:
        s.list()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SoftKeyStore:
    return tk_imk_store(tmp_path, clock)


# --- pure functions ------------------------------------------------------------------------------


def test_inventory_data_is_order_free_and_type_tagged() -> None:
    meta = [("schema_version", "2"), ("hmk_kcv", "0A"), (INVENTORY_META, "ignored")]
    keys = [("b", 1, "aa"), ("a", 2, "bb")]
    data = inventory_data(meta, keys, [])
    assert data == inventory_data(meta[::-1], keys[::-1], [])
    assert data == inventory_data(meta[:2], keys, [])  # the MAC entry never covers itself
    assert data != inventory_data(meta, [("b", "1", "aa"), ("a", 2, "bb")], [])  # type
    assert data != inventory_data(meta, keys[:1], [])  # removed
    assert data != inventory_data(meta, [*keys, ("c", 1, "cc")], [])  # added
    assert data != inventory_data(meta, [("b", 1, "ab"), ("a", 2, "bb")], [])  # other row
    assert data != inventory_data(meta, [], keys)  # a keys row is not an evidence row
    assert inventory_mac_key(HMK) != row_mac_key(HMK)


# --- restored, deleted, added rows ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["suspend", "rotate", "destroy"])
def test_an_old_copy_restored_after_a_change_is_refused(
    store: SoftKeyStore, clock: FakeClock, change: str
) -> None:
    """The gap a row MAC has: the old row still verifies, and still carries its key block."""
    imk, tk = store.active("imk"), store.active("tk")
    worker = SoftKeyStore(store.path, HMK, read_only=True, cache_ttl=0.0)
    _derive(worker, imk, tk)
    old = _raw_row(store.path, imk)
    if change == "suspend":
        store.suspend(imk, actor="o", reason="incident")
    elif change == "rotate":
        store.rotate("imk", actor="o")
        assert store.get(imk).state is KeyState.DEACTIVATED
    else:
        store.suspend(imk, actor="o", reason="compromise")
        store.schedule_destruction(imk, actor="o", wait_days=1)
        clock.advance(days=2)
        assert store.destroy(imk, actor="o").state is KeyState.DESTROYED
    _opens(store.path)  # the legitimate change verifies
    _put_row(store.path, old)
    check_row_mac(row_mac_key(HMK), old, old["row_mac"])  # the old row MAC still verifies
    assert old["key_block"] is not None and old["state"] == "active"

    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK, read_only=True)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.refresh()
    # a worker opened before the change: its next re-read of the row (cache_ttl) sees the
    # legitimate write's new inventory MAC, checks the whole inventory, and refuses
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        _derive(worker, imk, tk)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.list()
    worker.close()


def test_a_write_after_tampering_is_refused_and_does_not_bless_it(store: SoftKeyStore) -> None:
    imk = store.active("imk")
    old = _raw_row(store.path, imk)
    store.suspend(imk, actor="o", reason="incident")
    _put_row(store.path, old)
    before = _stored_inventory(store.path)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.generate("k2", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:d", actor="o")
    assert _stored_inventory(store.path) == before
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM keys WHERE label='k2'").fetchone() == (0,)
    last = list(store.audit_trail.events())[-1]
    assert last.action == "key.generate" and "key inventory MAC mismatch" in last.result
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)


def test_a_deleted_row_is_refused(store: SoftKeyStore) -> None:
    imk, tk = store.active("imk"), store.active("tk")
    worker = SoftKeyStore(store.path, HMK, read_only=True, cache_ttl=0.0)
    _derive(worker, imk, tk)
    assert _sql(store.path, "DELETE FROM keys WHERE label='imk'") == 1
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK, read_only=True)
    # an open store names the deletion, not "no such key"
    for call in (
        lambda: _derive(worker, imk, tk),
        lambda: worker.get(imk),
        lambda: worker.get("imk"),
    ):
        with pytest.raises(KeyStoreError, match=MISMATCH) as info:
            call()
        assert not isinstance(info.value, KeyNotFoundError)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        worker.active("imk")
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.refresh()
    worker.close()


def test_deleting_the_newest_version_is_refused_not_an_older_one_served(
    store: SoftKeyStore,
) -> None:
    store.rotate("imk", actor="o")
    assert _sql(store.path, "DELETE FROM keys WHERE label='imk' AND version=2") == 1
    with pytest.raises(KeyStoreError, match=rf"^imk: {MISMATCH}"):
        store.get("imk")  # not imk@v1, the deactivated one
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.active("imk")
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)


def test_a_row_copied_from_another_store_under_the_same_hmk_is_refused(
    store: SoftKeyStore, tmp_path: Path
) -> None:
    """Its row MAC verifies (same HMK): only the inventory says it does not belong here."""
    other = new_store(tmp_path / "other")
    ref = other.generate(
        "extra", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:x", actor="o"
    ).ref
    row = _raw_row(other.path, ref)
    other.close()
    worker = SoftKeyStore(store.path, HMK, read_only=True)
    _put_row(store.path, row)
    with pytest.raises(KeyStoreError, match=rf"^extra@v1: {MISMATCH}"):
        worker.get(ref)
    with pytest.raises(KeyStoreError, match=rf"^extra@v1: {MISMATCH}"):
        worker.encrypt_data(ref, b"x", "output")
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.refresh()
    worker.close()


# --- meta and destruction evidence -------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO meta (name, value) VALUES ('test_only', '1')",
        "INSERT INTO meta (name, value) VALUES ('scrypt_salt', '00112233445566778899aabbccddeeff')",
        """UPDATE meta SET value='["mallory"]' WHERE name='hmk_custodians'""",
        "UPDATE meta SET value='3' WHERE name='schema_version'",
        "UPDATE meta SET value='2020-01-01T00:00:00Z' WHERE name='created_at'",
        "DELETE FROM meta WHERE name='created_at'",
        "UPDATE meta SET value='00' || value WHERE name='inventory_mac'",
    ],
    ids=["add-test-only", "add-salt", "custodians", "schema", "created", "drop-created", "mac"],
)
def test_an_edited_meta_entry_is_refused(store: SoftKeyStore, statement: str) -> None:
    assert _sql(store.path, statement) == 1
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.refresh()


def test_test_only_added_by_sql_does_not_admit_a_clear_key(store: SoftKeyStore) -> None:
    _sql(store.path, "INSERT INTO meta (name, value) VALUES ('test_only', '1')")
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.import_test_key(
            "clear", KeyAlgorithm.AES128, KeyUsage.D0, KeyRole.DATA, "issuer:x", bytes(16),
            actor="o",
        )  # fmt: skip
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM keys WHERE label='clear'").fetchone() == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE destruction_evidence SET destroyed_by='nobody'",
        "DELETE FROM destruction_evidence",
    ],
    ids=["edited", "deleted"],
)
def test_edited_destruction_evidence_is_refused(
    store: SoftKeyStore, clock: FakeClock, statement: str
) -> None:
    imk = store.active("imk")
    store.suspend(imk, actor="o")
    store.schedule_destruction(imk, actor="o", wait_days=1)
    clock.advance(days=2)
    store.destroy(imk, actor="o")
    assert store.destruction_evidence(imk)["destroyed_by"] == "o"
    assert _sql(store.path, statement) == 1
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        store.destruction_evidence(imk)
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(store.path, HMK)


def test_the_refusal_names_no_key_nor_mac(store: SoftKeyStore) -> None:
    mac = _stored_inventory(store.path)
    assert mac is not None
    _sql(store.path, "DELETE FROM keys WHERE label='imk'")
    with pytest.raises(KeyStoreError) as info:
        SoftKeyStore(store.path, HMK)
    assert str(info.value) == (
        "inventory: key inventory MAC mismatch: a row was added, removed or restored, or a "
        "meta or destruction-evidence entry edited, outside the store: refused"
    )
    assert mac not in str(info.value) and mac.upper() not in str(info.value)


# --- legitimate changes --------------------------------------------------------------------------


def test_every_legitimate_change_keeps_the_store_openable(tmp_path: Path, clock: FakeClock) -> None:
    s = new_store(tmp_path, clock)
    macs = [_stored_inventory(s.path)]

    def step() -> None:
        clock.advance(seconds=1)  # a change and its undo in the same second re-make the same row
        stored = _stored_inventory(s.path)
        assert stored == _recomputed_inventory(s.path)  # an independent recomputation
        assert stored not in macs  # every change moved it
        macs.append(stored)
        _opens(s.path)
        s.refresh()

    imk = s.generate("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:d",
                     actor="o", activate=False).ref  # fmt: skip
    step()
    s.activate(imk, actor="o")
    step()
    v2 = s.rotate("imk", actor="o").ref
    step()
    s.suspend(v2, actor="o")
    step()
    s.resume(v2, actor="o")
    step()
    iss = s.generate("iss", KeyAlgorithm.RSA, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:d",
                     actor="o", bits=1024).ref  # fmt: skip
    step()
    s.set_issuer_certificate(iss, CERT, actor="o")
    step()
    s.schedule_destruction(imk, actor="o", wait_days=1)
    step()
    s.restore(imk, actor="o")
    step()
    s.schedule_destruction(imk, actor="o", wait_days=1)
    step()
    clock.advance(days=2)
    s.destroy(imk, actor="o")
    step()
    s.rotate("audit-mac", actor="o")  # the audit key itself: sealed with the new version
    step()
    assert s.audit_trail.verify().ok
    states = {str(r.ref): r.state for r in s.list()}
    assert states["imk@v1"] is KeyState.DESTROYED and states["imk@v2"] is KeyState.ACTIVE
    s.close()


def test_the_hot_path_never_recomputes_the_inventory(
    store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """derive_and_wrap & co. use cached records; a re-read (cache_ttl) costs one meta lookup."""
    calls: list[str] = []
    real_check, real_mac = soft.check_inventory_mac, soft.inventory_mac

    def counting_check(*args: Any) -> None:
        calls.append("check")
        real_check(*args)

    def counting_mac(*args: Any) -> str:
        calls.append("mac")
        return real_mac(*args)

    monkeypatch.setattr(soft, "check_inventory_mac", counting_check)
    monkeypatch.setattr(soft, "inventory_mac", counting_mac)
    imk, tk = store.active("imk"), store.active("tk")
    worker = SoftKeyStore(store.path, HMK, read_only=True, cache_ttl=0.0)
    assert calls == ["check"]  # the open
    for _ in range(50):  # every call re-reads both records (cache_ttl 0)
        _derive(worker, imk, tk)
    assert calls == ["check"]
    store.generate("k2", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:d", actor="o")
    assert calls == ["check", "check", "mac"]  # the write: check under the lock, then reseal
    _derive(worker, imk, tk)  # sees another process's write: one full check, then cheap again
    _derive(worker, imk, tk)
    assert calls == ["check", "check", "mac", "check"]
    worker.refresh()
    assert calls[-1] == "check" and len(calls) == 5
    worker.close()


# --- a store made before inventory MACs ----------------------------------------------------------


def _pre_inventory_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store as the code before inventory MACs left it: no meta entry, no scheme in the trail."""
    real_append = AuditTrail.append

    def old_append(self: AuditTrail, *args: Any, **details: Any) -> Any:
        details.pop("inventory_mac", None)
        return real_append(self, *args, **details)

    with monkeypatch.context() as m:
        m.setattr(AuditTrail, "append", old_append)
        s = new_store(tmp_path)
        s.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
        s.generate("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:d", actor="o")
        s.close()
    _sql(s.path, "DELETE FROM meta WHERE name=?", INVENTORY_META)
    return s.path


def test_a_pre_inventory_store_is_upgraded_once_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _pre_inventory_store(tmp_path, monkeypatch)
    with pytest.raises(KeyStoreError, match=r"^inventory_mac: .*predates inventory MACs"):
        SoftKeyStore(db, HMK, read_only=True)
    s = SoftKeyStore(db, HMK)
    assert _stored_inventory(db) == _recomputed_inventory(db)
    events = list(s.audit_trail.events())
    assert [e.action for e in events].count("store.migrate") == 1
    event = events[-1]
    assert event.action == "store.migrate" and event.actor == "hmk-holder"
    assert event.details["inventory_mac"] == INVENTORY_SCHEME
    assert event.details["rows"] == 3 and "imk@v1" in event.details["keys"]
    assert s.audit_trail.verify().ok
    imk = s.active("imk")
    old = _raw_row(db, imk)
    s.suspend(imk, actor="o")
    s.close()
    again = SoftKeyStore(db, HMK)  # no second upgrade
    assert [e.action for e in again.audit_trail.events()].count("store.migrate") == 1
    again.close()
    _opens(db)
    _put_row(db, old)  # from now on a restored row is caught
    with pytest.raises(KeyStoreError, match=STORE_WIDE):
        SoftKeyStore(db, HMK)


def test_an_upgrade_refuses_an_edited_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _pre_inventory_store(tmp_path, monkeypatch)
    _sql(db, "UPDATE keys SET owner='issuer:evil' WHERE label='imk'")
    with pytest.raises(KeyStoreError, match=r"^imk@v1: row MAC mismatch"):
        SoftKeyStore(db, HMK)
    assert _stored_inventory(db) is None
    trail = (db.parent / (db.name + ".audit.jsonl")).read_text()
    assert "store.migrate" not in trail


@pytest.mark.parametrize("made", ["created", "upgraded", "migrated-schema1"])
def test_removing_the_inventory_mac_is_refused_not_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: str
) -> None:
    """A store the trail shows had an inventory MAC: a missing entry is tampering."""
    if made == "created":
        s = new_store(tmp_path)
        s.generate("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:d", actor="o")
        db, action = s.path, "store.create"
        s.close()
    elif made == "upgraded":
        db, action = _pre_inventory_store(tmp_path, monkeypatch), "store.migrate"
        SoftKeyStore(db, HMK).close()
    else:
        from tests.unit.keys.test_row_mac import _schema1_store  # noqa: PLC0415

        db, action = _schema1_store(tmp_path), "store.migrate"
        s = SoftKeyStore(db, HMK)
        assert list(s.audit_trail.events())[-1].details["inventory_mac"] == INVENTORY_SCHEME
        s.close()
        _opens(db)
    old = _raw_row(db, KeyRef("imk", 1))
    _sql(db, "UPDATE keys SET state='destroyed', key_block=NULL WHERE label='imk'")
    _put_row(db, old)  # (a no-op restore: the point is the missing entry)
    _sql(db, "DELETE FROM meta WHERE name=?", INVENTORY_META)
    with pytest.raises(KeyStoreError, match=rf"^inventory_mac: .*\({action}\) shows .*tampering"):
        SoftKeyStore(db, HMK)
    assert _stored_inventory(db) is None


# --- several processes ---------------------------------------------------------------------------

CTX = mp.get_context("spawn")  # a clean interpreter per process, like a real worker


def _generate_keys(path: str, prefix: str, count: int, start: Any, out: Any) -> None:
    store = SoftKeyStore(Path(path), HMK)
    start.wait()
    try:
        for i in range(count):
            store.generate(f"{prefix}-{i}", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA,
                           "issuer:d", actor=prefix)  # fmt: skip
        out.put((prefix, "ok"))
    except Exception as exc:
        out.put((prefix, f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()


def _read_until_done(path: str, start: Any, done: Any, out: Any) -> None:
    """A read-only worker re-checking the whole inventory while the writers write."""
    store = SoftKeyStore(Path(path), HMK, read_only=True, cache_ttl=0.0)
    start.wait()
    checks, seen = 0, 0
    try:
        while not done.is_set() or checks == 0:
            store.refresh()
            seen = max(seen, len(store.list()))
            checks += 1
        out.put(("reader", f"ok {checks} {seen}"))
    except Exception as exc:
        out.put(("reader", f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()


def test_two_writers_and_a_reader_leave_a_consistent_store(store: SoftKeyStore) -> None:
    """Inventory read-modify-write happens under the write lock: no lost update, no torn read."""
    count = 25
    start, done, out = CTX.Barrier(3), CTX.Event(), CTX.Queue()
    writers = [
        CTX.Process(target=_generate_keys, args=(str(store.path), p, count, start, out))
        for p in ("wa", "wb")
    ]
    reader = CTX.Process(target=_read_until_done, args=(str(store.path), start, done, out))
    for p in (*writers, reader):
        p.start()
    results = {}
    for _ in writers:
        name, result = out.get(timeout=120)
        results[name] = result
    done.set()
    name, result = out.get(timeout=120)
    results[name] = result
    for p in (*writers, reader):
        p.join(timeout=60)
    assert results["wa"] == "ok" and results["wb"] == "ok", results
    assert results["reader"].startswith("ok "), results
    _opens(store.path)
    store.refresh()
    labels = {r.ref.label for r in store.list()}
    assert {f"{p}-{i}" for p in ("wa", "wb") for i in range(count)} <= labels
    assert _stored_inventory(store.path) == _recomputed_inventory(store.path)
    assert store.audit_trail.verify().ok
