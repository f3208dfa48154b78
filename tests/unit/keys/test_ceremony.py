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
from pipeline.errors import AuditError, CeremonyError, ConfigError, CustodianError, KeyUsageError
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
from pipeline.keys.components import (
    Share,
    format_share,
    shamir_combine,
    shamir_split,
    xor_combine,
    xor_split,
)
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
from tests.unit.keys.storekit import new_store

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

    def export_components(self, ref: KeyRef, count: int, *, custodians: Sequence[str],
                          actor: str, threshold: int | None = None,
                          ) -> tuple[bytes, ...]:  # fmt: skip
        self.calls.append(f"export_components:{ref}:{actor}:{','.join(custodians)}")
        rec, key = self.keys[ref.label][ref.version - 1]
        if rec.exportability is not Exportability.E:
            raise KeyUsageError(str(ref), "exportability N does not permit export")
        if threshold is None:
            return xor_split(key, count)
        return tuple(s.value for s in shamir_split(key, threshold, count))

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


def _export_plan(key: str, custodians: list[str], **step: Any) -> dict[str, Any]:
    return {"ceremony": "x", "officer": "km1", "witness": "aud1", "steps": [
        {"action": "export-components", "key": key, "custodians": custodians, **step}]}  # fmt: skip


def test_parse_export_components_needs_key_and_custodians() -> None:
    with pytest.raises(ConfigError, match=r"export-components needs \['custodians'\]"):
        parse_plan(_export_plan("demo-tk", []))
    with pytest.raises(ConfigError, match="Shamir needs a threshold"):
        parse_plan(_export_plan("demo-tk", ["alice", "bob"], scheme="shamir"))


