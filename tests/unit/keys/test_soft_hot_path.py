"""The soft store's per-call fast path (issue 7): what it keeps per cached key entry.

``_load`` serves a call from the cached entry without re-checking when the
record is fresh, the operation's verdict was given on it and the key is
unwrapped; an IMK entry remembers the derive plan it served last; a PAN-token
entry keeps its HMAC-SHA-256 keyed once; a checked purpose string is
remembered.  Each test fails when one of those shortcuts loses its condition:
the plan served for another TK or method, a keyed context updated in place,
the TTL or a suspension ignored, a non-KeyRef reaching the dict as a
TypeError, a bad purpose let through.  The MAC test also holds a future keyed
CMAC context to per-purpose, per-message answers.  Expected values come from the clear TEST
keys with ``cryptography`` / :mod:`hmac` directly; no public vector applies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from pipeline.crypto.emv import derive_icc_mk
from pipeline.crypto.kcv import kcv
from pipeline.crypto.kdf import hkdf_sha256
from pipeline.errors import InvalidInputError, KeyStateError, KeyUsageError
from pipeline.keys import soft
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRef, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store
from tests.unit.keys.test_store_soft import IMK, SM4_TK, TK, _import

TK2 = bytes.fromhex("33333333333333334444444444444444")
TOKEN_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
MAC_KEY = bytes.fromhex("F0E0D0C0B0A090807060504030201000F1E1D1C1B1A191817161514131211101")
PAN19, PSN = "4761739001010119012", "01"


def _tdes_decrypt(key: bytes, data: bytes) -> bytes:
    return Cipher(TripleDES(key + key[:8]), modes.ECB()).decryptor().update(data)


def _token(pan: str) -> str:
    """The PAN token by its definition: HMAC-SHA-256(HKDF(key, pan-token/v1), PAN), 16 bytes."""
    key = hkdf_sha256(TOKEN_KEY, b"cardprep/pan-token/v1", 32)
    return hmac.new(key, pan.encode(), hashlib.sha256).hexdigest()[:32]


def _cmac(purpose: str, data: bytes) -> bytes:
    """The store MAC by its definition: AES-CMAC under HKDF(key, mac/purpose)."""
    c = CMAC(algorithms.AES(hkdf_sha256(MAC_KEY, b"cardprep/mac/" + purpose.encode(), 32)))
    c.update(data)
    return c.finalize()


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    s = new_store(tmp_path, FakeClock())
    _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    _import(s, "tk2", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK2, owner="bureau:demo")
    _import(s, "sm4-tk", KeyAlgorithm.SM4, KeyUsage.K0, KeyRole.TK, SM4_TK, owner="bureau:demo")
    _import(s, "tok", KeyAlgorithm.AES256, KeyUsage.M7, KeyRole.PAN_TOKEN, TOKEN_KEY,
            owner="bureau:demo")  # fmt: skip
    _import(s, "mac", KeyAlgorithm.AES256, KeyUsage.M6, KeyRole.AUDIT_MAC, MAC_KEY,
            owner="bureau:demo")  # fmt: skip
    return s


def test_the_last_plan_is_not_served_for_another_tk(store: SoftKeyStore) -> None:
    imk = store.active("imk")
    mk = derive_icc_mk(IMK, PAN19, PSN, "A")
    for tk, clear in ((store.active("tk"), TK), (store.active("tk2"), TK2)) * 2:
        wrapped = store.derive_and_wrap(imk, PAN19, PSN, DerivationMethod.OPTION_A, tk)
        assert wrapped.wrapped_under == tk
        assert _tdes_decrypt(clear, wrapped.ciphertext) == mk


def test_the_last_plan_is_not_served_for_another_method(store: SoftKeyStore) -> None:
    imk, tk = store.active("imk"), store.active("tk")
    expected = {
        DerivationMethod.OPTION_A: derive_icc_mk(IMK, PAN19, PSN, "A"),
        DerivationMethod.OPTION_B: derive_icc_mk(IMK, PAN19, PSN, "B"),
    }
    assert expected[DerivationMethod.OPTION_A] != expected[DerivationMethod.OPTION_B]
    for method in (DerivationMethod.OPTION_A, DerivationMethod.OPTION_B) * 2:
        wrapped = store.derive_and_wrap(imk, PAN19, PSN, method, tk)
        assert _tdes_decrypt(TK, wrapped.ciphertext) == expected[method]


def test_an_equal_but_distinct_tk_reference_gets_the_same_wrap(store: SoftKeyStore) -> None:
    imk = store.active("imk")
    first = store.derive_and_wrap(imk, PAN19, PSN, DerivationMethod.OPTION_A, KeyRef("tk", 1))
    again = store.derive_and_wrap(imk, PAN19, PSN, DerivationMethod.OPTION_A, KeyRef("tk", 1))
    assert first == again


def test_the_keyed_pan_token_hmac_is_copied_for_every_pan(store: SoftKeyStore) -> None:
    tok = store.active("tok")
    pans = ("4761739001010119", "4761739001010127", "4761739001010119", "6212345678901234567")
    assert [store.pan_token(tok, pan) for pan in pans] == [_token(pan) for pan in pans]


def test_cached_entries_are_re_read_after_the_ttl_and_refuse_a_suspended_key(
    tmp_path: Path,
) -> None:
    owner = new_store(tmp_path, FakeClock())
    _import(owner, "sm4-tk", KeyAlgorithm.SM4, KeyUsage.K0, KeyRole.TK, SM4_TK,
            owner="bureau:demo")  # fmt: skip
    _import(owner, "tok", KeyAlgorithm.AES256, KeyUsage.M7, KeyRole.PAN_TOKEN, TOKEN_KEY,
            owner="bureau:demo")  # fmt: skip
    signer = owner.generate(
        "issuer-sm2", KeyAlgorithm.SM2, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:demo",
        actor="o",
    ).ref  # fmt: skip
    tk, tok = owner.active("sm4-tk"), owner.active("tok")
    worker = SoftKeyStore(owner.path, HMK, read_only=True, cache_ttl=0.0)
    calls = {
        tk: lambda: worker.generate_icc_key_pair("sm2", None, None, tk),
        tok: lambda: worker.pan_token(tok, PAN19),
        signer: lambda: worker.sign(signer, b"static data"),
    }
    for key, call in calls.items():
        for _ in range(2):  # the second call is served from the entry's cached objects
            call()
        owner.suspend(key, actor="o", reason="test")
        with pytest.raises(KeyStateError, match="state suspended"):
            call()
        owner.resume(key, actor="o")
        call()
    assert worker.pan_token(tok, PAN19) == _token(PAN19)


def test_a_suspension_in_the_same_store_drops_the_cached_entry(store: SoftKeyStore) -> None:
    tok, tk = store.active("tok"), store.active("sm4-tk")
    store.pan_token(tok, PAN19)
    store.generate_icc_key_pair("sm2", None, None, tk)
    store.suspend(tok, actor="o", reason="test")
    store.suspend(tk, actor="o", reason="test")
    with pytest.raises(KeyStateError, match="state suspended"):
        store.pan_token(tok, PAN19)
    with pytest.raises(KeyStateError, match="state suspended"):
        store.generate_icc_key_pair("sm2", None, None, tk)


@pytest.mark.parametrize("ref", [["tok", 1], "tok@v1", None])
def test_a_key_that_is_not_a_keyref_is_invalid_input(store: SoftKeyStore, ref: object) -> None:
    store.pan_token(store.active("tok"), PAN19)  # a cached entry exists
    with pytest.raises(InvalidInputError, match="expected a KeyRef"):
        store.pan_token(ref, PAN19)  # type: ignore[arg-type]


def test_the_keyed_cmac_is_per_purpose_and_copied_for_every_message(store: SoftKeyStore) -> None:
    key = store.active("mac")
    calls = [("keypool-entry", b"one"), ("audit", b"one"), ("keypool-entry", b"two")] * 2
    for purpose, data in calls:
        tag = store.mac(key, data, purpose)
        assert tag == _cmac(purpose, data)
        assert store.verify_mac(key, data, tag, purpose)
        assert not store.verify_mac(key, data + b"!", tag, purpose)


@pytest.mark.parametrize("purpose", ["Bad Purpose", "", 7, None])
def test_a_bad_purpose_is_refused_after_good_ones_were_remembered(
    store: SoftKeyStore, purpose: object
) -> None:
    key = store.active("mac")
    store.mac(key, b"data", "keypool-entry")
    with pytest.raises(InvalidInputError, match=r"expected 1\.\.64"):
        store.mac(key, b"data", purpose)  # type: ignore[arg-type]


def test_kcv3_is_the_three_byte_kcv_of_each_method() -> None:
    """The hot paths' KCV functions (one per method, kept) equal compute_kcv."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    for method in ("tdes", "aes-gp", "sm4", "aes-cmac"):
        assert soft._kcv3(method)(key) == kcv(key, method)
        assert soft._kcv3(method) is soft._kcv3(method)
    with pytest.raises(InvalidInputError, match="method"):
        soft._kcv3("des")
    assert "des" not in soft._KCV3


