"""Custodian registry rules (pipeline.keys.custodians): appointment, backups, holdings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import AuditError, CustodianError, InvalidInputError
from pipeline.keys.custodians import (
    CustodianRegistry,
    CustodianRole,
    CustodianStatus,
    EmploymentType,
    ceremony_db_path,
)

R = CustodianRole
E = EmploymentType


class ListAudit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, dict[str, Any]]] = []

    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        self.events.append((actor, action, subject, result, details))


class BrokenAudit:
    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        raise OSError("disk full")


@pytest.fixture
def reg(tmp_path: Path) -> CustodianRegistry:
    r = CustodianRegistry(ceremony_db_path(tmp_path), audit=ListAudit())
    r.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="km2", appointed_by="board:2024")
    r.appoint("km2", "Lee", R.KEY_MANAGER, E.EMPLOYEE, backup="km1", appointed_by="km1")
    return r


def _staff(reg: CustodianRegistry, *ids: str, role: CustodianRole = R.CUSTODIAN) -> None:
    """Appoint custodians in a ring: each is the next one's backup."""
    for i, cid in enumerate(ids):
        reg.appoint(
            cid, cid.title(), role, E.EMPLOYEE, backup=ids[(i + 1) % len(ids)], appointed_by="km1"
        )


def test_appointment_record_kept(reg: CustodianRegistry) -> None:
    c = reg.appoint(
        "alice",
        "Alice",
        R.CUSTODIAN,
        E.EMPLOYEE,
        backup="km1",
        appointed_by="km2",
        date="2024-05-01",
    )
    assert c.appointment.appointed_by == "km2"
    assert c.appointment.date == "2024-05-01"
    assert c.role is R.CUSTODIAN and c.employment is E.EMPLOYEE
    assert c.status is CustodianStatus.ACTIVE and c.may_act


def test_registry_persists(tmp_path: Path, reg: CustodianRegistry) -> None:
    reg.close()
    again = CustodianRegistry(ceremony_db_path(tmp_path))
    assert [c.id for c in again.list()] == ["km1", "km2"]


@pytest.mark.parametrize("employment", [E.TEMPORARY, E.CONSULTANT])
def test_temporary_and_consultant_cannot_be_appointed(
    reg: CustodianRegistry, employment: EmploymentType
) -> None:
    with pytest.raises(CustodianError, match=f"{employment.value} staff cannot be appointed"):
        reg.appoint("tmp", "Tem", R.CUSTODIAN, employment, backup="km1", appointed_by="km1")
    assert "tmp" not in [c.id for c in reg.list()]


def test_contractor_can_be_appointed(reg: CustodianRegistry) -> None:
    c = reg.appoint("con", "Con", R.BACKUP, E.CONTRACTOR, backup="km1", appointed_by="km1")
    assert c.employment is E.CONTRACTOR


def test_first_appointment_must_be_key_manager(tmp_path: Path) -> None:
    r = CustodianRegistry(tmp_path / "x.sqlite")
    with pytest.raises(CustodianError, match="first appointment must be a key manager"):
        r.appoint("bob", "Bob", R.CUSTODIAN, E.EMPLOYEE, backup="x", appointed_by="board")


def test_only_active_key_manager_appoints(reg: CustodianRegistry) -> None:
    _staff(reg, "alice", "bob")
    with pytest.raises(CustodianError, match="'alice' is not an active key manager"):
        reg.appoint("carol", "Carol", R.CUSTODIAN, E.EMPLOYEE, backup="bob", appointed_by="alice")


def test_no_self_appointment_or_self_backup(reg: CustodianRegistry) -> None:
    with pytest.raises(CustodianError, match="own backup"):
        reg.appoint("zed", "Zed", R.CUSTODIAN, E.EMPLOYEE, backup="zed", appointed_by="km1")
    with pytest.raises(CustodianError, match="cannot appoint themselves"):
        reg.appoint("km3", "K3", R.KEY_MANAGER, E.EMPLOYEE, backup="km1", appointed_by="km3")


def test_duplicate_id_refused(reg: CustodianRegistry) -> None:
    with pytest.raises(CustodianError, match="already in the registry"):
        reg.appoint("km2", "Again", R.CUSTODIAN, E.EMPLOYEE, backup="km1", appointed_by="km1")


def test_invalid_id_refused(reg: CustodianRegistry) -> None:
    with pytest.raises(InvalidInputError, match="custodian"):
        reg.appoint("Bad Id", "X", R.CUSTODIAN, E.EMPLOYEE, backup="km1", appointed_by="km1")