def test_export_components_of_an_existing_key(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, trail = _ctx(tmp_path, reg, store)
    store._add("demo-tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", KEY, ())
    Ceremony(parse_plan(_export_plan("demo-tk", ["alice", "bob", "carol"])), ctx).run()
    assert store.calls == ["export_components:demo-tk@v1:km1+aud1:alice,bob,carol"]
    envs = ctx.envelopes.list("demo-tk@v1")
    assert [(e.slot, e.count, e.custodian, e.state.value) for e in envs] == [
        (1, 3, "alice", "created"), (2, 3, "bob", "created"),
        (3, 3, "carol", "created")]  # fmt: skip
    contents = [read_envelope(Path(e.path)) for e in envs]
    assert xor_combine([c.value for c in contents]) == KEY
    for c, e in zip(contents, envs, strict=True):
        assert c.component_kcv == e.component_kcv == kcv(c.value).hex().upper()
        assert c.key_kcv == "08D7B4" and c.scheme == "xor" and c.threshold == 3
    assert [(h.slot, h.custodian, h.kind) for h in reg.holdings("demo-tk")] == [
        (1, "alice", "output"), (2, "bob", "output"), (3, "carol", "output")]  # fmt: skip
    created = [e for e in trail.events if e[1] == "envelope.create"]
    assert [e[4]["custodian"] for e in created] == ["alice", "bob", "carol"]
    assert not any(c.value.hex() in repr(trail.events).lower() for c in contents)


def test_export_components_shamir(tmp_path: Path, reg: CustodianRegistry) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    store._add("demo-zmk", KeyAlgorithm.TDES2, KeyUsage.K1, KeyRole.KBPK, "bureau:demo", KEY, ())
    plan = _export_plan("demo-zmk@v1", ["alice", "bob", "carol", "dave"], scheme="shamir",
                        threshold=2)  # fmt: skip
    Ceremony(parse_plan(plan), ctx).run()
    contents = [read_envelope(Path(e.path)) for e in ctx.envelopes.list("demo-zmk@v1")]
    assert [(c.slot, c.threshold, c.scheme) for c in contents] == [
        (i, 2, "shamir") for i in (1, 2, 3, 4)]  # fmt: skip
    assert shamir_combine([Share(c.slot, c.value) for c in contents[2:]], 2) == KEY


def test_export_components_same_custodian_twice_refused_before_the_store(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    store._add("demo-tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", KEY, ())
    with pytest.raises(CustodianError, match="'alice' cannot hold two components of demo-tk"):
        Ceremony(parse_plan(_export_plan("demo-tk", ["alice", "bob", "alice"])), ctx).run()
    assert store.calls == [] and ctx.envelopes.list() == []


def test_export_components_respects_the_holding_ledger(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    """Entered by alice (1) and bob (2): exported to bob as component 1 is refused."""
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    files = _write_components(tmp_path, KEY, 2)
    Ceremony(parse_plan(_enter_plan(files, ["alice", "bob"])), ctx).run()
    with pytest.raises(CustodianError, match="'bob' holds component 2 of demo-kek@v1"):
        Ceremony(parse_plan(_export_plan("demo-kek", ["bob", "alice"])), ctx).run()
    assert [c for c in store.calls if c.startswith("export")] == []
    Ceremony(parse_plan(_export_plan("demo-kek", ["alice", "bob", "carol"])), ctx).run()
    assert len(ctx.envelopes.list("demo-kek@v1")) == 3


def test_export_components_count_and_refusal_from_the_store(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    store = FakeStore()
    ctx, trail = _ctx(tmp_path, reg, store)
    store._add("demo-tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", KEY, ())
    with pytest.raises(CeremonyError, match=r"XOR output takes 2\.\.3 custodians, got 4"):
        Ceremony(parse_plan(_export_plan("demo-tk", ["alice", "bob", "carol", "dave"])), ctx).run()
    rec = store._add("demo-imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "bin:1", KEY, ())
    store.keys["demo-imk"][0] = (replace(rec, exportability=Exportability.N), KEY)
    with pytest.raises(KeyUsageError, match="does not permit export"):
        Ceremony(parse_plan(_export_plan("demo-imk", ["alice", "bob"])), ctx).run()
    assert ctx.envelopes.list() == [] and reg.holdings("demo-imk") == []
    assert ("ceremony.export-components", "refused") in [(e[1], e[3]) for e in trail.events]


# --- Shamir holders on the key record --------------------------------------------------------


def test_shamir_entry_records_every_share_holder(tmp_path: Path, reg: CustodianRegistry) -> None:
    """4 shares of a 3-of-5 key entered: the record names all four holders (not three)."""
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    shares = shamir_split(KEY, 3, 5)
    names = []
    for share in shares[:4]:
        (tmp_path / f"s{share.index}").write_text(format_share(share))
        names.append(f"s{share.index}")
    holders = ["alice", "bob", "carol", "dave"]
    raw = _enter_plan(names, holders, scheme="shamir", threshold=3)
    Ceremony(parse_plan(raw), ctx).run()
    rec, key = store.keys["demo-kek"][0]
    assert key == KEY and rec.custodians == tuple(holders)


def test_shamir_generate_components_records_every_holder(
    tmp_path: Path, reg: CustodianRegistry
) -> None:
    store = FakeStore()
    ctx, _ = _ctx(tmp_path, reg, store)
    reg.appoint("erin", "Erin", CustodianRole.CUSTODIAN, EmploymentType.EMPLOYEE, backup="alice",
                appointed_by="km1")  # fmt: skip
    holders = ["alice", "bob", "carol", "dave", "erin"]
    plan = parse_plan({"ceremony": "g", "officer": "km1", "witness": "aud1", "steps": [
        {"action": "generate-components", "label": "demo-zmk", "algorithm": "tdes2",
         "usage": "K1", "role": "kbpk", "owner": "bureau:demo", "scheme": "shamir",
         "threshold": 2, "custodians": holders}]})  # fmt: skip
    Ceremony(plan, ctx).run()
    rec, key = store.keys["demo-zmk"][0]
    assert rec.custodians == tuple(holders)
    contents = [read_envelope(Path(e.path)) for e in ctx.envelopes.list("demo-zmk@v1")]
    assert shamir_combine([Share(c.slot, c.value) for c in contents[3:]], 2) == key


def test_shamir_entry_into_the_soft_store(tmp_path: Path, reg: CustodianRegistry) -> None:
    """The real soft store records all four share holders; a wrong share stores nothing."""
    store = new_store(tmp_path)
    ctx, _ = _ctx(tmp_path, reg, FakeStore())
    ctx.store = store
    shares = shamir_split(KEY, 3, 5)
    for share in shares:
        (tmp_path / f"s{share.index}").write_text(format_share(share))
    holders = ["alice", "bob", "carol", "dave"]
    bad = Share(4, bytes(a ^ 1 for a in shares[3].value))
    (tmp_path / "bad4").write_text(format_share(bad))
    wrong = _enter_plan(["s1", "s2", "s3", "bad4"], holders, scheme="shamir", threshold=3)
    wrong["steps"][0]["components"].reverse()  # the bad share is among the first three used
    for i, spec in enumerate(wrong["steps"][0]["components"]):
        spec["slot"] = 4 - i
    with pytest.raises(CeremonyError, match="KCV mismatch for demo-kek"):
        Ceremony(parse_plan(wrong), ctx).run()
    assert [r.label for r in store.list()] == ["audit-mac"]
    raw = _enter_plan(["s1", "s2", "s3", "s4"], holders, scheme="shamir", threshold=3)
    Ceremony(parse_plan(raw), ctx).run()
    rec = store.get("demo-kek")
    assert rec.custodians == tuple(holders) and rec.kcv.hex().upper() == "08D7B4"
    event = [e for e in store.audit_trail.events() if e.action == "key.import_components"][-1]
    assert event.details["custodians"] == holders and event.details["components"] == 2
    assert store.audit_trail.verify().ok
    store.close()


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
