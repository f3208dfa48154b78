"""Key misuse: every forbidden (usage, operation) pair is refused by the real key store.

Issue 8 "Key misuse".  The cases are generated from
:data:`pipeline.keys.usage.PERMITTED_USAGES` (the one source of truth): for
every stored usage and every operation the table does not permit, a key of
that usage (mode of use ``N``, so only the usage rule can refuse) is put in
the operation's key slot of the *real* :class:`SoftKeyStore` call, and the
call must raise :class:`KeyUsageError` naming the key's ``label@vN``, its
usage and the operation.  A control test runs every operation once with a
permitted usage, so a wrong call mapping cannot make the refusals pass
vacuously.  ``tests/unit/keys/test_usage_table.py`` checks the table
function itself; this file checks that every store entry point applies it.

Then the ceremony rules with the real store: a single custodian cannot
complete a ceremony (plan, component holders, the store's own component
import), and a component KCV mismatch stores nothing (no key, no version,
audited refusal, trail still verifies).
"""

from __future__ import annotations

import io
import itertools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.crypto.kcv import kcv
from pipeline.errors import (
    CardprepError,
    CeremonyError,
    CustodianError,
    KeyNotFoundError,
    KeyUsageError,
)
from pipeline.keys.ceremony import (
    AnswersPrompter,
    Ceremony,
    CeremonyContext,
    DeferredAudit,
    DiscrepancyLog,
    parse_plan,
)
from pipeline.keys.components import xor_split
from pipeline.keys.custodians import (
    CustodianRegistry,
    CustodianRole,
    EmploymentType,
    ceremony_db_path,
)
from pipeline.keys.envelopes import EnvelopeLog
from pipeline.keys.model import (
    DerivationMethod,
    KeyAlgorithm,
    KeyRef,
    KeyRole,
    KeyUsage,
)
from pipeline.keys.soft import SoftKeyStore
from pipeline.keys.usage import PERMITTED_USAGES, Operation

HMK = bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2)
PAN = "4761739001010119"
STORED_USAGES = [u for u in KeyUsage if u is not KeyUsage.HM]
ALGORITHM = {
    KeyUsage.S0: KeyAlgorithm.SM2,
    KeyUsage.M6: KeyAlgorithm.AES256,
    KeyUsage.M7: KeyAlgorithm.AES256,
    KeyUsage.D0: KeyAlgorithm.AES256,
}
FORBIDDEN = [(u, op) for u, op in itertools.product(STORED_USAGES, Operation)
             if u not in PERMITTED_USAGES[op]]  # fmt: skip
HM_PAIRS = [(KeyUsage.HM, op) for op in Operation]


