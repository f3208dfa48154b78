"""Usage / mode-of-use / state enforcement (pipeline.keys.usage) and its use by the soft store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pipeline.errors import KeyStateError, KeyUsageError
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
)
from pipeline.keys.usage import (
    MODE_DIRECTIONS,
    PERMITTED_USAGES,
    STATE_KINDS,
    Operation,
    WorkKind,
    check,
    check_exportable,
    check_strength,
)
from tests.unit.keys.storekit import new_store


def record(
    usage: KeyUsage,
    *,
    state: KeyState = KeyState.ACTIVE,
    mode: str = "N",
    algorithm: KeyAlgorithm = KeyAlgorithm.TDES2,
    bits: int = 128,
    exportability: Exportability = Exportability.E,
) -> KeyRecord:
    return KeyRecord(
        ref=KeyRef("k-" + usage.value.lower(), 1),
        algorithm=algorithm,
        bits=bits,
        usage=usage,
        role=KeyRole.DATA,
        mode_of_use=mode,
        exportability=exportability,
        owner="issuer:demo",
        state=state,
        kcv=b"\x01\x02\x03",
        kcv_method="tdes",
        custodians=(),
        created_at="2025-01-01T00:00:00Z",
        activated_at="2025-01-01T00:00:00Z",
        updated_at="2025-01-01T00:00:00Z",
    )


ALL_PAIRS = list(itertools.product(KeyUsage, Operation))
FORBIDDEN = [(u, op) for u, op in ALL_PAIRS if u not in PERMITTED_USAGES[op]]
ALLOWED = [(u, op) for u, op in ALL_PAIRS if u in PERMITTED_USAGES[op]]


def test_table_covers_every_operation_and_hmk_does_nothing() -> None:
    assert set(PERMITTED_USAGES) == set(Operation)
    assert all(KeyUsage.HM not in usages for usages in PERMITTED_USAGES.values())
    assert set(STATE_KINDS) == set(KeyState)


@pytest.mark.parametrize(("usage", "operation"), FORBIDDEN, ids=lambda x: x.value)
def test_every_forbidden_pair_is_refused_naming_label_usage_operation(
    usage: KeyUsage, operation: Operation
) -> None:
    rec = record(usage)
    with pytest.raises(KeyUsageError) as err:
        check(rec, operation)
    message = str(err.value)
    assert str(rec.ref) in message
    assert f"usage {usage.value}" in message
    assert operation.value in message


@pytest.mark.parametrize(("usage", "operation"), ALLOWED, ids=lambda x: x.value)
def test_every_permitted_pair_passes_when_active_mode_n(
    usage: KeyUsage, operation: Operation
) -> None:
    check(record(usage), operation)


def test_domain_rules_hold_in_the_table() -> None:
    """DOMAIN.md 2 / issue 4: a KEK never encrypts data, an IMK only derives."""
    assert KeyUsage.K0 not in PERMITTED_USAGES[Operation.ENCRYPT_DATA]
    imk_ops = {op for op in Operation if KeyUsage.E0 in PERMITTED_USAGES[op]}
    assert imk_ops == {Operation.DERIVE_CARD_KEY, Operation.EXPORT, Operation.KCV}


@pytest.mark.parametrize(
    ("mode", "operation"),
    [("D", Operation.WRAP_OUTPUT), ("D", Operation.TRANSLATE_TO), ("E", Operation.TRANSLATE_FROM),
     ("X", Operation.MAC), ("S", Operation.WRAP_OUTPUT)],
)  # fmt: skip
def test_mode_of_use_refuses_the_wrong_direction(mode: str, operation: Operation) -> None:
    usage = next(iter(PERMITTED_USAGES[operation]))
    with pytest.raises(KeyUsageError, match=f"mode of use '{mode}'.*{operation.value}"):
        check(record(usage, mode=mode), operation)


def test_mode_table_none_direction_always_allowed() -> None:
    assert all(any(d.value == "none" for d in dirs) for dirs in MODE_DIRECTIONS.values())


@pytest.mark.parametrize("state", list(KeyState), ids=lambda s: s.value)
@pytest.mark.parametrize(
    "operation", [Operation.DERIVE_CARD_KEY, Operation.DECRYPT_DATA, Operation.KCV],
    ids=lambda o: o.value,
)  # fmt: skip
def test_state_table(state: KeyState, operation: Operation) -> None:
    usage = next(iter(PERMITTED_USAGES[operation]))
    rec = record(usage, state=state)
    if operation.kind in STATE_KINDS[state]:
        check(rec, operation)
    else:
        with pytest.raises(KeyStateError, match=f"state {state.value}.*{operation.value}"):
            check(rec, operation)


def test_deactivated_processes_but_never_protects() -> None:
    assert STATE_KINDS[KeyState.DEACTIVATED] == {WorkKind.PROCESS, WorkKind.INFO}


@pytest.mark.parametrize("exportability", [Exportability.N, Exportability.S])
def test_non_exportable_and_sensitive_refused(exportability: Exportability) -> None:
    with pytest.raises(KeyUsageError, match=r"exportability .* export"):
        check_exportable(record(KeyUsage.E0, exportability=exportability))
    check_exportable(record(KeyUsage.E0, exportability=Exportability.E))


def test_strength_rule() -> None:
    tdes2 = record(KeyUsage.K1)
    with pytest.raises(KeyUsageError, match=r"80-bit .* weaker than x@v1 .256-bit"):
        check_strength(tdes2, "x@v1", 256, Operation.WRAP_KEY_BLOCK)
    check_strength(tdes2, "x@v1", 80, Operation.WRAP_KEY_BLOCK)


# --- the same rules through the soft store ---------------------------------------------------


def test_store_refusals_name_label_usage_and_operation(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    kek = store.generate(
        "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, "issuer:demo", actor="o",
        mode_of_use="D",
    )  # fmt: skip
    tk = store.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    imk = store.generate(
        "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo", actor="o"
    )
    with pytest.raises(KeyUsageError, match=r"kek@v1: usage K0 does not permit encrypt-data"):
        store.encrypt_data(kek.ref, b"x", "output")
    with pytest.raises(KeyUsageError, match=r"kek@v1: usage K0 mode of use 'D'.*wrap"):
        store.encrypt_under_tk(kek.ref, b"12345678")
    with pytest.raises(KeyUsageError, match=r"imk@v1: usage E0 does not permit sign"):
        store.sign(imk.ref, b"x")
    with pytest.raises(KeyUsageError, match=r"imk@v1: usage E0 does not permit translate-from"):
        store.translate(bytes(8), imk.ref, tk.ref)
    with pytest.raises(KeyUsageError, match=r"tk@v1: usage K0 does not permit derive"):
        store.derive_and_wrap(tk.ref, "4761739001010119", "01", DerivationMethod.OPTION_A, tk.ref)
    with pytest.raises(KeyUsageError, match=r"imk@v1: usage E0 does not permit wrap"):
        store.derive_and_wrap(imk.ref, "4761739001010119", "01", DerivationMethod.OPTION_A, imk.ref)
    with pytest.raises(KeyUsageError, match=r"tk@v1: usage K0 does not permit pan-token"):
        store.pan_token(tk.ref, "4761739001010119")


def test_store_refuses_wrapping_under_weaker_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    tk = store.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    sm4_imk = store.generate(
        "sm4-imk", KeyAlgorithm.SM4, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo", actor="o"
    )
    with pytest.raises(KeyUsageError, match=r"tk@v1: usage K0 key of 80-bit .*sm4-imk@v1"):
        store.derive_and_wrap(sm4_imk.ref, "6212345678901234", "00", DerivationMethod.SM4, tk.ref)
    with pytest.raises(KeyUsageError, match=r"80-bit .* weaker"):
        store.generate_icc_key_pair("sm2", None, None, tk.ref)
    kbpk = store.generate(
        "kbpk", KeyAlgorithm.TDES2, KeyUsage.K1, KeyRole.KBPK, "bureau:demo", actor="o"
    )
    aes = store.generate(
        "aes-kek", KeyAlgorithm.AES256, KeyUsage.K0, KeyRole.KEK, "issuer:demo", actor="o"
    )
    with pytest.raises(KeyUsageError, match=r"kbpk@v1: .*weaker than aes-kek@v1 \(256-bit\)"):
        store.export_key_block(aes.ref, kbpk.ref, actor="o")
