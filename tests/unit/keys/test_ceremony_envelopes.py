"""Envelope files and the signed-off envelope log (pipeline.keys.envelopes)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from pipeline.crypto.kcv import kcv
from pipeline.errors import AuditError, CeremonyError, CustodianError, InvalidInputError
from pipeline.keys.components import xor_combine, xor_split
from pipeline.keys.custodians import CustodianRegistry, CustodianRole, EmploymentType
from pipeline.keys.envelopes import (
    EnvelopeLog,
    EnvelopeState,
    parse_envelope,
    read_envelope,
)

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


class ListAudit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.fail = False

    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        if self.fail:
            raise OSError("read-only")
        self.events.append((actor, action, subject, details))


@pytest.fixture
def env(tmp_path: Path) -> tuple[EnvelopeLog, ListAudit]:
    audit = ListAudit()
    reg = CustodianRegistry(tmp_path / "c.sqlite", audit=audit)
    reg.appoint("km1", "Kim", CustodianRole.KEY_MANAGER, EmploymentType.EMPLOYEE,
                backup="km2", appointed_by="board")  # fmt: skip
    reg.appoint("km2", "Lee", CustodianRole.KEY_MANAGER, EmploymentType.EMPLOYEE,
                backup="km1", appointed_by="km1")  # fmt: skip
    for cid, backup in (("alice", "bob"), ("bob", "carol"), ("carol", "alice")):
        reg.appoint(cid, cid.title(), CustodianRole.CUSTODIAN, EmploymentType.EMPLOYEE,
                    backup=backup, appointed_by="km1")  # fmt: skip
    return EnvelopeLog(tmp_path / "c.sqlite", reg, audit=audit), audit


def _output(log: EnvelopeLog, out: Path) -> list[str]:
    parts = xor_split(KEY, 3)
    serials = []
    for i, (part, who) in enumerate(zip(parts, ("alice", "bob", "carol"), strict=True), 1):
        rec = log.create(
            out, key="demo-tk@v1", algorithm="tdes2", scheme="xor", slot=i, count=3,
            threshold=3, custodian=who, value=part, component_kcv=kcv(part).hex().upper(),
            key_kcv=kcv(KEY).hex().upper(), kcv_method="tdes", actor="km1", ceremony="t",
        )  # fmt: skip
        serials.append(rec.serial)
    return serials


def test_each_component_in_its_own_envelope_with_kcv_and_serial(
    env: tuple[EnvelopeLog, ListAudit], tmp_path: Path
) -> None:
    log, _ = env
    serials = _output(log, tmp_path / "out")
    assert serials == ["ENV000001", "ENV000002", "ENV000003"]
    contents = [read_envelope(Path(log.get(s).path)) for s in serials]
    assert [c.custodian for c in contents] == ["alice", "bob", "carol"]
    assert all(c.key_kcv == "08D7B4" for c in contents)
    for c in contents:
        assert c.component_kcv == kcv(c.value).hex().upper()
    assert xor_combine([c.value for c in contents]) == KEY
    mode = Path(log.get(serials[0]).path).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_audit_never_carries_component_values(
    env: tuple[EnvelopeLog, ListAudit], tmp_path: Path
) -> None:
    log, audit = env
    serials = _output(log, tmp_path / "out")
    values = [read_envelope(Path(log.get(s).path)).value.hex() for s in serials]
    dump = repr(audit.events).lower()
    assert not any(v in dump for v in values)
    assert [e[1] for e in audit.events[-3:]] == ["envelope.create"] * 3


def test_full_life_signed_off(env: tuple[EnvelopeLog, ListAudit], tmp_path: Path) -> None:
    log, _ = env
    serial = _output(log, tmp_path / "out")[0]
    path = Path(log.get(serial).path)
    log.sign_off(serial, EnvelopeState.HANDED_OVER, by="alice")
    log.sign_off(serial, EnvelopeState.OPENED, by="alice")
    rec = log.sign_off(serial, EnvelopeState.DESTROYED, by="alice", witness="km2")
    assert rec.state is EnvelopeState.DESTROYED
    assert not path.exists()
    assert [(e.event, e.by, e.witness) for e in log.events(serial)] == [
        (EnvelopeState.CREATED, "km1", None),
        (EnvelopeState.HANDED_OVER, "alice", None),
        (EnvelopeState.OPENED, "alice", None),
        (EnvelopeState.DESTROYED, "alice", "km2"),
    ]


def test_backup_may_open(env: tuple[EnvelopeLog, ListAudit], tmp_path: Path) -> None:
    log, _ = env
    serial = _output(log, tmp_path / "out")[0]  # alice's; her backup is bob
    log.sign_off(serial, EnvelopeState.HANDED_OVER, by="alice")
    assert log.sign_off(serial, EnvelopeState.OPENED, by="bob").state is EnvelopeState.OPENED


def test_refusals(env: tuple[EnvelopeLog, ListAudit], tmp_path: Path) -> None:
    log, _ = env
    serial = _output(log, tmp_path / "out")[0]
    with pytest.raises(CustodianError, match="addressed to 'alice'"):
        log.sign_off(serial, EnvelopeState.HANDED_OVER, by="carol")
    with pytest.raises(CeremonyError, match="is created; cannot record opened"):
        log.sign_off(serial, EnvelopeState.OPENED, by="alice")
    log.sign_off(serial, EnvelopeState.HANDED_OVER, by="alice")
    with pytest.raises(CustodianError, match="only 'alice' or their backup"):
        log.sign_off(serial, EnvelopeState.OPENED, by="carol")
    with pytest.raises(CustodianError, match="second custodian"):
        log.sign_off(serial, EnvelopeState.DESTROYED, by="alice")
    with pytest.raises(CeremonyError, match="unknown envelope"):
        log.get("ENV999999")


def test_audit_failure_leaves_no_envelope(
    env: tuple[EnvelopeLog, ListAudit], tmp_path: Path
) -> None:
    log, audit = env
    audit.fail = True
    with pytest.raises(AuditError):
        _output(log, tmp_path / "out")
    assert log.list() == []
    assert list((tmp_path / "out").glob("*.envelope")) == []


def test_parse_envelope_rejects_foreign_text() -> None:
    with pytest.raises(InvalidInputError, match="not a cardprep"):
        parse_envelope("hello\n")
