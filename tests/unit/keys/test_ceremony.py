"""Ceremony rules (pipeline.keys.ceremony) against a small in-memory key store double.

The double implements only what the ceremony calls (import_components,
generate, rotate, get, active) and re-checks the KCV itself, so "nothing
stored" is observable.  The real soft store is exercised by
tests/scenario/test_ceremony_scenario.py.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.crypto.kcv import kcv
from pipeline.errors import AuditError, CeremonyError, ConfigError, CustodianError
from pipeline.keys.ceremony import (
    AnswersPrompter,
    Ceremony,
    CeremonyContext,
    ConsolePrompter,
    DeferredAudit,
    DiscrepancyLog,
    _describe,
    dual_actor,
    key_kcv,
    load_plan,
    parse_plan,
)
from pipeline.keys.components import format_share, shamir_split, xor_combine, xor_split
from pipeline.keys.custodians import (
    CustodianRegistry,
    CustodianRole,
    EmploymentType,
    ceremony_db_path,
)
from pipeline.keys.envelopes import EnvelopeLog, read_envelope
from pipeline.keys.hmk import hmk_kcv
from pipeline.keys.model import (
    Exportability,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
)

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # KCV 08D7B4
HMK = bytes(range(32))


class ListAudit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, dict[str, Any]]] = []

    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        self.events.append((actor, action, subject, result, details))


class FakeStore:
    """Records keys by label; checks the KCV like a real store would."""

    def __init__(self) -> None:
        self.keys: dict[str, list[tuple[KeyRecord, bytes]]] = {}
        self.calls: list[str] = []

    def _add(self, label: str, alg: KeyAlgorithm, usage: KeyUsage, role: KeyRole, owner: str,
             key: bytes, custodians: Sequence[str]) -> KeyRecord:  # fmt: skip
        versions = self.keys.setdefault(label, [])
        rec = KeyRecord(
            ref=KeyRef(label, len(versions) + 1), algorithm=alg, bits=len(key) * 8, usage=usage,
            role=role, mode_of_use="N", exportability=Exportability.E, owner=owner,
            state=KeyState.ACTIVE, kcv=key_kcv(alg, key), kcv_method="tdes",
            custodians=tuple(custodians), created_at="t", activated_at="t", updated_at="t",
        )  # fmt: skip
        versions.append((rec, key))
        return rec

    def import_components(self, label: str, algorithm: KeyAlgorithm, usage: KeyUsage,
                          role: KeyRole, owner: str, components: Sequence[bytes],
                          expected_kcv: bytes, *, custodians: Sequence[str], actor: str,
                          **_: Any) -> KeyRecord:  # fmt: skip
        self.calls.append(f"import_components:{label}:{actor}")
        key = xor_combine(components)
        if key_kcv(algorithm, key, len(expected_kcv)) != expected_kcv:
            raise CeremonyError("expected_kcv", "KCV mismatch")
        return self._add(label, algorithm, usage, role, owner, key, custodians)

    def generate(self, label: str, algorithm: KeyAlgorithm, usage: KeyUsage, role: KeyRole,
                 owner: str, *, actor: str, **_: Any) -> KeyRecord:  # fmt: skip
        self.calls.append(f"generate:{label}:{actor}")
        return self._add(label, algorithm, usage, role, owner, bytes(16), ())

    def active(self, label: str) -> KeyRef:
        return self.keys[label][-1][0].ref

    def get(self, ref: KeyRef | str, version: int | None = None) -> KeyRecord:
        if isinstance(ref, str):
            return self.keys[ref][-1][0]
        return self.keys[ref.label][ref.version - 1][0]


@pytest.fixture
def reg(tmp_path: Path) -> CustodianRegistry:
    r = CustodianRegistry(ceremony_db_path(tmp_path))
    R, E = CustodianRole, EmploymentType
    r.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="aud1", appointed_by="board")
    r.appoint("aud1", "Ann", R.AUDITOR, E.EMPLOYEE, backup="km1", appointed_by="km1")
    ring = ["alice", "bob", "carol", "dave"]
    for i, cid in enumerate(ring):
        r.appoint(cid, cid.title(), R.CUSTODIAN, E.EMPLOYEE, backup=ring[(i + 1) % 4],
                  appointed_by="km1")  # fmt: skip
    return r


def _ctx(tmp_path: Path, reg: CustodianRegistry, store: FakeStore | None,
         answers: dict[str, str] | None = None) -> tuple[CeremonyContext, ListAudit]:  # fmt: skip
    trail = ListAudit()
    audit = DeferredAudit(trail if store is not None else None)
    reg.audit = audit
    db = ceremony_db_path(tmp_path)
    ctx = CeremonyContext(
        registry=reg,
        envelopes=EnvelopeLog(db, reg, audit=audit),
        discrepancies=DiscrepancyLog(db, audit=audit),
        audit=audit,
        prompter=AnswersPrompter(answers or {"confirm:*": "yes"}, base=tmp_path, out=io.StringIO()),
        files_dir=tmp_path,
        out_dir=tmp_path / "out",
        store=store,  # type: ignore[arg-type]
    )
    return ctx, trail


def _write_components(tmp_path: Path, key: bytes, n: int, stem: str = "c") -> list[str]:
    names = []
    for i, part in enumerate(xor_split(key, n), 1):
        name = f"{stem}{i}.hex"
        (tmp_path / name).write_text(part.hex())
        names.append(name)
    return names


def _enter_plan(files: list[str], custodians: list[str], kcv_hex: str = "08D7B4",
                **step: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "ceremony": "t1", "officer": "km1", "witness": "aud1",
        "steps": [{
            "action": "enter-key", "label": "demo-kek", "algorithm": "tdes2", "usage": "K0",
            "role": "kek", "owner": "issuer:demo", "sender": "issuer:demo",
            "expected_kcv": kcv_hex,
            "components": [{"custodian": c, "file": f} for c, f in zip(custodians, files,
                                                                      strict=True)],
            **step,
        }],
    }  # fmt: skip


# --- plan parsing --------------------------------------------------------------------


def test_parse_plan_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match=r"unknown fields \['colour'\]"):
        parse_plan({"ceremony": "c", "officer": "a", "witness": "b", "colour": 1,
                    "steps": [{"action": "rotate", "label": "k"}]})  # fmt: skip


def test_parse_plan_requires_step_fields() -> None:
    with pytest.raises(ConfigError, match=r"steps\[1\].*enter-key needs"):
        parse_plan({"ceremony": "c", "officer": "a", "witness": "b",
                    "steps": [{"action": "enter-key", "label": "k"}]})  # fmt: skip


def test_parse_plan_refuses_officer_as_witness() -> None:
    with pytest.raises(CeremonyError, match="dual control"):
        parse_plan({"ceremony": "c", "officer": "alice", "witness": "alice",
                    "steps": [{"action": "rotate", "label": "k"}]})  # fmt: skip


def test_parse_plan_shamir_needs_threshold() -> None:
    raw = _enter_plan(["a", "b"], ["alice", "bob"], scheme="shamir")
    with pytest.raises(ConfigError, match="threshold"):
        parse_plan(raw)


def test_parse_plan_bad_kcv() -> None:
    with pytest.raises(ConfigError, match="expected_kcv"):
        parse_plan(_enter_plan(["a", "b"], ["alice", "bob"], kcv_hex="XYZ"))


def test_demo_plan_parses() -> None:
    plan = load_plan(Path(__file__).resolve().parents[3] / "config/demo/ceremony-plan.yaml")
    assert plan.officer != plan.witness
    assert plan.steps[0].action.value == "appoint"


# --- key entry -----------------------------------------------------------------------


def test_enter_key_from_three_components(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, trail = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 3)
    Ceremony(parse_plan(_enter_plan(files, ["alice", "bob", "carol"])), ctx).run()
    rec, stored = store.keys["demo-kek"][0]
    assert stored == KEY and rec.kcv.hex().upper() == "08D7B4"
    assert store.calls == [f"import_components:demo-kek:{dual_actor('km1', 'aud1')}"]
    assert [(h.slot, h.custodian) for h in reg.holdings("demo-kek")] == [
        (1, "alice"), (2, "bob"), (3, "carol")]  # fmt: skip
    entered = [e for e in trail.events if e[1] == "component.enter"]
    assert [e[0] for e in entered] == ["alice", "bob", "carol"]
    values = [(tmp_path / f).read_text().lower() for f in files]
    assert not any(v in repr(trail.events).lower() for v in values)


def test_each_component_kcv_shown_and_confirmed(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    out = io.StringIO()
    ctx.prompter = AnswersPrompter({"confirm:*": "yes"}, out=out)
    files = _write_components(tmp_path, KEY, 2)
    Ceremony(parse_plan(_enter_plan(files, ["alice", "bob"])), ctx).run()
    text = out.getvalue()
    for f in files:
        shown = kcv(bytes.fromhex((tmp_path / f).read_text())).hex().upper()
        assert f"KCV {shown}" in text
    assert text.count("(from answers)") == 2


def test_unconfirmed_component_stores_nothing(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store, {"confirm:demo-kek:1": "yes", "confirm:demo-kek:2": "no"})
    files = _write_components(tmp_path, KEY, 2)
    with pytest.raises(CeremonyError, match="bob did not confirm"):
        Ceremony(parse_plan(_enter_plan(files, ["alice", "bob"])), ctx).run()
    assert store.keys == {}
    assert [d.kind for d in ctx.discrepancies.list("issuer:demo")] == ["not-confirmed"]


def test_combined_kcv_mismatch_records_discrepancy_and_stores_nothing(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    store = FakeStore()
    ctx, trail = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 2)
    with pytest.raises(CeremonyError, match="KCV mismatch for demo-kek: combined 08D7B4"):
        Ceremony(parse_plan(_enter_plan(files, ["alice", "bob"], kcv_hex="AABBCC")), ctx).run()
    assert store.keys == {} and store.calls == []
    assert reg.holdings("demo-kek") == []
    (d,) = ctx.discrepancies.list("issuer:demo")
    assert (d.kind, d.expected, d.actual, d.key) == ("combined-kcv", "AABBCC", "08D7B4", "demo-kek")
    assert ("ceremony.discrepancy", "recorded") in [(e[1], e[3]) for e in trail.events]
    assert ("ceremony.enter-key", "refused") in [(e[1], e[3]) for e in trail.events]


def test_sender_component_kcv_mismatch_aborts(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 2)
    raw = _enter_plan(files, ["alice", "bob"])
    raw["steps"][0]["components"][1]["kcv"] = "000000"
    with pytest.raises(CeremonyError, match="KCV mismatch: entered"):
        Ceremony(parse_plan(raw), ctx).run()
    assert store.keys == {}
    assert [d.kind for d in ctx.discrepancies.list()] == ["component-kcv"]


def test_one_custodian_cannot_enter_two_components(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 2)
    with pytest.raises(CustodianError, match="'alice' cannot hold two components of demo-kek"):
        Ceremony(parse_plan(_enter_plan(files, ["alice", "alice"])), ctx).run()
    assert store.keys == {}


def test_custodian_bound_to_slot_across_versions(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 2)
    Ceremony(parse_plan(_enter_plan(files, ["alice", "bob"])), ctx).run()
    files2 = _write_components(tmp_path, KEY, 2, stem="d")
    with pytest.raises(CustodianError, match="'bob' holds component 2 of demo-kek@v1"):
        Ceremony(parse_plan(_enter_plan(files2, ["bob", "alice"])), ctx).run()
    assert len(store.keys["demo-kek"]) == 1
    Ceremony(parse_plan(_enter_plan(files2, ["alice", "bob"])), ctx).run()  # same slots: fine
    assert len(store.keys["demo-kek"]) == 2


def test_auditor_cannot_hold_a_component(tmp_path: Path, reg: CustodianRegistry) -> None:
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    files = _write_components(tmp_path, KEY, 2)
    with pytest.raises(CustodianError, match="auditor and cannot hold"):
        Ceremony(parse_plan(_enter_plan(files, ["alice", "aud1"])), ctx).run()


def test_short_component_refused(tmp_path: Path, reg: CustodianRegistry) -> None:
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    (tmp_path / "s1").write_text("00" * 8)
    (tmp_path / "s2").write_text("00" * 8)
    with pytest.raises(CeremonyError, match="full length"):
        Ceremony(parse_plan(_enter_plan(["s1", "s2"], ["alice", "bob"])), ctx).run()


def test_single_component_refused(tmp_path: Path, reg: CustodianRegistry) -> None:
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    (tmp_path / "k").write_text(KEY.hex())
    with pytest.raises(CeremonyError, match=r"2\.\.3 components"):
        Ceremony(parse_plan(_enter_plan(["k"], ["alice"])), ctx).run()


def test_step_signed_by_its_own_witness_refused(tmp_path: Path, reg: CustodianRegistry) -> None:
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    plan = parse_plan({"ceremony": "c", "officer": "km1", "witness": "aud1", "steps": [
        {"action": "generate", "label": "demo-tk", "algorithm": "tdes2", "usage": "K0",
         "role": "tk", "owner": "bureau:demo", "by": "alice", "witness": "alice"}]})  # fmt: skip
    with pytest.raises(CeremonyError, match="cannot witness their own action"):
        Ceremony(plan, ctx).run()


def test_revoked_officer_cannot_run_a_step(tmp_path: Path, reg: CustodianRegistry) -> None:
    reg.appoint("km2", "K2", CustodianRole.KEY_MANAGER, EmploymentType.EMPLOYEE, backup="km1",
                appointed_by="km1")  # fmt: skip
    reg.revoke("alice", by="km2", reason="left")
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    plan = parse_plan({"ceremony": "c", "officer": "alice", "witness": "aud1", "steps": [
        {"action": "generate", "label": "demo-tk", "algorithm": "tdes2", "usage": "K0",
         "role": "tk", "owner": "bureau:demo"}]})  # fmt: skip
    with pytest.raises(CustodianError, match="'alice' is revoked"):
        Ceremony(plan, ctx).run()


def test_shamir_two_of_three_entry(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    shares = shamir_split(KEY, 2, 3)
    (tmp_path / "s1").write_text(format_share(shares[0]))
    (tmp_path / "s3").write_text(format_share(shares[2]))
    raw = _enter_plan(["s1", "s3"], ["alice", "carol"], scheme="shamir", threshold=2)
    raw["steps"][0]["components"][1]["slot"] = 3
    Ceremony(parse_plan(raw), ctx).run()
    assert store.keys["demo-kek"][0][1] == KEY


# --- HMK entry and deferred audit ------------------------------------------------------------


def test_enter_hmk_opens_store_and_flushes_deferred_audit(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    ctx, _ = _ctx(tmp_path, reg, None)
    trail = ListAudit()
    opened: list[tuple[bytes, bytes, list[str]]] = []

    def open_with_hmk(hmk: bytes, kcv5: bytes, custodians: Sequence[str]) -> Any:
        opened.append((hmk, kcv5, list(custodians)))
        return FakeStore(), trail

    ctx.open_with_hmk = open_with_hmk
    parts = xor_split(HMK, 3)
    for i, p in enumerate(parts, 1):
        (tmp_path / f"h{i}").write_text(p.hex())
    plan = parse_plan({"ceremony": "h", "officer": "km1", "witness": "aud1", "steps": [
        {"action": "enter-hmk", "expected_kcv": hmk_kcv(HMK).hex(),
         "components": [{"custodian": c, "file": f"h{i}"}
                        for i, c in enumerate(["alice", "bob", "carol"], 1)]}]})  # fmt: skip
    Ceremony(plan, ctx).run()
    assert opened == [(HMK, hmk_kcv(HMK), ["alice", "bob", "carol"])]
    actions = [e[1] for e in trail.events]
    assert actions[:4] == ["ceremony.start", "component.enter", "component.enter",
                           "component.enter"]  # fmt: skip
    assert trail.events[0][4]["deferred"] is True
    assert actions[-2:] == ["hmk.enter", "ceremony.end"]
    assert ctx.audit.pending == 0


def test_deferred_audit_failure_is_fail_closed() -> None:
    class Broken:
        def append(self, *a: Any, **k: Any) -> None:
            raise OSError("no space")

    audit = DeferredAudit()
    audit.append("a", "x", "s", "ok")
    with pytest.raises(AuditError):
        audit.attach(Broken())
    assert audit.pending == 1


# --- key output as components ------------------------------------------------------------------


def test_generate_components_writes_envelopes(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    plan = parse_plan({"ceremony": "g", "officer": "km1", "witness": "aud1", "steps": [
        {"action": "generate-components", "label": "demo-zmk", "algorithm": "tdes2",
         "usage": "K1", "role": "kbpk", "owner": "bureau:demo",
         "custodians": ["alice", "bob", "carol"]}]})  # fmt: skip
    Ceremony(plan, ctx).run()
    rec, key = store.keys["demo-zmk"][0]
    envs = ctx.envelopes.list("demo-zmk@v1")
    assert [e.custodian for e in envs] == ["alice", "bob", "carol"]
    contents = [read_envelope(Path(e.path)) for e in envs]
    assert xor_combine([c.value for c in contents]) == key
    assert {c.key_kcv for c in contents} == {rec.kcv.hex().upper()}
    assert [h.kind for h in reg.holdings("demo-zmk")] == ["output"] * 3


# --- prompters -----------------------------------------------------------------------------------


def test_answers_prompter_file_and_wildcard(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("00FF\n")
    p = AnswersPrompter({"component:k:1": "file:c.txt", "confirm:*": "no", "confirm:k:2": "yes"},
                        base=tmp_path, out=io.StringIO())  # fmt: skip
    assert p.secret("component:k:1", "x").strip() == "00FF"
    assert p.confirm("confirm:k:2", "?") is True
    assert p.confirm("confirm:k:1", "?") is False
    with pytest.raises(CeremonyError, match="no answer"):
        p.secret("component:k:2", "x")


def test_console_prompter_reads_stdin_when_not_a_tty() -> None:
    out = io.StringIO()
    p = ConsolePrompter(out=out, stdin=io.StringIO("0011\ny\n"))
    assert p.secret("component:k:1", "enter") == "0011"
    assert p.confirm("confirm:k:1", "ok?") is True
    assert "0011" not in out.getvalue()
    with pytest.raises(CeremonyError, match="end of input"):
        p.confirm("confirm:k:2", "again?")


def test_describe_never_shows_key() -> None:
    store = FakeStore()
    rec = store._add("k", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, "o", KEY, ())
    text = _describe(replace(rec))
    assert KEY.hex() not in text.lower() and "kcv=08D7B4" in text
