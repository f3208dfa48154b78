"""Soft key store operations checked against independent computations.

Key values are the public TEST values of config/demo/keys.yaml and the
GlobalPlatform default KMC; pyemv (test-only oracle) cross-checks the
derivations on random PANs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyemv.kd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto import gp, rsa, sm2, tr31
from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.emv import derive_icc_mk
from pipeline.crypto.kcv import kcv
from pipeline.crypto.padding import unpad_iso9797_m2
from pipeline.errors import (
    CeremonyError,
    KeyNotFoundError,
    KeyStoreError,
    KeyUsageError,
    MacError,
)
from pipeline.keys.inventory import inventory_mac, inventory_mac_key
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    KeyAlgorithm,
    KeyRef,
    KeyRole,
    KeyUsage,
)
from pipeline.keys.rowmac import ROW_FIELDS, row_mac, row_mac_key
from pipeline.keys.settings import parse_settings
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TK = bytes.fromhex("11111111111111112222222222222222")
SM4_TK = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
#: Its own value: the store refuses one key value under two labels (key separation).
KEK = bytes.fromhex("0123456789ABCDEF1032547698BADCFE")
KMC = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
ZERO16 = bytes(16)


def _import(store: SoftKeyStore, label: str, alg: KeyAlgorithm, usage: KeyUsage, role: KeyRole,
            value: bytes, owner: str = "issuer:demo", **kw: object) -> KeyRef:  # fmt: skip
    """Enter ``value`` as two components (value, zeros) by two custodians."""
    method = {"tdes2": "tdes", "tdes3": "tdes", "sm4": "sm4"}.get(alg.value, "aes-cmac")
    rec = store.import_components(
        label, alg, usage, role, owner, [value, bytes(len(value))], kcv(value, method),
        custodians=["cust-a", "cust-b"], actor="officer-1", **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return rec.ref


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SoftKeyStore:
    s = new_store(tmp_path_factory.mktemp("store"))
    _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    _import(s, "sm4-imk", KeyAlgorithm.SM4, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    _import(s, "sm4-tk", KeyAlgorithm.SM4, KeyUsage.K0, KeyRole.TK, SM4_TK, owner="bureau:demo")
    _import(s, "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, KEK, mode_of_use="D")
    _import(s, "kmc", KeyAlgorithm.TDES2, KeyUsage.E5, KeyRole.KMC, KMC)
    return s


def _tk_decrypt(key: bytes, algorithm: Algorithm, data: bytes) -> bytes:
    return BlockCipher(algorithm, key).decrypt_ecb(data)


@settings(max_examples=60, deadline=None)
@given(
    pan=st.text("0123456789", min_size=12, max_size=19),
    psn=st.one_of(st.none(), st.text("0123456789", min_size=2, max_size=2)),
)
def test_derive_and_wrap_matches_emv_and_pyemv(
    store: SoftKeyStore, pan: str, psn: str | None
) -> None:
    """Option A / B card keys, unwrapped with the clear TK, equal pipeline.crypto.emv and pyemv."""
    for method, oracle in (
        (DerivationMethod.OPTION_A, pyemv.kd.derive_icc_mk_a),
        (DerivationMethod.OPTION_B, pyemv.kd.derive_icc_mk_b),
    ):
        wrapped = store.derive_and_wrap(KeyRef("imk", 1), pan, psn, method, KeyRef("tk", 1))
        mk = _tk_decrypt(TK, Algorithm.TDES, wrapped.ciphertext)
        assert mk == derive_icc_mk(IMK, pan, psn, method.value)
        assert mk == oracle(IMK, pan, psn or "00")
        assert wrapped.kcv == kcv(mk, "tdes") and wrapped.kcv_method == "tdes"
        assert wrapped.wrapped_under == KeyRef("tk", 1)


def test_derive_and_wrap_known_answer(store: SoftKeyStore) -> None:
    """pyemv docstring vector (tests/vectors/emv_kd.json): Option A, PAN 12345678901234567 / 01."""
    wrapped = store.derive_and_wrap(
        KeyRef("imk", 1), "12345678901234567", "01", DerivationMethod.OPTION_A, KeyRef("tk", 1)
    )
    assert _tk_decrypt(TK, Algorithm.TDES, wrapped.ciphertext).hex().upper() == (
        "73AD54688CEF2934B0979857E3C719F1"
    )


def test_sm4_derive_and_wrap(store: SoftKeyStore) -> None:
    wrapped = store.derive_and_wrap(
        KeyRef("sm4-imk", 1), "6212345678901234567", "01", DerivationMethod.SM4, KeyRef("sm4-tk", 1)
    )
    mk = _tk_decrypt(SM4_TK, Algorithm.SM4, wrapped.ciphertext)
    assert mk == derive_icc_mk(IMK, "6212345678901234567", "01", "sm4")
    assert wrapped.kcv == kcv(mk, "sm4")


def test_diversify_and_wrap_matches_gp(store: SoftKeyStore) -> None:
    kdd = bytes.fromhex("00010203040506070809")
    enc, mac, dek = store.diversify_and_wrap(
        KeyRef("kmc", 1), kdd, DerivationMethod.VISA2, KeyRef("tk", 1)
    )
    clear = [_tk_decrypt(TK, Algorithm.TDES, w.ciphertext) for w in (enc, mac, dek)]
    assert tuple(clear) == gp.diversify_card_keys(KMC, kdd, "visa2")
    # gp.py docstring vector: KCVs of the VISA2-diversified default KMC keys.
    assert [w.kcv.hex().upper() for w in (enc, mac, dek)] == ["2BE598", "58DA38", "3C328E"]


def test_translate_kek_to_tk(store: SoftKeyStore) -> None:
    secret = bytes.fromhex("041234FFFFFFFFFF0123456789ABCDEF")
    under_kek = BlockCipher(Algorithm.TDES, KEK).encrypt_ecb(secret)
    under_tk = store.translate(under_kek, KeyRef("kek", 1), KeyRef("tk", 1))
    assert _tk_decrypt(TK, Algorithm.TDES, under_tk) == secret
    to_sm4 = store.translate(under_kek, KeyRef("kek", 1), KeyRef("sm4-tk", 1))
    assert _tk_decrypt(SM4_TK, Algorithm.SM4, to_sm4) == secret
    with pytest.raises(Exception, match=r"not a whole number"):
        store.translate(under_kek[:8], KeyRef("kek", 1), KeyRef("sm4-tk", 1))


def test_encrypt_under_tk_pads_only_when_unaligned(store: SoftKeyStore) -> None:
    aligned = store.encrypt_under_tk(KeyRef("tk", 1), bytes(16))
    assert _tk_decrypt(TK, Algorithm.TDES, aligned) == bytes(16)
    odd = store.encrypt_under_tk(KeyRef("tk", 1), b"\x01\x02\x03")
    assert unpad_iso9797_m2(_tk_decrypt(TK, Algorithm.TDES, odd), 8) == b"\x01\x02\x03"


def test_generate_icc_rsa_key_pair_is_consistent(store: SoftKeyStore) -> None:
    pair = store.generate_icc_key_pair("rsa", 1024, 3, KeyRef("tk", 1))
    qinv, dq, dp, q, p = (
        int.from_bytes(_tk_decrypt(TK, Algorithm.TDES, c), "big") for c in pair.private_under_tk
    )
    n = int.from_bytes(pair.public_key, "big")
    assert p * q == n
    assert (qinv * q) % p == 1
    e = int.from_bytes(pair.public_exponent, "big")
    assert e == 3 and pow(pow(2, dp, p), e, p) == 2 and pow(pow(5, dq, q), e, q) == 5


def test_generate_icc_sm2_key_pair_is_consistent(store: SoftKeyStore) -> None:
    pair = store.generate_icc_key_pair("sm2", None, None, KeyRef("sm4-tk", 1))
    (d_wrapped,) = pair.private_under_tk
    d = _tk_decrypt(SM4_TK, Algorithm.SM4, d_wrapped)
    assert sm2.public_key(d) == pair.public_key and pair.public_exponent == b""


def test_sign_rsa_and_sm2_verify(store: SoftKeyStore) -> None:
    issuer = store.generate(
        "issuer-rsa", KeyAlgorithm.RSA, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:demo",
        actor="officer-1", bits=1024, mode_of_use="S",
    )  # fmt: skip
    assert issuer.public_key is not None and issuer.public_exponent == b"\x03"
    block = b"\x6a" + bytes(range(126)) + b"\xbc"
    signature = store.sign(issuer.ref, block)
    assert rsa.rsa_public_op(issuer.public_key, issuer.public_exponent, signature) == block
    sm2_key = store.generate(
        "issuer-sm2",
        KeyAlgorithm.SM2,
        KeyUsage.S0,
        KeyRole.ISSUER_SIGNING,
        "issuer:demo",
        actor="officer-1",
    )
    assert sm2_key.public_key is not None
    sig = store.sign(sm2_key.ref, b"static data")
    sm2.verify(sm2_key.public_key, b"static data", sig)
    assert store.kcv(sm2_key.ref) == sm2_key.kcv and store.kcv(issuer.ref) == issuer.kcv


def test_tr31_round_trip_via_the_store(store: SoftKeyStore, tmp_path: Path) -> None:
    kbpk_value = bytes(range(32))
    kbpk = _import(store, "zmk-aes", KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK, kbpk_value,
                   owner="bureau:demo")  # fmt: skip
    block = store.export_key_block(KeyRef("tk", 1), kbpk, actor="officer-1")
    header, clear = tr31.unwrap(kbpk_value, block)
    assert block[0] == "D" and header.key_usage == "K0" and header.exportability == "E"
    assert clear == TK
    # A second store with the same KBPK imports it with the same KCV.
    other = new_store(tmp_path)
    other_kbpk = _import(other, "zmk-aes", KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK,
                         kbpk_value, owner="issuer:demo")  # fmt: skip
    rec = other.import_key_block(
        "bureau-tk", block, other_kbpk, KeyRole.TK, "bureau:demo",
        expected_kcv=kcv(TK), actor="officer-2",
    )  # fmt: skip
    assert rec.kcv == kcv(TK) and rec.usage is KeyUsage.K0
    assert other.kcv(rec.ref) == kcv(TK)
    # 3DES KBPK -> version B
    tdes_kbpk = _import(store, "zmk-tdes", KeyAlgorithm.TDES2, KeyUsage.K1, KeyRole.KBPK,
                        bytes.fromhex("89ABCDEF0123456776543210FEDCBA98"))  # fmt: skip
    assert store.export_key_block(KeyRef("tk", 1), tdes_kbpk, actor="officer-1")[0] == "B"


def test_import_key_block_kcv_mismatch_stores_nothing(store: SoftKeyStore, tmp_path: Path) -> None:
    kbpk_value = bytes(range(32))
    block = tr31.wrap(kbpk_value, "D0000K0TB00E0000", TK)
    other = new_store(tmp_path)
    kbpk = _import(other, "zmk", KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK, kbpk_value)
    with pytest.raises(KeyStoreError, match=r"KCV mismatch"):
        other.import_key_block("kek", block, kbpk, KeyRole.KEK, "issuer:demo",
                               expected_kcv=b"\x00\x00\x00", actor="o")  # fmt: skip
    with pytest.raises(KeyNotFoundError):
        other.get("kek")
    last = list(other.audit_trail.events())[-1]
    assert last.action == "key.import_key_block" and last.result.startswith("refused")


def test_export_refusals(store: SoftKeyStore) -> None:
    kbpk = (
        KeyRef("zmk-aes", 1)
        if _exists(store, "zmk-aes")
        else _import(
            store, "zmk-aes", KeyAlgorithm.AES256, KeyUsage.K1, KeyRole.KBPK, bytes(range(32))
        )
    )
    secret = store.generate(
        "imk-n", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo",
        actor="o", exportability=Exportability.N,
    )  # fmt: skip
    with pytest.raises(
        KeyUsageError, match=r"imk-n@v1: usage E0 exportability N does not permit export"
    ):
        store.export_key_block(secret.ref, kbpk, actor="o")
    with pytest.raises(KeyUsageError, match=r"does not permit wrap-key-block"):
        store.export_key_block(KeyRef("tk", 1), KeyRef("imk", 1), actor="o")
    with pytest.raises(KeyUsageError, match=r"under itself"):
        store.export_key_block(kbpk, kbpk, actor="o")


def _exists(store: SoftKeyStore, label: str) -> bool:
    try:
        store.get(label)
    except KeyNotFoundError:
        return False
    return True


def test_import_components_kcv_mismatch_stores_nothing(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    with pytest.raises(CeremonyError, match=r"KCV mismatch: key has 08D7B4, expected 000000"):
        s.import_components(
            "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo",
            [IMK, ZERO16], b"\x00\x00\x00", custodians=["a", "b"], actor="o",
        )  # fmt: skip
    with pytest.raises(CeremonyError, match=r"distinct custodians"):
        s.import_components("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo",
                            [IMK, ZERO16], kcv(IMK), custodians=["a", "a"], actor="o")  # fmt: skip
    with pytest.raises(CeremonyError, match=r"3 components need as many distinct custodians"):
        s.import_components("imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, "issuer:demo",
                            [IMK, ZERO16, ZERO16], kcv(IMK), custodians=["a", "b"],
                            actor="o")  # fmt: skip
    assert [r.label for r in s.list()] == ["audit-mac"]
    assert s.audit_trail.verify().ok


def test_import_components_records_every_share_holder(tmp_path: Path) -> None:
    """A key held as Shamir shares enters as two XOR components; all holders are recorded."""
    s = new_store(tmp_path)
    holders = ["a", "b", "c", "d", "e"]
    rec = s.import_components(
        "zmk", KeyAlgorithm.TDES2, KeyUsage.K1, KeyRole.KBPK, "issuer:demo", [IMK, ZERO16],
        kcv(IMK), custodians=holders, actor="o",
    )  # fmt: skip
    assert rec.custodians == tuple(holders) == s.get("zmk").custodians
    with pytest.raises(CeremonyError, match=r"got 3 \(2 distinct\)"):
        s.import_components("zmk", KeyAlgorithm.TDES2, KeyUsage.K1, KeyRole.KBPK, "issuer:demo",
                            [IMK, ZERO16], kcv(IMK), custodians=["a", "b", "a"],
                            actor="o")  # fmt: skip
    assert [r.version for r in s.list() if r.label == "zmk"] == [1]


def test_mac_pan_token_and_data_envelopes(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    m = s.generate(
        "mac", KeyAlgorithm.AES256, KeyUsage.M6, KeyRole.AUDIT_MAC, "bureau:demo", actor="o"
    )
    tag = s.mac(m.ref, b"manifest", "manifest")
    assert len(tag) == 16 and s.verify_mac(m.ref, b"manifest", tag, "manifest")
    assert not s.verify_mac(m.ref, b"manifest", tag, "other")
    t = s.generate(
        "tok", KeyAlgorithm.AES256, KeyUsage.M7, KeyRole.PAN_TOKEN, "bureau:demo", actor="o"
    )
    token = s.pan_token(t.ref, "4761739001010119")
    assert len(token) == 32 and token == s.pan_token(t.ref, "4761739001010119")
    assert token != s.pan_token(t.ref, "4761739001010127")
    d = s.generate("data", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "bureau:demo", actor="o")
    box = s.encrypt_data(d.ref, b"cardholder", "output")
    assert s.decrypt_data(d.ref, box, "output") == b"cardholder"
    with pytest.raises(MacError):
        s.decrypt_data(d.ref, box, "other")
    with pytest.raises(MacError):
        s.decrypt_data(d.ref, box[:-1] + bytes([box[-1] ^ 1]), "output")


def test_wrong_hmk_fails_clearly(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    s.close()
    with pytest.raises(KeyStoreError, match=r"hmk: KCV mismatch"):
        SoftKeyStore(s.path, bytes(32))
    SoftKeyStore(s.path, HMK).close()


def test_refuses_production(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    s.close()
    production = parse_settings({"environment": "production"})
    with pytest.raises(KeyStoreError, match=r"settings.environment: .*production"):
        SoftKeyStore(s.path, HMK, settings=production)
    with pytest.raises(KeyStoreError, match=r"settings.environment"):
        SoftKeyStore.create(tmp_path / "new.db", HMK, actor="o", settings=production)


def test_edited_usage_column_is_caught_by_the_row_mac(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    kek = _import(s, "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, IMK)
    s.close()
    with sqlite3.connect(s.path) as conn:
        conn.execute("UPDATE keys SET usage='D0', role='data' WHERE label='kek'")
    s2 = SoftKeyStore(s.path, HMK)
    with pytest.raises(KeyStoreError, match=r"kek@v1: row MAC mismatch"):
        s2.encrypt_data(kek, b"x", "output")


def test_edited_usage_column_is_caught_by_the_key_block_binding(tmp_path: Path) -> None:
    """Second layer: with valid row and inventory MACs (forged with the HMK) the binding holds."""
    s = new_store(tmp_path)
    kek = _import(s, "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, IMK)
    s.close()
    with sqlite3.connect(s.path) as conn:
        conn.execute("UPDATE keys SET usage='D0', role='data' WHERE label='kek'")
        cols = ", ".join(ROW_FIELDS)
        values = conn.execute(f"SELECT {cols} FROM keys WHERE label='kek'").fetchone()
        mac = row_mac(row_mac_key(HMK), dict(zip(ROW_FIELDS, values, strict=True)))
        conn.execute("UPDATE keys SET row_mac=? WHERE label='kek'", (mac,))
        inventory = inventory_mac(
            inventory_mac_key(HMK),
            conn.execute("SELECT name, value FROM meta").fetchall(),
            conn.execute("SELECT label, version, row_mac FROM keys").fetchall(),
            [],
        )
        conn.execute("UPDATE meta SET value=? WHERE name='inventory_mac'", (inventory,))
    s2 = SoftKeyStore(s.path, HMK)
    with pytest.raises(KeyStoreError, match=r"kek@v1: key block header .* does not match"):
        s2.encrypt_data(kek, b"x", "output")


def test_worker_handle_is_read_only(tmp_path: Path) -> None:
    s = new_store(tmp_path)
    imk = _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    tk = _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    handle = s.worker_handle()
    assert HMK.hex() not in repr(handle).lower()
    worker = handle.open()
    wrapped = worker.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
    assert wrapped == s.derive_and_wrap(
        imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk
    )
    with pytest.raises(KeyStoreError, match=r"read-only"):
        worker.generate("x", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")


def test_worker_sees_suspension_after_cache_ttl(tmp_path: Path) -> None:
    s = new_store(tmp_path, FakeClock())
    imk = _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    tk = _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    worker = SoftKeyStore(s.path, HMK, read_only=True, cache_ttl=0.0)
    worker.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
    s.suspend(imk, actor="o", reason="test")
    with pytest.raises(Exception, match=r"state suspended"):
        worker.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
