"""Shards of one batch through one shared process pool (``WorkerPool``, issue 7).

``cardprep run`` passes one pool to every shard.  Checked: the pool starts
once for four shards; every shard's part holds exactly its cards, in order,
and equals what a shard on a pool of its own writes (same line numbers,
products, masked PANs and PAN tokens; the sealed card data and ICC keys are
random); small shards get small chunks (``chunk_records``); a shard that
fails shuts the pool down and the next shard restarts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.steps import prepare
from pipeline.steps.parse import verify_and_parse
from pipeline.steps.plan import plan_shards
from pipeline.steps.prepare import WorkerPool, chunk_records, prepare_shard
from tests.scenario.batchkit import BatchEnv, env_fixture  # noqa: F401 (fixtures)

COLUMNS = ["line_no", "product", "masked_pan", "pan_token"]


def _part(result: dict[str, Any]) -> list[dict[str, Any]]:
    return pq.read_table(result["part"], columns=COLUMNS).to_pylist()


@pytest.mark.slow
def test_one_pool_serves_every_shard_like_per_shard_pools(env: BatchEnv) -> None:
    sample = env.sample("shared-pool.dat", 40, errors=0.05, seed=41)
    parsed = verify_and_parse("demo", sample.path, env.settings, store=env.store)
    shards = plan_shards(parsed, 6)
    assert len(shards) >= 3, parsed["valid"]
    with WorkerPool(2) as pool:
        shared = [prepare_shard(s, env.settings, 2, store=env.store, pool=pool) for s in shards]
        assert pool.started == 1
    for shard, result in zip(shards, shared, strict=True):
        assert result["prepared"] + result["rejected"] == shard["count"]
        assert result["workers"] == min(2, int(shard["count"]))
        assert result["chunk_records"] == chunk_records(16, int(shard["count"]), 2)
    rows = [_part(r) for r in shared]
    # the same shards again, each on a pool of its own (the Airflow path): same cards
    for result in shared:
        Path(result["part"]).unlink()
    alone = [prepare_shard(s, env.settings, 2, store=env.store) for s in shards]
    assert [_part(r) for r in alone] == rows
    assert sum(len(r) for r in rows) == sum(r["prepared"] for r in shared) > 12


@pytest.mark.slow
def test_a_failed_shard_stops_the_pool_and_the_next_one_restarts_it(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = env.sample("shared-pool-fail.dat", 40, seed=42)
    parsed = verify_and_parse("demo", sample.path, env.settings, store=env.store)
    first, second = plan_shards(parsed, 6)[:2]
    with WorkerPool(2) as pool:
        monkeypatch.setattr(prepare, "_run_chunk", _boom)  # forked workers inherit the patch
        with pytest.raises(RuntimeError, match="boom"):
            prepare_shard(first, env.settings, 2, store=env.store, pool=pool)
        assert pool.started == 1
        monkeypatch.undo()
        done = prepare_shard(second, env.settings, 2, store=env.store, pool=pool)
        assert pool.started == 2
    assert done["prepared"] + done["rejected"] == second["count"]


def _boom(*args: Any) -> tuple[str, Any, Any]:
    raise RuntimeError("boom")
