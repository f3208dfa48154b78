"""derive_and_wrap's cached plan wraps exactly as ``_wrap_output`` does (issue 7 fast path).

The plan binds the TK's cached ECB encryptor once; a card key that is not a
whole number of TK blocks (EMV Book 2 A1.4.3 Option C under an AES-192 IMK:
24 bytes, AES blocks of 16) must still get ISO/IEC 9797-1 method 2 padding,
and every wrap must follow the TK the store currently holds.  Expected values
are computed here with ``cryptography`` directly and the clear TEST keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline.crypto.emv import derive_icc_mk
from pipeline.crypto.kcv import kcv
from pipeline.errors import KeyStateError
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store
from tests.unit.keys.test_store_soft import _import

IMK_AES192 = bytes.fromhex("000102030405060708090A0B0C0D0E0F1011121314151617")
IMK_AES128 = bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F")
TK_AES256 = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C" * 2)
PAN, PSN = "4761739001010119", "01"


def _aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.ECB()).decryptor().update(data)


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    s = new_store(tmp_path, FakeClock())
    _import(s, "imk192", KeyAlgorithm.AES192, KeyUsage.E0, KeyRole.IMK_AC, IMK_AES192)
    _import(s, "imk128", KeyAlgorithm.AES128, KeyUsage.E0, KeyRole.IMK_AC, IMK_AES128)
    _import(s, "tk", KeyAlgorithm.AES256, KeyUsage.K0, KeyRole.TK, TK_AES256, owner="bureau:demo")
    return s


def test_an_unaligned_card_key_is_padded_on_every_call(store: SoftKeyStore) -> None:
    imk, tk = store.active("imk192"), store.active("tk")
    mk = derive_icc_mk(IMK_AES192, PAN, PSN, "C")
    assert len(mk) == 24
    for _ in range(3):  # the first call builds the plan, the next ones reuse it
        wrapped = store.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk)
        assert len(wrapped.ciphertext) == 32
        assert _aes_ecb_decrypt(TK_AES256, wrapped.ciphertext) == mk + b"\x80" + bytes(7)
        assert wrapped.kcv == kcv(mk, "aes-cmac")


def test_an_aligned_card_key_is_not_padded_and_equals_encrypt_under_tk(
    store: SoftKeyStore,
) -> None:
    imk, tk = store.active("imk128"), store.active("tk")
    mk = derive_icc_mk(IMK_AES128, PAN, PSN, "C")
    for _ in range(2):
        wrapped = store.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk)
        assert _aes_ecb_decrypt(TK_AES256, wrapped.ciphertext) == mk
        assert wrapped.ciphertext == store.encrypt_under_tk(tk, mk)


def test_a_plan_follows_the_tk_entry_across_refresh_and_suspension(tmp_path: Path) -> None:
    owner = new_store(tmp_path, FakeClock())
    _import(owner, "imk128", KeyAlgorithm.AES128, KeyUsage.E0, KeyRole.IMK_AC, IMK_AES128)
    _import(owner, "tk", KeyAlgorithm.AES256, KeyUsage.K0, KeyRole.TK, TK_AES256,
            owner="bureau:demo")  # fmt: skip
    worker = SoftKeyStore(owner.path, HMK, read_only=True, cache_ttl=0.0)
    imk, tk = owner.active("imk128"), owner.active("tk")
    first = worker.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk)
    worker.refresh()  # every entry dropped: the next call builds a new plan
    assert worker.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk) == first
    owner.suspend(tk, actor="o", reason="test")
    with pytest.raises(KeyStateError, match="state suspended"):
        worker.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk)
    owner.resume(tk, actor="o")
    assert worker.derive_and_wrap(imk, PAN, PSN, DerivationMethod.AES, tk) == first
