"""ICC key pool: specs, fill, claim, delivery to the TK, settle/burn, refusals.

No published vectors exist for a key pool (it is a custody mechanism, not an
algorithm).  The delivered private parts are checked independently: the TK is
a known TEST value, the parts are decrypted with ``cryptography`` directly
(not the project's cipher wrappers), and RSA ``p * q`` must equal the
certified modulus, ``d mod (p-1)`` must invert ``e``; SM2 ``d`` must give the
public point (computed by gmssl, an independent SM2).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from gmssl import sm2 as gm_sm2
from gmssl import sm4 as gm_sm4
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidInputError, KeyPoolEmptyError, KeyPoolError
from pipeline.keys.model import Exportability, KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.pool import (
    ClaimTag,
    DryPolicy,
    KeyPool,
    PoolIccSource,
    PoolSpec,
    PoolState,
    fill,
    pool_key_label,
    pool_path,
    storage_key,
)
from pipeline.keys.settings import parse_settings
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK

TK_TDES = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TK_SM4 = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
RSA_SPEC = PoolSpec.of("rsa", 1024, 65537)  # the smallest allowed: fastest to generate
SM2_SPEC = PoolSpec.of("sm2", None, None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SoftKeyStore]:
    s = SoftKeyStore.create(tmp_path / "keys.db", HMK, actor="officer-1", test_only=True)
    for label, alg, value in (
        ("tk", KeyAlgorithm.TDES2, TK_TDES),
        ("tk-sm4", KeyAlgorithm.SM4, TK_SM4),
    ):
        s.import_test_key(
            label, alg, KeyUsage.K0, KeyRole.TK, "bureau:test", value, actor="officer-1"
        )
    yield s
    s.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[KeyPool]:
    p = KeyPool(tmp_path / "keypool.db")
    yield p
    p.close()


def _tdes_decrypt(data: bytes) -> bytes:
    key = TK_TDES + TK_TDES[:8]
    dec = Cipher(TripleDES(key), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def _unpad(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    assert stripped.endswith(b"\x80")
    return stripped[:-1]


# --- specs ----------------------------------------------------------------------


def test_spec_normalises_and_names() -> None:
    assert PoolSpec.of("rsa", 1152, 3).name == "rsa-1152-e3"
    assert (
        PoolSpec.of("sm2", 256, None) == PoolSpec.of("sm2", None, None) == PoolSpec("sm2", 256, 0)
    )
    assert PoolSpec.of("rsa", 1152, 65537).generate_args == ("rsa", 1152, 65537)
    assert SM2_SPEC.generate_args == ("sm2", None, None)


@settings(max_examples=100)
@given(st.integers(128, 248).map(lambda n: n * 8), st.sampled_from([3, 65537]))
def test_spec_parse_roundtrip(bits: int, exponent: int) -> None:
    spec = PoolSpec.of("rsa", bits, exponent)
    assert PoolSpec.parse(spec.name) == spec


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("rsa", 1152, 5), "exponent"),
        (("rsa", 1152, None), "exponent"),
        (("rsa", 1150, 3), "bits"),
        (("rsa", 2048, 3), "bits"),
        (("rsa", None, 3), "bits"),
        (("sm2", 512, None), "bits"),
        (("sm2", None, 3), "bits"),
        (("ecdsa", 256, None), "algorithm"),
    ],
)
def test_spec_refuses(args: tuple[str, int | None, int | None], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        PoolSpec.of(*args)
    assert err.value.field == field


@pytest.mark.parametrize("name", ["rsa-1152", "rsa-1152-3", "sm2", "rsa-x-e3", "dsa-256"])
def test_spec_parse_refuses(name: str) -> None:
    with pytest.raises(InvalidInputError):
        PoolSpec.parse(name)


def test_pool_path_defaults_beside_the_store_and_can_be_set() -> None:
    assert pool_path(parse_settings({"key_store": {"path": "a/b/keys.db"}})) == Path(
        "a/b/keypool.db"
    )
    s = parse_settings({"key_store": {"path": "a/keys.db", "pool_path": "c/pool.db"}})
    assert pool_path(s) == Path("c/pool.db")


# --- storage key --------------------------------------------------------------------


def test_storage_key_is_created_once_non_exportable_k0(store: SoftKeyStore) -> None:
    tk = store.active("tk")
    with pytest.raises(KeyPoolError.__mro__[1]):  # KeyStoreError: not found without actor
        storage_key(store, tk)
    ref = storage_key(store, tk, actor="ops")
    assert ref == storage_key(store, tk, actor="ops") == storage_key(store, tk)
    record = store.get(ref)
    assert ref.label == pool_key_label(KeyAlgorithm.TDES2) == "icc-pool-tdes2"
    assert (record.usage, record.role, record.exportability) == (
        KeyUsage.K0, KeyRole.KEK, Exportability.N,
    )  # fmt: skip
    assert record.algorithm is KeyAlgorithm.TDES2


def test_storage_key_refuses_asymmetric_tk(store: SoftKeyStore) -> None:
    rec = store.generate(
        "sig", KeyAlgorithm.SM2, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:t", actor="o"
    )
    with pytest.raises(KeyPoolError):
        storage_key(store, rec.ref, actor="ops")


# --- fill, claim, deliver -----------------------------------------------------------------


def test_fill_then_status_and_audit(store: SoftKeyStore, pool: KeyPool) -> None:
    seen: list[tuple[int, int]] = []
    out = fill(store, pool, SM2_SPEC, store.active("tk-sm4"), 300, actor="ops", workers=1,
               progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert out["added"] == 300 and out["free"] == 300 and out["storage"] == "icc-pool-sm4@v1"
    assert seen[-1] == (300, 300) and all(t == 300 for _, t in seen)
    [status] = pool.status()
    assert status.as_dict() == {
        "spec": "sm2-256", "storage": "icc-pool-sm4", "free": 300, "claimed": 0,
        "used": 0, "burned": 0,
    }  # fmt: skip
    events = [e for e in store.audit_trail.events() if e.action == "keypool.fill"]
    assert events and events[-1].result == "ok"
    assert store.audit_trail.verify().ok


def test_rsa_pair_delivered_under_tk_is_the_certified_key(
    store: SoftKeyStore, pool: KeyPool
) -> None:
    tk = store.active("tk")
    fill(store, pool, RSA_SPEC, tk, 3, actor="ops", workers=1)
    source = PoolIccSource(pool, store, ClaimTag("batch", "0"), chunk=2)
    pairs = [source("rsa", 1024, 65537, tk) for _ in range(3)]
    assert source.stats() == {"claimed": 3, "handed": 3, "inline": 0}
    assert len({p.public_key for p in pairs}) == 3
    for pair in pairs:
        assert pair.wrapped_under == tk and pair.public_exponent == b"\x01\x00\x01"
        qinv, dq, dp, q, p = (
            int.from_bytes(_tdes_decrypt(c), "big") for c in pair.private_under_tk
        )
        n = int.from_bytes(pair.public_key, "big")
        assert p * q == n and n.bit_length() == 1024
        assert pow(pow(12345, 65537, n), dp, p) == 12345 % p
        assert pow(pow(12345, 65537, n), dq, q) == 12345 % q
        assert qinv * q % p == 1


def test_sm2_pair_delivered_under_tk_matches_public_point(
    store: SoftKeyStore, pool: KeyPool
) -> None:
    tk = store.active("tk-sm4")
    fill(store, pool, SM2_SPEC, tk, 5, actor="ops", workers=1)
    source = PoolIccSource(pool, store, ClaimTag("batch", "0"))
    pair = source("sm2", None, None, tk)
    sm4 = gm_sm4.CryptSM4(padding_mode=3)  # no padding: the block is 32 bytes
    sm4.set_key(TK_SM4, gm_sm4.SM4_DECRYPT)
    d = sm4.crypt_ecb(pair.private_under_tk[0])
    assert len(d) == 32
    oracle = gm_sm2.CryptSM2(private_key=d.hex(), public_key="")
    point = oracle._kg(int(d.hex(), 16), oracle.ecc_table["g"])
    assert bytes.fromhex(point) == pair.public_key
    assert source.close() == 4  # the four never handed out go back to free
    assert pool.status()[0].free == 4 and pool.status()[0].claimed == 1


def test_claimed_entries_are_delivered_only_as_cards_take_them(
    store: SoftKeyStore, pool: KeyPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim of 16 with deliveries of 4: 5 cards check and re-encrypt 8 entries, not 16."""
    tk = store.active("tk-sm4")
    fill(store, pool, SM2_SPEC, tk, 20, actor="ops", workers=1)
    checked: list[bytes] = []
    translated: list[int] = []
    real_verify, real_translate = store.verify_mac, store.translate

    def verify_mac(*args: object, **kw: object) -> bool:
        checked.append(args[1])  # type: ignore[arg-type]
        return real_verify(*args, **kw)  # type: ignore[arg-type]

    def translate(blob: bytes, *args: object, **kw: object) -> bytes:
        translated.append(len(blob))
        return real_translate(blob, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "verify_mac", verify_mac)
    monkeypatch.setattr(store, "translate", translate)
    source = PoolIccSource(pool, store, ClaimTag("batch", "0"), chunk=16, deliver=4)
    pairs = [source("sm2", None, None, tk) for _ in range(5)]
    assert len({p.public_key for p in pairs}) == 5
    assert source.stats() == {"claimed": 16, "handed": 5, "inline": 0}
    assert len(checked) == 8 and translated == [4 * 32, 4 * 32]
    # the 11 never handed out (3 delivered, 8 still pending) all go back to free
    assert source.close() == 11
    assert pool.status()[0].free == 15 and pool.status()[0].claimed == 5