@pytest.mark.parametrize("day", ["2026-02-30", "2026-13-01", "yesterday", "2026-1-5", ""])
def test_appointment_date_must_be_a_real_calendar_date(reg: CustodianRegistry, day: str) -> None:
    refused = rf"date: '{day}' is not a YYYY-MM-DD calendar date"
    with pytest.raises(InvalidInputError, match=refused):
        reg.appoint("alice", "Alice", R.CUSTODIAN, E.EMPLOYEE, backup="km1", appointed_by="km2",
                    date=day)  # fmt: skip
    assert "alice" not in {c.id for c in reg.list(include_revoked=True)}


def test_custodian_without_active_backup_cannot_act(reg: CustodianRegistry) -> None:
    reg.appoint("alice", "Alice", R.CUSTODIAN, E.EMPLOYEE, backup="bob", appointed_by="km1")
    with pytest.raises(CustodianError, match="no active backup"):
        reg.check_may_act("alice")
    reg.appoint("bob", "Bob", R.BACKUP, E.EMPLOYEE, backup="alice", appointed_by="km1")
    assert reg.check_may_act("alice").id == "alice"


def test_revocation_of_backup_blocks_until_new_backup(reg: CustodianRegistry) -> None:
    _staff(reg, "alice", "bob", "carol")
    reg.revoke("bob", by="km1", reason="left the company")
    assert reg.get("bob").status is CustodianStatus.REVOKED
    with pytest.raises(CustodianError, match="'bob' is revoked"):
        reg.check_may_act("bob")
    with pytest.raises(CustodianError, match="no active backup"):
        reg.check_may_act("alice")  # alice's backup was bob
    with pytest.raises(CustodianError, match="not an active custodian"):
        reg.set_backup("alice", "bob", by="km1")
    reg.set_backup("alice", "carol", by="km1")
    assert reg.check_may_act("alice").backup == "carol"


def test_revoke_needs_other_key_manager_and_reason(reg: CustodianRegistry) -> None:
    with pytest.raises(CustodianError, match="own appointment"):
        reg.revoke("km1", by="km1", reason="x")
    with pytest.raises(InvalidInputError, match="reason"):
        reg.revoke("km1", by="km2", reason=" ")


def test_auditor_and_operator_never_hold_components(reg: CustodianRegistry) -> None:
    reg.appoint("aud", "Aud", R.AUDITOR, E.EMPLOYEE, backup="km1", appointed_by="km1")
    reg.appoint("ops", "Ops", R.OPERATOR, E.EMPLOYEE, backup="km1", appointed_by="km1")
    for cid in ("aud", "ops"):
        with pytest.raises(CustodianError, match="cannot hold a component"):
            reg.check_may_hold(cid, "demo-kek", 1)


def test_custodian_cannot_hold_two_components_in_one_version(reg: CustodianRegistry) -> None:
    _staff(reg, "alice", "bob")
    with pytest.raises(CustodianError, match="'alice' cannot hold two components of demo-kek"):
        reg.check_distinct_holders("demo-kek", [(1, "alice"), (2, "alice")])


def test_custodian_bound_to_one_slot_across_versions(reg: CustodianRegistry) -> None:
    _staff(reg, "alice", "bob", "carol")
    reg.record_holdings("demo-kek", 1, [(1, "alice"), (2, "bob")], kind="entry", ceremony="c1")
    # the same slots again for v2: fine
    reg.check_distinct_holders("demo-kek", [(1, "alice"), (2, "bob")])
    # swapped: alice would know component 1 of v1 and component 2 of v2
    with pytest.raises(CustodianError, match=r"holds component 1 of demo-kek@v1"):
        reg.check_distinct_holders("demo-kek", [(1, "carol"), (2, "alice")])
    # a different key label is unaffected
    reg.check_distinct_holders("demo-tk", [(2, "alice"), (1, "bob")])
    assert [h.custodian for h in reg.holdings("demo-kek")] == ["alice", "bob"]


def test_every_change_is_audited(tmp_path: Path) -> None:
    audit = ListAudit()
    r = CustodianRegistry(tmp_path / "a.sqlite", audit=audit)
    r.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="km2", appointed_by="board")
    r.appoint("km2", "Lee", R.KEY_MANAGER, E.EMPLOYEE, backup="km1", appointed_by="km1")
    r.revoke("km2", by="km1", reason="moved")
    assert [(e[0], e[1], e[2]) for e in audit.events] == [
        ("board", "custodian.appoint", "custodian:km1"),
        ("km1", "custodian.appoint", "custodian:km2"),
        ("km1", "custodian.revoke", "custodian:km2"),
    ]


def test_audit_failure_refuses_appointment(tmp_path: Path) -> None:
    r = CustodianRegistry(tmp_path / "b.sqlite", audit=BrokenAudit())
    with pytest.raises(AuditError, match=r"custodian\.appoint"):
        r.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="km2", appointed_by="board")
    assert r.list() == []