def test_the_strength_of_an_entry_follows_its_record(store: SoftKeyStore) -> None:
    """_Loaded.strength is computed once per record: a re-read record recomputes it."""
    tk = store.active("tk")
    store.encrypt_under_tk(tk, bytes(8))
    entry = store._cache[tk]
    assert entry.strength() == entry.record.strength_bits == 80
    assert entry.strength_of is entry.record
    entry.record = dataclasses.replace(entry.record, algorithm=KeyAlgorithm.TDES3)
    assert entry.strength() == 112  # another record object: recomputed


def test_translate_and_diversify_still_refuse_a_weaker_destination(tmp_path: Path) -> None:
    store = new_store(tmp_path, FakeClock())
    _import(store, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    aes_kek = store.generate(
        "aes-kek", KeyAlgorithm.AES256, KeyUsage.K0, KeyRole.KEK, "issuer:demo", actor="o"
    ).ref
    kmc = store.generate(
        "kmc", KeyAlgorithm.AES256, KeyUsage.E5, KeyRole.KMC, "issuer:demo", actor="o"
    ).ref
    tk = store.active("tk")
    for _ in range(2):  # the second time from the entries' cached strengths
        with pytest.raises(KeyUsageError, match=r"tk@v1: .*80-bit .*weaker than aes-kek@v1"):
            store.translate(bytes(16), aes_kek, tk)
        with pytest.raises(KeyUsageError, match=r"80-bit .*weaker than kmc@v1"):
            store.diversify_and_wrap(kmc, bytes(10), DerivationMethod.KDF3, tk)
