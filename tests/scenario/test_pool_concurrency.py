"""Scenario: an ICC key pool shared by several processes, a parallel fill and a crash.

* four processes claim from one pool at once (small chunks so they interleave)
  until it is empty: every entry is claimed exactly once, by one process;
* worker processes take pairs through ``PoolIccSource`` with read-only store
  handles, as prepare-shard workers do: no public key is handed out twice;
* a worker that dies (``os._exit``) after taking pairs without settling: its
  claims are burned when the shard restarts and never come back, while the
  rerun gets fresh entries;
* ``fill`` with two worker processes: entries unique, counts right, audit
  trail verifies.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.keys.model import KeyAlgorithm, KeyRef, KeyRole, KeyUsage
from pipeline.keys.pool import ClaimTag, KeyPool, PoolIccSource, PoolSpec, PoolState, fill
from pipeline.keys.soft import SoftKeyStore, SoftStoreHandle
from tests.unit.keys.storekit import HMK

SM2 = PoolSpec.of("sm2", None, None)
STORAGE = "icc-pool-sm4"
CTX = mp.get_context("spawn")  # a clean interpreter per worker, like a real process pool


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SoftKeyStore]:
    s = SoftKeyStore.create(tmp_path / "keys.db", HMK, actor="officer-1")
    s.generate("tk-sm4", KeyAlgorithm.SM4, KeyUsage.K0, KeyRole.TK, "bureau:test", actor="o")
    yield s
    s.close()


def _claim_until_empty(
    path: str, worker: str, start: object, out: mp.Queue[tuple[str, list[int]]]
) -> None:
    pool = KeyPool(Path(path))
    got: list[int] = []
    start.wait()  # type: ignore[attr-defined]  # all four begin together
    while True:
        entries = pool.claim(SM2, STORAGE, 7, ClaimTag("batch", "0", worker))
        if not entries:
            break
        got += [e.id for e in entries]
        time.sleep(0.002)  # a worker prepares its cards between claims
    pool.close()
    out.put((worker, got))


def _take_pairs(
    handle: SoftStoreHandle,
    path: str,
    shard: str,
    n: int,
    crash: bool,
    out: mp.Queue[list[str]],
) -> None:
    store = handle.open()
    pool = KeyPool(Path(path))
    source = PoolIccSource(pool, store, ClaimTag("batch", shard), chunk=8)
    tk = store.active("tk-sm4")
    hashes = [
        hashlib.sha256(source("sm2", None, None, tk).public_key).hexdigest() for _ in range(n)
    ]
    out.put(hashes)
    if crash:
        out.close()
        out.join_thread()  # flush the queue, then die without close() or settle
        os._exit(3)  # no close(), no settle: the claims stay behind
    source.close()
    pool.close()
    store.close()


def _run(target: object, *args: object) -> mp.process.BaseProcess:
    proc = CTX.Process(target=target, args=args)
    proc.start()
    return proc


def test_parallel_claims_never_share_an_entry(store: SoftKeyStore, tmp_path: Path) -> None:
    path = tmp_path / "keypool.db"
    with KeyPool(path) as pool:
        fill(store, pool, SM2, store.active("tk-sm4"), 400, actor="ops", workers=1)
    out: mp.Queue[tuple[str, list[int]]] = CTX.Queue()
    start = CTX.Barrier(4)
    procs = [_run(_claim_until_empty, str(path), f"w{i}", start, out) for i in range(4)]
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [i for got in results.values() for i in got]
    assert len(ids) == len(set(ids)) == 400
    assert sum(1 for got in results.values() if got) >= 2  # they really raced
    with KeyPool(path) as pool:
        [status] = pool.status()
        assert (status.free, status.claimed) == (0, 400)


def test_workers_share_a_pool_and_a_crash_burns_its_claims(
    store: SoftKeyStore, tmp_path: Path
) -> None:
    path = tmp_path / "keypool.db"
    tk = store.active("tk-sm4")
    with KeyPool(path) as pool:
        fill(store, pool, SM2, tk, 100, actor="ops", workers=1)
    handle = store.worker_handle()
    out: mp.Queue[list[str]] = CTX.Queue()
    procs = [
        _run(_take_pairs, handle, str(path), "0", 20, False, out),
        _run(_take_pairs, handle, str(path), "0", 20, False, out),
        _run(_take_pairs, handle, str(path), "1", 5, True, out),  # shard 1 dies
    ]
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(p.exitcode for p in procs) == [0, 0, 3]
    all_hashes = [h for hashes in got for h in hashes]
    assert len(all_hashes) == len(set(all_hashes)) == 45
    crashed = next(h for h in got if len(h) == 5)
    with KeyPool(path) as pool:
        shard0 = [h for h in all_hashes if h not in crashed]
        assert pool.settle("batch", "0", shard0) == {"used": 40, "burned": 0}
        [status] = pool.status()
        assert (status.used, status.claimed) == (40, 8)  # the dead worker's chunk of 8
        # shard 1 restarts: whatever the dead run claimed is burned, never handed out again
        assert pool.burn_claimed("batch", "1") == 8
        source = PoolIccSource(pool, store, ClaimTag("batch", "1"))
        rerun = [hashlib.sha256(source("sm2", None, None, tk).public_key).hexdigest()
                 for _ in range(52)]  # fmt: skip
        assert not set(rerun) & set(all_hashes)
        assert source.stats()["inline"] == 0
        assert pool.settle("batch", "1", rerun) == {"used": 52, "burned": 0}
        [status] = pool.status()
        assert status.as_dict() == {
            "spec": "sm2-256", "storage": STORAGE, "free": 0, "claimed": 0,
            "used": 92, "burned": 8,
        }  # fmt: skip


def test_parallel_fill_makes_unique_entries(store: SoftKeyStore, tmp_path: Path) -> None:
    with KeyPool(tmp_path / "keypool.db") as pool:
        result = fill(store, pool, SM2, store.active("tk-sm4"), 600, actor="ops", workers=2)
        assert result["added"] == 600 and result["free"] == 600
        entries = pool.claim(SM2, STORAGE, 600, ClaimTag("b", "0"))
        assert len({e.pair.public_key for e in entries}) == 600
        assert {e.pair.wrapped_under for e in entries} == {KeyRef(STORAGE, 1)}
        assert all(pool.entry_state(e.id) is PoolState.CLAIMED for e in entries)
    assert store.audit_trail.verify().ok