def test_deliver_must_be_positive(store: SoftKeyStore, pool: KeyPool) -> None:
    with pytest.raises(InvalidInputError, match="deliver"):
        PoolIccSource(pool, store, ClaimTag("batch", "0"), deliver=0)


def test_claims_never_overlap_and_follow_order(store: SoftKeyStore, pool: KeyPool) -> None:
    fill(store, pool, SM2_SPEC, store.active("tk-sm4"), 50, actor="ops", workers=1)
    a = pool.claim(SM2_SPEC, "icc-pool-sm4", 20, ClaimTag("b", "0", "w1"))
    b = pool.claim(SM2_SPEC, "icc-pool-sm4", 20, ClaimTag("b", "1", "w2"))
    c = pool.claim(SM2_SPEC, "icc-pool-sm4", 20, ClaimTag("b", "2", "w3"))
    ids = [e.id for e in a + b + c]
    assert len(ids) == len(set(ids)) == 50 and len(c) == 10
    assert pool.claim(SM2_SPEC, "icc-pool-sm4", 5, ClaimTag("b", "3")) == []
    assert pool.claim(SM2_SPEC, "icc-pool-other", 5, ClaimTag("b", "3")) == []
    assert all(pool.entry_state(i) is PoolState.CLAIMED for i in ids)


