"""Key output as components from the soft store (``SoftKeyStore.export_components``).

Known answers: the TDES KCVs of tests/vectors/kcv.json (pyemv's
``key_check_digits`` vectors).  The keys are entered from components, output
again as components, and recombined by an independent XOR (pyemv's
``tools.xor``); the recombined key's KCV, computed by pyemv, must be the
published one, and each component KCV in the audit event must be pyemv's KCV
of that component.  Shamir output has no public vector: the shares are
recombined by ``shamir_combine`` from random subsets of the threshold size
and compared with the entered key (two independent routes to the same key).
"""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyemv import tools as pyemv_tools

from pipeline.crypto.kcv import kcv
from pipeline.errors import (
    AuditError,
    CeremonyError,
    KeyStateError,
    KeyStoreError,
    KeyUsageError,
)
from pipeline.keys.components import Share, shamir_combine, xor_combine
from pipeline.keys.model import Exportability, KeyAlgorithm, KeyRef, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from pipeline.keys.store import KeyStore
from tests.conftest import load_vectors
from tests.unit.keys.storekit import new_store

pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"  # pyemv's two-key TDES path
)

CUSTODIANS = ["alice", "bob", "carol"]


def _enter(store: SoftKeyStore, label: str, key: bytes, alg: KeyAlgorithm = KeyAlgorithm.TDES2,
           usage: KeyUsage = KeyUsage.K0, role: KeyRole = KeyRole.TK,
           exportability: Exportability = Exportability.E) -> KeyRef:  # fmt: skip
    """Enter ``key`` as two random XOR components (the test knows the clear value)."""
    mask = secrets.token_bytes(len(key))
    method = "tdes" if alg in (KeyAlgorithm.TDES2, KeyAlgorithm.TDES3) else "aes-cmac"
    if alg is KeyAlgorithm.SM4:
        method = "sm4"
    other = bytes(a ^ b for a, b in zip(key, mask, strict=True))
    rec = store.import_components(
        label, alg, usage, role, "bureau:demo", [mask, other], kcv(key, method),
        custodians=["x1", "x2"], actor="km1+aud1", exportability=exportability,
    )  # fmt: skip
    return rec.ref


def _last_event(store: SoftKeyStore) -> Any:
    return list(store.audit_trail.events())[-1]


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    return new_store(tmp_path)


def test_soft_store_still_satisfies_the_protocol(store: SoftKeyStore) -> None:
    assert isinstance(store, KeyStore)
    assert "export_components" in store.capabilities()


@pytest.mark.parametrize("count", [2, 3])
def test_tdes_known_answers_survive_export_as_components(store: SoftKeyStore, count: int) -> None:
    """Published KCVs (tests/vectors/kcv.json) of the recombined key, by pyemv."""
    (vector,) = [v for v in load_vectors("kcv") if v["name"].startswith("TDES")]
    for i, (key_hex, kcv_hex) in enumerate(
        zip(vector["inputs"]["keys"], vector["expected"]["kcvs"], strict=True)
    ):
        key = bytes.fromhex(key_hex)
        ref = _enter(store, f"tk-{i}", key)
        parts = store.export_components(ref, count, custodians=CUSTODIANS[:count],
                                        actor="km1+aud1")  # fmt: skip
        assert len(parts) == count and all(len(p) == 16 for p in parts)
        assert len(set(parts)) == count
        recombined = parts[0]
        for p in parts[1:]:
            recombined = pyemv_tools.xor(recombined, p)
        assert recombined == key
        assert pyemv_tools.key_check_digits(recombined, 3).hex().upper() == kcv_hex
        event = _last_event(store)
        assert (event.action, event.result, event.actor) == (
            "key.export_components", "ok", "km1+aud1")  # fmt: skip
        assert event.subject == f"tk-{i}@v1 kcv={kcv_hex}"
        assert event.details["custodians"] == CUSTODIANS[:count]
        assert event.details["component_kcvs"] == [
            pyemv_tools.key_check_digits(p, 3).hex().upper() for p in parts
        ]
        line = event.to_json().lower()
        assert key.hex() not in line
        assert not any(p.hex() in line for p in parts)
    assert store.audit_trail.verify().ok