def _new_store(tmp_path: Path) -> SoftKeyStore:
    return SoftKeyStore.create(tmp_path / f"keys-{secrets.token_hex(4)}.db", HMK,
                               actor="officer-1", hmk_custodians=("cust-a", "cust-b"))  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store with a key of every usage (mode N) and valid partner keys."""
    store = _new_store(tmp_path_factory.mktemp("misuse"))
    keys: dict[KeyUsage, KeyRef] = {}
    for usage in STORED_USAGES:
        rec = store.generate(f"k-{usage.value.lower()}", ALGORITHM.get(usage, KeyAlgorithm.TDES2),
                             usage, KeyRole.DATA, "issuer:test", actor="officer-1")  # fmt: skip
        keys[usage] = rec.ref
    partner = {
        "kek": store.generate("p-kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK,
                              "issuer:test", actor="officer-1").ref,
        "tk": store.generate("p-tk", KeyAlgorithm.AES256, KeyUsage.K0, KeyRole.TK,
                             "bureau:test", actor="officer-1").ref,
        "kbpk": store.generate("p-kbpk", KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK,
                               "bureau:test", actor="officer-1").ref,
        "exportable": store.generate("p-exp", KeyAlgorithm.TDES2, KeyUsage.D0, KeyRole.DATA,
                                     "issuer:test", actor="officer-1").ref,
    }  # fmt: skip
    block = store.export_key_block(partner["exportable"], partner["kbpk"], actor="officer-1")
    return {"store": store, "keys": keys, "partner": partner, "block": block}


def _call(op: Operation, key: KeyRef, w: dict[str, Any]) -> Callable[[], object]:
    """The store call that uses ``key`` for ``op`` (partners fill the other slots)."""
    s: SoftKeyStore = w["store"]
    p = w["partner"]
    calls: dict[Operation, Callable[[], object]] = {
        Operation.DERIVE_CARD_KEY: lambda: s.derive_and_wrap(key, PAN, "01",
                                                             DerivationMethod.OPTION_A, p["tk"]),
        Operation.DIVERSIFY: lambda: s.diversify_and_wrap(key, bytes(10),
                                                          DerivationMethod.EMV_CPS, p["tk"]),
        Operation.WRAP_OUTPUT: lambda: s.encrypt_under_tk(key, b"12345678"),
        Operation.TRANSLATE_FROM: lambda: s.translate(bytes(16), key, p["tk"]),
        Operation.TRANSLATE_TO: lambda: s.translate(bytes(16), p["kek"], key),
        Operation.WRAP_KEY_BLOCK: lambda: s.export_key_block(p["exportable"], key,
                                                             actor="officer-1"),
        Operation.UNWRAP_KEY_BLOCK: lambda: s.import_key_block(
            f"imported-{secrets.token_hex(3)}", w["block"], key, KeyRole.DATA, "issuer:test",
            expected_kcv=None, actor="officer-1"),
        Operation.EXPORT: lambda: s.export_key_block(key, p["kbpk"], actor="officer-1"),
        Operation.SIGN: lambda: s.sign(key, bytes(32)),
        Operation.MAC: lambda: s.mac(key, b"data", "manifest"),
        Operation.VERIFY_MAC: lambda: s.verify_mac(key, b"data", bytes(16), "manifest"),
        Operation.PAN_TOKEN: lambda: s.pan_token(key, PAN),
        Operation.ENCRYPT_DATA: lambda: s.encrypt_data(key, b"data", "output"),
        Operation.DECRYPT_DATA: lambda: s.decrypt_data(key, bytes(40), "output"),
        Operation.KCV: lambda: s.kcv(key),
        Operation.CHECK_WRAPPED: lambda: s.kcv_of_wrapped(key, bytes(16), "tdes"),
    }  # fmt: skip
    assert set(calls) == set(Operation), "a new Operation needs its store call here"
    return calls[op]


def test_cases_are_generated_from_the_table() -> None:
    assert len(FORBIDDEN) >= 100
    assert {op for _, op in FORBIDDEN} >= set(Operation) - {Operation.EXPORT, Operation.KCV}


@pytest.mark.parametrize(("usage", "operation"), FORBIDDEN,
                         ids=[f"{u.value}-{op.value}" for u, op in FORBIDDEN])  # fmt: skip
def test_forbidden_pair_is_refused_by_the_store(
    usage: KeyUsage, operation: Operation, world: dict[str, Any]
) -> None:
    store: SoftKeyStore = world["store"]
    key = world["keys"][usage]
    before = len(store.list())
    with pytest.raises(KeyUsageError) as err:
        _call(operation, key, world)()
    message = str(err.value)
    assert str(key) in message, message
    assert f"usage {usage.value}" in message, message
    assert operation.value in message, message
    assert len(store.list()) == before  # nothing imported


@pytest.mark.parametrize("operation", list(Operation), ids=lambda o: o.value)
def test_control_a_permitted_usage_is_not_refused(operation: Operation,
                                                  world: dict[str, Any]) -> None:  # fmt: skip
    """The same call with a permitted usage passes the usage check (mapping sanity)."""
    usage = sorted(PERMITTED_USAGES[operation], key=lambda u: u.value)[0]
    if operation is Operation.EXPORT:
        usage = KeyUsage.D0  # exportable: world['keys'] are generated with exportability E
    key = world["keys"][usage]
    if operation is Operation.UNWRAP_KEY_BLOCK:
        key = world["partner"]["kbpk"]  # the block was made under this K1
    elif operation in (Operation.WRAP_OUTPUT, Operation.TRANSLATE_TO, Operation.CHECK_WRAPPED):
        key = world["partner"]["tk"]
    elif operation is Operation.TRANSLATE_FROM:
        key = world["partner"]["kek"]
    elif operation is Operation.WRAP_KEY_BLOCK:
        key = world["partner"]["kbpk"]
    try:
        _call(operation, key, world)()
    except KeyUsageError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"{operation.value} with usage {usage.value} refused: {exc}")
    except CardprepError:
        pass  # e.g. decrypt_data of a forged envelope: refused for its content, not its usage


@pytest.mark.parametrize("operation", list(Operation), ids=lambda o: o.value)
def test_hmk_usage_never_becomes_a_usable_key(operation: Operation, tmp_path: Path) -> None:
    """HM pairs: the host master key is never stored, so no operation can use one."""
    store = _new_store(tmp_path)
    with pytest.raises(KeyUsageError, match=r"hm-key: usage HM"):
        store.generate("hm-key", KeyAlgorithm.AES256, KeyUsage.HM, KeyRole.HMK, "bureau:test",
                       actor="officer-1")  # fmt: skip
    with pytest.raises(KeyNotFoundError):
        store.get("hm-key")
    assert KeyUsage.HM not in PERMITTED_USAGES[operation]


# --- ceremonies with the real store ---------------------------------------------------------

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # TEST key, KCV 08D7B4


@pytest.fixture
def registry(tmp_path: Path) -> CustodianRegistry:
    r = CustodianRegistry(ceremony_db_path(tmp_path))
    R, E = CustodianRole, EmploymentType
    r.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="aud1", appointed_by="board")
    r.appoint("aud1", "Ann", R.AUDITOR, E.EMPLOYEE, backup="km1", appointed_by="km1")
    for cid, backup in (("alice", "bob"), ("bob", "alice")):
        r.appoint(cid, cid.title(), R.CUSTODIAN, E.EMPLOYEE, backup=backup, appointed_by="km1")
    return r


def _ceremony(tmp_path: Path, registry: CustodianRegistry, store: SoftKeyStore,
              plan: dict[str, Any]) -> Ceremony:  # fmt: skip
    audit = DeferredAudit(store.audit_trail)
    registry.audit = audit
    db = ceremony_db_path(tmp_path)
    ctx = CeremonyContext(
        registry=registry, envelopes=EnvelopeLog(db, registry, audit=audit),
        discrepancies=DiscrepancyLog(db, audit=audit), audit=audit,
        prompter=AnswersPrompter({"confirm:*": "yes"}, base=tmp_path, out=io.StringIO()),
        files_dir=tmp_path, out_dir=tmp_path / "out", store=store,
    )  # fmt: skip
    return Ceremony(parse_plan(plan), ctx)


def _enter_plan(tmp_path: Path, holders: list[str], *, officer: str = "km1",
                witness: str = "aud1", kcv_hex: str = "08D7B4") -> dict[str, Any]:  # fmt: skip
    files = []
    parts = xor_split(KEY, len(holders)) if len(holders) > 1 else [KEY]
    for i, part in enumerate(parts, 1):
        (tmp_path / f"c{i}.hex").write_text(part.hex())
        files.append(f"c{i}.hex")
    return {
        "ceremony": "misuse", "officer": officer, "witness": witness,
        "steps": [{
            "action": "enter-key", "label": "t-kek", "algorithm": "tdes2", "usage": "K0",
            "role": "kek", "owner": "issuer:test", "sender": "issuer:test",
            "expected_kcv": kcv_hex,
            "components": [{"custodian": c, "file": f} for c, f in zip(holders, files,
                                                                      strict=True)],
        }],
    }  # fmt: skip


def _nothing_stored(store: SoftKeyStore, before: int) -> None:
    assert len(store.list()) == before
    with pytest.raises(KeyNotFoundError):
        store.get("t-kek")
    assert store.audit_trail.verify().ok


def test_single_custodian_cannot_complete_a_ceremony(
    tmp_path: Path, registry: CustodianRegistry
) -> None:
    store = _new_store(tmp_path)
    before = len(store.list())
    with pytest.raises(CeremonyError, match="dual control"):  # officer is their own witness
        _ceremony(tmp_path, registry, store, _enter_plan(tmp_path, ["alice", "bob"],
                                                         officer="km1", witness="km1"))
    with pytest.raises(CustodianError, match="cannot hold two components"):
        _ceremony(tmp_path, registry, store, _enter_plan(tmp_path, ["alice", "alice"])).run()
    with pytest.raises(CeremonyError, match=r"2\.\.3 components"):
        _ceremony(tmp_path, registry, store, _enter_plan(tmp_path, ["alice"])).run()
    _nothing_stored(store, before)
    # and the control: two custodians under dual control do complete it
    _ceremony(tmp_path, registry, store, _enter_plan(tmp_path, ["alice", "bob"])).run()
    assert store.get("t-kek").kcv.hex().upper() == "08D7B4"
    assert store.audit_trail.verify().ok


def test_store_refuses_one_custodian_entering_two_components(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    before = len(store.list())
    with pytest.raises(CeremonyError, match="distinct custodians"):
        store.import_components("t-kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK,
                                "issuer:test", xor_split(KEY, 2), kcv(KEY),
                                custodians=["alice", "alice"], actor="alice")  # fmt: skip
    _nothing_stored(store, before)


def test_store_refuses_a_single_component_from_a_single_custodian(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    before = len(store.list())
    with pytest.raises(CeremonyError, match=r"2\.\.3 full-length components, got 1"):
        store.import_components("t-kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK,
                                "issuer:test", [KEY], kcv(KEY),
                                custodians=["alice"], actor="alice")  # fmt: skip
    _nothing_stored(store, before)


def test_component_kcv_mismatch_stores_nothing(tmp_path: Path,
                                               registry: CustodianRegistry) -> None:  # fmt: skip
    store = _new_store(tmp_path)
    before = len(store.list())
    # through the store API
    with pytest.raises(CeremonyError, match=r"KCV mismatch.*nothing stored"):
        store.import_components("t-kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK,
                                "issuer:test", xor_split(KEY, 2), bytes.fromhex("AABBCC"),
                                custodians=["alice", "bob"], actor="km1+aud1")  # fmt: skip
    _nothing_stored(store, before)
    refusals = [e for e in store.audit_trail.events() if e.result.startswith("refused")]
    assert refusals and "KCV mismatch" in refusals[-1].result
    assert KEY.hex() not in refusals[-1].result.lower()
    # through a ceremony: combined KCV wrong
    with pytest.raises(CeremonyError, match="KCV mismatch"):
        _ceremony(tmp_path, registry, store,
                  _enter_plan(tmp_path, ["alice", "bob"], kcv_hex="AABBCC")).run()
    _nothing_stored(store, before)
    # one component's KCV (as sent) wrong
    plan = _enter_plan(tmp_path, ["alice", "bob"])
    plan["steps"][0]["components"][1]["kcv"] = "000000"
    with pytest.raises(CeremonyError, match="KCV mismatch"):
        _ceremony(tmp_path, registry, store, plan).run()
    _nothing_stored(store, before)
    text = (store.audit_path.read_text()).lower()
    assert KEY.hex() not in text
    for part in (tmp_path / "c1.hex", tmp_path / "c2.hex"):
        assert part.read_text().lower() not in text