def test_settle_consumes_used_burns_rest_and_erases(
    store: SoftKeyStore, pool: KeyPool, tmp_path: Path
) -> None:
    tk = store.active("tk-sm4")
    fill(store, pool, SM2_SPEC, tk, 10, actor="ops", workers=1)
    tag = ClaimTag("b1", "7")
    source = PoolIccSource(pool, store, tag, chunk=8)
    pairs = [source("sm2", None, None, tk) for _ in range(3)]
    used = [hashlib.sha256(p.public_key).hexdigest() for p in pairs[:2]]  # card 3 was rejected
    assert pool.settle("b1", "7", [*used, "00" * 32]) == {"used": 2, "burned": 6}
    [st_] = pool.status()
    assert (st_.free, st_.claimed, st_.used, st_.burned) == (2, 0, 2, 6)
    conn = sqlite3.connect(tmp_path / "keypool.db")
    rows = conn.execute("SELECT parts, public_key, mac FROM entries WHERE state!='free'").fetchall()
    conn.close()
    assert rows and all(r == (None, None, None) for r in rows)
    assert source.close() == 0  # nothing left to release: settle took them


def test_release_only_moves_own_never_handed_claims(store: SoftKeyStore, pool: KeyPool) -> None:
    fill(store, pool, SM2_SPEC, store.active("tk-sm4"), 4, actor="ops", workers=1)
    mine, other = ClaimTag("b", "0", "me"), ClaimTag("b", "0", "them")
    entries = pool.claim(SM2_SPEC, "icc-pool-sm4", 4, mine)
    assert pool.release([e.id for e in entries], other) == 0
    assert pool.release([entries[0].id], mine) == 1
    assert pool.entry_state(entries[0].id) is PoolState.FREE
    assert pool.entry_state(entries[1].id) is PoolState.CLAIMED


