"""Scenario: a shard killed between its part's commit and the pool settle is settled on resume.

``prepare_shard`` commits the part (the shard's commit marker), then settles
the ICC key pool (written cards' keys -> ``used``).  A kill between the two
leaves the shard's entries ``claimed``.  Here the settle of the first run
raises (standing in for the kill), so the batch stops with its part on disk
and 12 entries claimed; the re-run resumes the shard from the part and must
settle it from the part's ``icc_pk_sha256`` column: exactly the part's keys
become ``used``, nothing stays claimed, nothing is burned, and no card is
prepared again (same hashes).  A second resume of a settled shard changes
nothing (the settle is idempotent).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.errors import CardprepError
from pipeline.keys.pool import pool_path
from pipeline.records.sample import write_sample
from pipeline.steps import prepare
from pipeline.steps.batch import run_batch
from pipeline.steps.plan import plan_shards
from tests.scenario.test_pool_batch import BATCH_DATE, _config, _settings, _store_with_pool


class _Killed(CardprepError):
    """Stands in for a kill right after the part's commit (test only)."""


def _states(settings: Any) -> dict[str, set[str]]:
    conn = sqlite3.connect(pool_path(settings))
    try:
        out: dict[str, set[str]] = {}
        for state, pk in conn.execute("SELECT state, pk_sha256 FROM entries"):
            out.setdefault(state, set()).add(pk)
        return out
    finally:
        conn.close()


@pytest.mark.slow
def test_resumed_shard_settles_its_claimed_pool_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path)
    settings = _settings(tmp_path, cfg)
    store = _store_with_pool(tmp_path, settings, 16)
    try:
        sample = write_sample("demo", 12, tmp_path / "inbound" / "demo" / "a.dat", seed=5,
                              batch_date=BATCH_DATE, config_dir=cfg)  # fmt: skip

        def killed(*args: Any) -> dict[str, int]:
            raise _Killed("settle", "killed after the part's commit")

        monkeypatch.setattr(prepare, "settle_shard", killed)
        with pytest.raises(_Killed):
            run_batch("demo", sample.path, settings, shard_size=12, workers=1,
                      batch_date=BATCH_DATE, store=store)  # fmt: skip
        parts = sorted((tmp_path / "var").rglob("parts/part-00000.parquet"))
        assert len(parts) == 1
        hashes = set(pq.read_table(parts[0], columns=["icc_pk_sha256"]).column(0).to_pylist())
        assert len(hashes) == 12
        assert _states(settings).get("claimed") == hashes  # the kill left them claimed
        assert "used" not in _states(settings)

        monkeypatch.undo()
        summary = run_batch("demo", sample.path, settings, shard_size=12, workers=1,
                            batch_date=BATCH_DATE, store=store)  # fmt: skip
        assert summary["counts"] == {"in": 12, "prepared": 12, "rejected": 0}
        states = _states(settings)
        assert states.get("used") == hashes  # exactly the part's keys, nothing prepared again
        assert "claimed" not in states and "burned" not in states
        assert len(states["free"]) == 4

        # the settle is idempotent: resuming the settled shard again changes nothing
        shard = _shard_of(settings, sample.path, store)
        again = prepare.prepare_shard(shard, settings, workers=1, store=store)
        assert again["resumed"] is True and again["pool"] == {"used": 0, "burned": 0}
        assert _states(settings) == states
    finally:
        store.close()


def _shard_of(settings: Any, path: Path, store: Any) -> dict[str, Any]:
    """The plan of the batch's only shard (as run_batch built it), without staging anything.

    A plan names the parse that staged its records (``staging_id``): the
    committed part's, as run_batch's plan did.
    """
    from pipeline.io.parts import read_part_metadata  # noqa: PLC0415
    from pipeline.steps.parse import verify_and_parse  # noqa: PLC0415

    parsed = verify_and_parse("demo", path, settings, BATCH_DATE, stage=False, store=store)
    [shard] = plan_shards(parsed, 12)
    part = Path(parsed["batch_dir"]) / "parts" / "part-00000.parquet"
    return dict(shard, staging_id=read_part_metadata(part)["staging_id"])
