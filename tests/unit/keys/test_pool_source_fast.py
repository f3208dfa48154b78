"""PoolIccSource hot path: the per-request memo, the cached MAC message head, deliveries
checked as a whole.  Each shortcut is pinned by the case it must not get wrong: another
TK or spec asked in between, a source used again after close, an entry edited in a
later delivery.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from gmssl import sm2 as gm_sm2
from gmssl import sm4 as gm_sm4

from pipeline.errors import KeyPoolError
from pipeline.keys.model import IccKeyPair, KeyAlgorithm, KeyRef, KeyRole, KeyUsage
from pipeline.keys.pool import (
    ClaimTag,
    KeyPool,
    PoolIccSource,
    PoolSpec,
    PoolState,
    entry_message,
    fill,
)
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK

TK_A = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
TK_B = bytes.fromhex("FFEEDDCCBBAA99887766554433221100")
SM2_SPEC = PoolSpec.of("sm2", None, None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SoftKeyStore]:
    s = SoftKeyStore.create(tmp_path / "keys.db", HMK, actor="officer-1", test_only=True)
    for label, value in (("tk-a", TK_A), ("tk-b", TK_B)):
        s.import_test_key(
            label, KeyAlgorithm.SM4, KeyUsage.K0, KeyRole.TK, "bureau:test", value,
            actor="officer-1",
        )  # fmt: skip
    yield s
    s.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[KeyPool]:
    p = KeyPool(tmp_path / "keypool.db")
    yield p
    p.close()


def _lp(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _definition(spec: PoolSpec, pair: IccKeyPair) -> bytes:
    """entry_message by its docstring: every field length-prefixed, in order."""
    fields = [spec.name.encode(), str(pair.wrapped_under).encode(), pair.public_key]
    return b"".join(_lp(f) for f in [*fields, pair.public_exponent, *pair.private_under_tk])


def test_entry_message_is_its_definition_across_specs_and_storage_keys() -> None:
    """The head (spec, storage key) is cached: interleaved pools must not share one."""
    rsa = PoolSpec.of("rsa", 1152, 3)
    refs = [KeyRef("icc-pool-tdes2", 1), KeyRef("icc-pool-tdes2", 2), KeyRef("icc-pool-sm4", 1)]
    cases = []
    for i, ref in enumerate(refs * 2):
        parts = tuple(bytes([i, j]) * (8 + j) for j in range(5))
        cases.append((rsa, IccKeyPair("rsa", b"N" * (144 + i), b"\x03", parts, ref)))
        cases.append((SM2_SPEC, IccKeyPair("sm2", b"P" * 64, b"", (bytes([i]) * 32,), ref)))
    messages = [entry_message(spec, pair) for spec, pair in cases]
    assert messages == [_definition(spec, pair) for spec, pair in cases]
    assert len(set(messages)) == len(messages)


def _d(tk: bytes, wrapped: bytes) -> bytes:
    sm4 = gm_sm4.CryptSM4(padding_mode=3)
    sm4.set_key(tk, gm_sm4.SM4_DECRYPT)
    return bytes(sm4.crypt_ecb(wrapped))


def _public_point(d: bytes) -> bytes:
    oracle = gm_sm2.CryptSM2(private_key=d.hex(), public_key="")
    return bytes.fromhex(oracle._kg(int(d.hex(), 16), oracle.ecc_table["g"]))


def test_each_tk_asked_in_turn_gets_pairs_under_itself(store: SoftKeyStore, pool: KeyPool) -> None:
    """The memo of the last request is by identity: another TK (or an equal but distinct
    reference) in between never gets the last request's queue."""
    tk_a, tk_b = store.active("tk-a"), store.active("tk-b")
    fill(store, pool, SM2_SPEC, tk_a, 8, actor="ops", workers=1)
    source = PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=4, deliver=2)
    asks = [(tk_a, TK_A), (tk_b, TK_B), (tk_a, TK_A), (tk_a, TK_A), (KeyRef("tk-b", 1), TK_B)]
    pairs = [(source("sm2", None, None, ref), ref, clear) for ref, clear in asks]
    for pair, ref, clear in pairs:
        assert pair.wrapped_under == ref
        assert _public_point(_d(clear, pair.private_under_tk[0])) == pair.public_key
    assert len({p.public_key for p, _, _ in pairs}) == len(asks)
    # an equal but distinct KeyRef is the same queue: tk-b took 2 of its delivery of 2
    assert source.stats() == {"claimed": 8, "handed": 5, "inline": 0}
    assert source.close() == 3


def test_a_source_used_again_after_close_keeps_track_of_what_it_holds(
    store: SoftKeyStore, pool: KeyPool
) -> None:
    """close() forgets the memo with the queues: entries delivered afterwards are released
    by the next close, not lost in a queue the source no longer knows."""
    tk = store.active("tk-a")
    fill(store, pool, SM2_SPEC, tk, 10, actor="ops", workers=1)
    source = PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=4, deliver=2)
    source("sm2", None, None, tk)
    assert source.close() == 3
    source("sm2", None, None, tk)
    assert source.close() == 7  # the second claim is 8 (chunks double); 1 handed
    status = pool.status()[0]
    assert (status.free, status.claimed) == (8, 2)


@pytest.mark.parametrize(
    ("column", "value"),
    [("parts", bytes(32)), ("public_key", bytes(64)), ("part_lengths", "16,16")],
)
def test_an_entry_edited_in_a_later_delivery_is_refused_before_any_translation(
    store: SoftKeyStore, pool: KeyPool, tmp_path: Path, column: str, value: object
) -> None:
    tk = store.active("tk-a")
    fill(store, pool, SM2_SPEC, tk, 6, actor="ops", workers=1)
    conn = sqlite3.connect(tmp_path / "keypool.db")
    with conn:
        conn.execute(f"UPDATE entries SET {column}=? WHERE id=4", (value,))
    conn.close()
    source = PoolIccSource(pool, store, ClaimTag("b", "0"), chunk=6, deliver=2)
    translated: list[int] = []
    real_translate = store.translate

    def translate(blob: bytes, *args: object, **kw: object) -> bytes:
        translated.append(len(blob))
        return real_translate(blob, *args, **kw)  # type: ignore[arg-type]

    store.translate = translate  # type: ignore[method-assign]
    source("sm2", None, None, tk)
    source("sm2", None, None, tk)  # entries 1 and 2
    with pytest.raises(KeyPoolError) as err:
        source("sm2", None, None, tk)  # the delivery of entries 3 and 4
    assert err.value.field == "pool entry 4"
    assert translated == [64]  # entry 3 was checked but not translated with the edited one
    assert pool.entry_state(4) is PoolState.CLAIMED  # burned when the shard settles