def test_two_exports_give_fresh_components(store: SoftKeyStore) -> None:
    ref = _enter(store, "tk", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    first = store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")
    second = store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")
    assert first[0] != second[0]
    assert xor_combine(first) == xor_combine(second)


@pytest.mark.parametrize(
    ("alg", "method"),
    [(KeyAlgorithm.AES256, "aes-cmac"), (KeyAlgorithm.SM4, "sm4"), (KeyAlgorithm.TDES3, "tdes")],
)
def test_generated_keys_of_each_algorithm(
    store: SoftKeyStore, alg: KeyAlgorithm, method: str
) -> None:
    """A generated key (value unknown to the test): the recombined KCV equals the store's."""
    rec = store.generate(f"k-{alg.value}", alg, KeyUsage.K0, KeyRole.TK, "bureau:demo",
                         actor="km1+aud1")  # fmt: skip
    parts = store.export_components(rec.ref, 3, custodians=CUSTODIANS, actor="km1+aud1")
    assert kcv(xor_combine(parts), method) == rec.kcv == store.kcv(rec.ref)
    assert _last_event(store).details["component_kcvs"] == [
        kcv(p, method).hex().upper() for p in parts
    ]


def test_shamir_output_any_threshold_subset_recovers_the_key(store: SoftKeyStore) -> None:
    """No public vector: every 3-subset of 5 shares interpolates to the entered key."""
    key = secrets.token_bytes(32)
    ref = _enter(store, "zmk", key, KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK)
    holders = ["alice", "bob", "carol", "dave", "erin"]
    values = store.export_components(ref, 5, custodians=holders, actor="km1+aud1", threshold=3)
    shares = [Share(i, v) for i, v in enumerate(values, 1)]
    for subset in itertools.combinations(shares, 3):
        assert shamir_combine(subset, 3) == key
    assert shamir_combine([*shares[:2], Share(3, bytes(32))], 3) != key
    details = _last_event(store).details
    assert (details["scheme"], details["threshold"], details["components"]) == ("shamir", 3, 5)
    assert details["custodians"] == holders


# --- refusals -------------------------------------------------------------------------------


def test_non_exportable_and_sensitive_keys_never_leave(store: SoftKeyStore) -> None:
    for exportability in (Exportability.N, Exportability.S):
        ref = _enter(store, f"imk-{exportability.value}", secrets.token_bytes(16),
                     usage=KeyUsage.E0, role=KeyRole.IMK_AC,
                     exportability=exportability)  # fmt: skip
        with pytest.raises(KeyUsageError, match=rf"{ref}: usage E0 exportability "
                           rf"{exportability.value} does not permit export"):  # fmt: skip
            store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")
        event = _last_event(store)
        assert event.action == "key.export_components"
        assert event.result.startswith("refused: KeyUsageError")


def test_generated_non_exportable_imk_refused(store: SoftKeyStore) -> None:
    rec = store.generate("imk-ac", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "bin:476173",
                         actor="km1+aud1", mode_of_use="X",
                         exportability=Exportability.N)  # fmt: skip
    with pytest.raises(KeyUsageError, match="exportability N does not permit export"):
        store.export_components(rec.ref, 3, custodians=CUSTODIANS, actor="km1+aud1")


def test_audit_key_never_leaves(store: SoftKeyStore) -> None:
    with pytest.raises(KeyUsageError, match="audit-mac@v1: usage M6 exportability N"):
        store.export_components(store.active("audit-mac"), 2, custodians=["a", "b"], actor="km1")


def test_state_is_checked(store: SoftKeyStore) -> None:
    ref = _enter(store, "tk", secrets.token_bytes(16))
    store.suspend(ref, actor="km1+aud1", reason="test")
    with pytest.raises(KeyStateError, match=r"tk@v1: state suspended .* does not permit export"):
        store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")
    store.resume(ref, actor="km1+aud1")
    _enter(store, "tk", secrets.token_bytes(16))  # v2 active, v1 deactivated
    with pytest.raises(KeyStateError, match=r"tk@v1: state deactivated"):
        store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")


def test_key_pairs_are_not_output_as_components(store: SoftKeyStore) -> None:
    rec = store.generate("issuer", KeyAlgorithm.SM2, KeyUsage.S0, KeyRole.ISSUER_SIGNING,
                         "issuer:demo", actor="km1+aud1")  # fmt: skip
    with pytest.raises(KeyUsageError, match="only symmetric keys"):
        store.export_components(rec.ref, 2, custodians=["alice", "bob"], actor="km1+aud1")


@pytest.mark.parametrize(
    ("count", "custodians", "threshold", "message"),
    [
        (1, ["alice"], None, r"2\.\.3 XOR components, got 1"),
        (4, ["a", "b", "c", "d"], None, r"2\.\.3 XOR components, got 4"),
        (2, ["alice", "alice"], None, r"as many distinct custodians, got 2 \(1 distinct\)"),
        (3, ["alice", "bob"], None, r"as many distinct custodians, got 2"),
        (3, ["a", "b", "c"], 4, "need 2 <= m <= n"),
        (3, ["a", "b", "c"], 1, "need 2 <= m <= n"),
    ],
)
def test_shape_refusals(
    store: SoftKeyStore, count: int, custodians: list[str], threshold: int | None, message: str
) -> None:
    ref = _enter(store, "tk", secrets.token_bytes(16))
    with pytest.raises(CeremonyError, match=message):
        store.export_components(ref, count, custodians=custodians, actor="km1+aud1",
                                threshold=threshold)  # fmt: skip
    assert _last_event(store).result.startswith("refused: CeremonyError")


def test_read_only_worker_handle_refuses(store: SoftKeyStore) -> None:
    ref = _enter(store, "tk", secrets.token_bytes(16))
    worker = store.worker_handle().open()
    try:
        with pytest.raises(KeyStoreError, match="read-only"):
            worker.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")
    finally:
        worker.close()


def test_audit_failure_returns_nothing(
    store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _enter(store, "tk", secrets.token_bytes(16))

    def broken(*_: object, **__: object) -> None:
        raise AuditError("audit", "disk full")

    monkeypatch.setattr(store._trail, "append", broken)
    with pytest.raises(AuditError, match="disk full"):
        store.export_components(ref, 2, custodians=["alice", "bob"], actor="km1+aud1")


# --- property -------------------------------------------------------------------------------

#: Values entered into the module's store by the property test (hypothesis may repeat one).
_ENTERED: dict[str, set[bytes]] = {}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.binary(min_size=16, max_size=16), count=st.sampled_from([2, 3]))
def test_export_recombines_to_the_entered_key(store: SoftKeyStore, key: bytes, count: int) -> None:
    """Random keys: the store's split recombines (pyemv XOR) to the key, KCVs agree with pyemv.

    Hypothesis may draw a value twice, and the store refuses a value it
    already holds (key separation, test_key_separation.py): a repeat is skipped.
    """
    entered = _ENTERED.setdefault(str(store.path), set())
    assume(key not in entered)
    entered.add(key)
    label = f"p-{secrets.token_hex(4)}"
    ref = _enter(store, label, key)
    parts = store.export_components(ref, count, custodians=CUSTODIANS[:count], actor="km1+aud1")
    recombined = parts[0]
    for p in parts[1:]:
        recombined = pyemv_tools.xor(recombined, p)
    assert recombined == key
    assert store.get(ref).kcv == pyemv_tools.key_check_digits(recombined, 3)
