"""Key-store row MACs: every column of a key row bound under HKDF(HMK, "cardprep/row-mac").

No published vector exists for this project-defined MAC: the tests cross-check
two independent computations (the store's stored MAC against
:func:`pipeline.keys.rowmac.row_mac` recomputed here from the raw SQLite row)
and check that every single-column edit, a type change and a NULL MAC are
refused with ``label@vN: row MAC mismatch``.  Migration of a schema-1 store
uses tests/vectors/keystore_schema1.json, a store written by the code before
row MACs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import KeyStoreError
from pipeline.keys.model import (
    DerivationMethod,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
)
from pipeline.keys.rowmac import (
    ROW_FIELDS,
    check_row_mac,
    row_mac,
    row_mac_data,
    row_mac_key,
)
from pipeline.keys.soft import SCHEMA_VERSION, SoftKeyStore
from tests.conftest import load_vectors
from tests.unit.keys.storekit import HMK, FakeClock, new_store, tk_imk_store

ROW_KEY = row_mac_key(HMK)
CERT = IssuerCertificateRecord(
    certificate=b"\x6a" + bytes(126) + b"\xbc", remainder=b"", exponent=b"\x03",
    ca_rid="A000000003", ca_index="92", expiry="1230", serial="000001", format="emv-02",
)  # fmt: skip


def _raw_rows(path: Path) -> list[tuple[dict[str, object], object]]:
    with sqlite3.connect(path) as conn:
        cols = ", ".join((*ROW_FIELDS, "row_mac"))
        rows = conn.execute(f"SELECT {cols} FROM keys ORDER BY label, version").fetchall()
    return [(dict(zip(ROW_FIELDS, r[:-1], strict=True)), r[-1]) for r in rows]


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    """A store whose issuer key row has every column filled (prev_state, cert, destroy_after)."""
    clock = FakeClock()
    s = tk_imk_store(tmp_path, clock)
    iss = s.generate("iss", KeyAlgorithm.RSA, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:demo",
                     actor="o", bits=1024, activate=False)  # fmt: skip
    s.set_issuer_certificate(iss.ref, CERT, actor="o")
    s.schedule_destruction(iss.ref, actor="o", wait_days=1)
    return s


def test_stored_macs_match_an_independent_recomputation(store: SoftKeyStore) -> None:
    rows = _raw_rows(store.path)
    assert len(rows) == 4
    for row, mac in rows:
        assert mac == row_mac(ROW_KEY, row), row["label"]
    iss = next(r for r, _ in rows if r["label"] == "iss")
    assert all(iss[c] is not None for c in ROW_FIELDS if c not in ("activated_at", "destroyed_at"))


def _edit_expr(column: str) -> str:
    """A SQL expression changing ``column`` whatever its storage class."""
    return (
        f"CASE WHEN {column} IS NULL THEN '2030-01-01T00:00:00Z' "
        f"WHEN typeof({column}) = 'integer' THEN {column} + 1 "
        f"WHEN typeof({column}) = 'blob' THEN CAST(x'00' || {column} AS BLOB) "
        f"ELSE {column} || 'x' END"
    )


@pytest.mark.parametrize("column", ROW_FIELDS)
def test_every_column_edit_is_refused(store: SoftKeyStore, column: str) -> None:
    ref = KeyRef("iss", 1)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute(
            f"UPDATE keys SET {column} = {_edit_expr(column)} WHERE label='iss'"
        ).rowcount == 1  # fmt: skip
    moved = {"label": KeyRef("issx", 1), "version": KeyRef("iss", 2)}.get(column, ref)
    with pytest.raises(KeyStoreError, match=rf"^{moved.label}@v{moved.version}: row MAC mismatch"):
        store.get(moved)
    with pytest.raises(KeyStoreError, match="row MAC mismatch"):
        store.list()


def test_a_column_made_undecodable_is_refused_not_a_crash(store: SoftKeyStore) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET owner = x'00ff' || owner WHERE label='tk'")
    with pytest.raises(KeyStoreError, match=r"^tk@v1: row unreadable"):
        store.get("tk")
    with pytest.raises(KeyStoreError, match=r"^keys: a row is unreadable"):
        store.list()


def test_a_type_change_with_the_same_bytes_is_refused(store: SoftKeyStore) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET kcv = CAST(kcv AS BLOB) WHERE label='tk'")
    with pytest.raises(KeyStoreError, match=r"^tk@v1: row MAC mismatch"):
        store.get("tk")


@pytest.mark.parametrize("value", [None, "", "00" * 32, "not hex"])
def test_a_missing_or_bogus_mac_is_refused(store: SoftKeyStore, value: str | None) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET row_mac=? WHERE label='tk'", (value,))
    with pytest.raises(KeyStoreError, match=r"^tk@v1: row MAC mismatch"):
        store.get("tk")


def test_a_row_copied_to_another_version_is_refused(store: SoftKeyStore) -> None:
    """Copy tk@v1 (MAC and all) as tk@v2: label@version are inside the MAC."""
    cols = ", ".join((*ROW_FIELDS, "row_mac"))
    copy = cols.replace("version", "version + 1", 1)
    with sqlite3.connect(store.path) as conn:
        conn.execute(f"INSERT INTO keys ({cols}) SELECT {copy} FROM keys WHERE label='tk'")
    with pytest.raises(KeyStoreError, match=r"^tk@v2: row MAC mismatch"):
        store.get(KeyRef("tk", 2))


def test_suspended_key_set_active_by_sql_is_refused_for_use(store: SoftKeyStore) -> None:
    imk, tk = store.active("imk"), store.active("tk")
    store.suspend(imk, actor="o", reason="incident")
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET state='active', prev_state=NULL WHERE label='imk'")
    store.refresh()
    with pytest.raises(KeyStoreError, match=r"^imk@v1: row MAC mismatch"):
        store.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)


def test_a_worker_sees_an_edit_after_its_cache_ttl(store: SoftKeyStore) -> None:
    imk, tk = store.active("imk"), store.active("tk")
    worker = SoftKeyStore(store.path, HMK, read_only=True, cache_ttl=0.0)
    worker.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET owner='issuer:other' WHERE label='imk'")
    with pytest.raises(KeyStoreError, match=r"^imk@v1: row MAC mismatch"):
        worker.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
    worker.close()


def test_lifecycle_updates_re_mac_every_row(tmp_path: Path) -> None:
    clock = FakeClock()
    s = new_store(tmp_path, clock)
    first = s.generate("k", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:d", actor="o")
    macs = {mac for _, mac in _raw_rows(s.path)}
    second = s.rotate("k", actor="o")
    s.suspend(second.ref, actor="o")
    s.resume(second.ref, actor="o")
    s.schedule_destruction(first.ref, actor="o", wait_days=1)
    s.restore(first.ref, actor="o")
    s.schedule_destruction(first.ref, actor="o", wait_days=1)
    clock.advance(days=2)
    s.destroy(first.ref, actor="o")
    rows = [(row, mac) for row, mac in _raw_rows(s.path) if row["label"] == "k"]
    assert len(rows) == 2
    for row, mac in rows:
        assert mac == row_mac(ROW_KEY, row) and mac not in macs, row["version"]
    states = {(r.ref.version, r.state) for r in s.list()}
    assert states >= {(1, KeyState.DESTROYED), (2, KeyState.ACTIVE)}
    assert s.audit_trail.verify().ok


def test_an_outside_edit_is_never_blessed_by_a_later_update(store: SoftKeyStore) -> None:
    """Updates re-read and check the row first: an edit cannot ride along with rotate."""
    with sqlite3.connect(store.path) as conn:
        conn.execute("""UPDATE keys SET custodians='["mallory"]' WHERE label='tk'""")
    with pytest.raises(KeyStoreError, match=r"^tk@v1: row MAC mismatch"):
        store.rotate("tk", actor="o")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM keys WHERE label='tk'").fetchone() == (1,)
    last = list(store.audit_trail.events())[-1]
    assert last.action == "key.rotate" and "row MAC mismatch" in last.result


def test_mismatch_message_names_only_the_row(store: SoftKeyStore) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE keys SET owner='bureau:x' WHERE label='tk'")
    with pytest.raises(KeyStoreError) as info:
        store.get("tk")
    assert str(info.value) == "tk@v1: row MAC mismatch (column edited outside the store?): refused"


_VALUES = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.binary(max_size=20)
)


@settings(max_examples=150, deadline=None)
@given(
    row=st.fixed_dictionaries(dict.fromkeys(ROW_FIELDS, _VALUES)),
    column=st.sampled_from(ROW_FIELDS),
    other=_VALUES,
)
def test_mac_data_is_injective_on_a_column_change(
    row: dict[str, object], column: str, other: object
) -> None:
    """Any change of one value (including only its type) changes the MACed bytes."""
    changed = row | {column: other}
    same = type(row[column]) is type(other) and row[column] == other
    assert (row_mac_data(row) == row_mac_data(changed)) is same
    mac = row_mac(ROW_KEY, row)
    if not same:
        with pytest.raises(KeyStoreError, match="row MAC mismatch"):
            check_row_mac(ROW_KEY, changed, mac)


# --- migration of a store made before row MACs (schema 1) ---------------------------------------


def _schema1_store(tmp_path: Path) -> Path:
    fixture = load_vectors("keystore_schema1")
    db = tmp_path / "keys.db"
    conn = sqlite3.connect(db)
    conn.executescript("\n".join(fixture["sql"]))
    conn.close()
    (tmp_path / "keys.db.audit.jsonl").write_text("".join(x + "\n" for x in fixture["audit"]))
    (tmp_path / "keys.db.audit.jsonl.head").write_text(fixture["head"])
    return db


def _columns(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [c[1] for c in conn.execute("PRAGMA table_info(keys)")]


def test_schema1_store_opens_and_is_migrated_with_an_audit_event(tmp_path: Path) -> None:
    db = _schema1_store(tmp_path)
    assert "row_mac" not in _columns(db)
    store = SoftKeyStore(db, HMK)
    assert "row_mac" in _columns(db)
    for row, mac in _raw_rows(db):
        assert mac == row_mac(ROW_KEY, row)
    event = list(store.audit_trail.events())[-1]
    assert event.action == "store.migrate" and event.actor == "hmk-holder"
    assert event.details["rows"] == 5 and "dk@v1" in event.details["keys"]
    assert event.details["schema_from"] == "1" and event.details["schema_to"] == SCHEMA_VERSION
    assert store.audit_trail.verify().ok
    recs = {str(r.ref): r for r in store.list()}
    assert recs["imk@v1"].custodians == ("cust-a", "cust-b")
    assert recs["dk@v1"].state is KeyState.SUSPENDED
    assert recs["tk@v1"].state is KeyState.DEACTIVATED
    store.derive_and_wrap(store.active("imk"), "4761739001010119", "01",
                          DerivationMethod.OPTION_A, store.active("tk"))  # fmt: skip
    store.resume(KeyRef("dk", 1), actor="o")  # updates work after migration
    store.close()
    again = SoftKeyStore(db, HMK)  # opens without a second migration
    assert [e.action for e in again.audit_trail.events()].count("store.migrate") == 1
    again.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET owner='issuer:other' WHERE label='imk'")
    with pytest.raises(KeyStoreError, match=r"^imk@v1: row MAC mismatch"):
        SoftKeyStore(db, HMK).get("imk")


def test_schema1_store_read_only_is_refused(tmp_path: Path) -> None:
    db = _schema1_store(tmp_path)
    with pytest.raises(KeyStoreError, match=r"row_mac: .*predates row MACs"):
        SoftKeyStore(db, HMK, read_only=True)


def test_schema1_store_with_a_mismatched_block_is_not_migrated(tmp_path: Path) -> None:
    """Migration re-checks each block's binding: an old row with a changed usage is refused."""
    db = _schema1_store(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET usage='D0', role='data' WHERE label='imk'")
    with pytest.raises(KeyStoreError, match=r"imk@v1: key block header"):
        SoftKeyStore(db, HMK)
    assert "row_mac" not in _columns(db)  # nothing committed
    assert [json.loads(x)["action"] for x in (tmp_path / "keys.db.audit.jsonl").read_text()
            .splitlines()][-1] != "store.migrate"  # fmt: skip


@pytest.mark.parametrize("made", ["created", "migrated"])
def test_dropping_the_mac_column_is_refused_not_migrated(tmp_path: Path, made: str) -> None:
    """A store the trail shows had row MACs: a missing column is tampering."""
    if made == "created":
        s = new_store(tmp_path)
        db = s.path
    else:
        db = _schema1_store(tmp_path)
        s = SoftKeyStore(db, HMK)
    s.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET owner='issuer:evil'")
        conn.execute("ALTER TABLE keys DROP COLUMN row_mac")
        conn.execute("UPDATE meta SET value='1' WHERE name='schema_version'")
    action = "store.create" if made == "created" else "store.migrate"
    with pytest.raises(KeyStoreError, match=rf"row_mac: .*\({action}\) shows .*tampering"):
        SoftKeyStore(db, HMK)
    assert "row_mac" not in _columns(db)