def test_restart_burns_claims_of_the_shard_only(store: SoftKeyStore, pool: KeyPool) -> None:
    fill(store, pool, SM2_SPEC, store.active("tk-sm4"), 12, actor="ops", workers=1)
    crashed = pool.claim(SM2_SPEC, "icc-pool-sm4", 4, ClaimTag("b", "0"))
    other = pool.claim(SM2_SPEC, "icc-pool-sm4", 4, ClaimTag("b", "1"))
    assert pool.burn_claimed("b", "0") == 4
    assert all(pool.entry_state(e.id) is PoolState.BURNED for e in crashed)
    assert all(pool.entry_state(e.id) is PoolState.CLAIMED for e in other)
    again = pool.claim(SM2_SPEC, "icc-pool-sm4", 10, ClaimTag("b", "0"))
    assert len(again) == 4 and not {e.id for e in again} & {e.id for e in crashed}
    assert pool.burn_claimed(older_than=3600) == 0  # young claims survive an age-based sweep
    assert pool.burn_claimed() == 8


def test_dry_pool_inline_or_fail(store: SoftKeyStore, pool: KeyPool) -> None:
    tk = store.active("tk-sm4")
    fill(store, pool, SM2_SPEC, tk, 2, actor="ops", workers=1)
    inline = PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=4)
    pairs = [inline("sm2", None, None, tk) for _ in range(5)]
    assert inline.stats() == {"claimed": 2, "handed": 2, "inline": 3}
    assert len({p.public_key for p in pairs}) == 5 and all(p.wrapped_under == tk for p in pairs)
    strict = PoolIccSource(pool, store, ClaimTag("b", "1"), on_empty=DryPolicy.FAIL)
    with pytest.raises(KeyPoolEmptyError) as err:
        strict("sm2", None, None, tk)
    assert err.value.field == "sm2-256"


def test_dry_source_asks_again_after_a_refill(store: SoftKeyStore, pool: KeyPool) -> None:
    tk = store.active("tk-sm4")
    source = PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=2)
    source("sm2", None, None, tk)  # dry: inline
    fill(store, pool, SM2_SPEC, tk, 5, actor="ops", workers=1)
    for _ in range(4):
        source("sm2", None, None, tk)
    assert source.stats()["handed"] >= 1


def test_edited_entry_is_refused(store: SoftKeyStore, pool: KeyPool, tmp_path: Path) -> None:
    tk = store.active("tk-sm4")
    fill(store, pool, SM2_SPEC, tk, 2, actor="ops", workers=1)
    conn = sqlite3.connect(tmp_path / "keypool.db")
    with conn:  # swap in an attacker's public key (same length, different point)
        conn.execute("UPDATE entries SET public_key=? WHERE id=1", (bytes(64),))
    conn.close()
    source = PoolIccSource(pool, store, ClaimTag("b", "0"))
    with pytest.raises(KeyPoolError) as err:
        source("sm2", None, None, tk)
    assert "MAC" in err.value.detail and err.value.field == "pool entry 1"


def test_duplicate_public_key_and_wrong_algorithm_refused(
    store: SoftKeyStore, pool: KeyPool
) -> None:
    tk = store.active("tk-sm4")
    ref = storage_key(store, tk, actor="ops")
    pair = store.generate_icc_key_pair("sm2", None, None, ref)
    assert pool.add(SM2_SPEC, [(pair, b"m")]) == 1
    with pytest.raises(KeyPoolError):
        pool.add(SM2_SPEC, [(pair, b"m")])
    with pytest.raises(KeyPoolError):
        pool.add(RSA_SPEC, [(pair, b"m")])
    with pytest.raises(InvalidInputError):
        pool.claim(SM2_SPEC, "icc-pool-sm4", 0, ClaimTag("b", "0"))
    with pytest.raises(InvalidInputError):
        fill(store, pool, SM2_SPEC, tk, -1, actor="ops")
    with pytest.raises(InvalidInputError):
        PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=0)


def test_pool_key_strength_rule_holds(store: SoftKeyStore, pool: KeyPool) -> None:
    """An SM2 key (128-bit) is never put under a 3DES (80-bit) pool key."""
    with pytest.raises(KeyPoolError.__mro__[1]):
        fill(store, pool, SM2_SPEC, store.active("tk"), 1, actor="ops", workers=1)
    assert pool.status() == []
