"""QA of the streamed run (``pipeline.steps.stream``): edge cases against the step-by-step path.

``cardprep run`` on two workers commits parts while the file is still being
staged, so a run that fails half-way leaves parts *without* the
``parsed.json`` they were prepared from; the re-run parses again.  Checked:
tiny batches (one valid record, none valid) publish what a one-worker run
publishes; a worker failing mid-stream leaves no lock and the re-run
publishes every card once; and a re-run whose parse stages other records
than the failed run did (another ``--batch-date``) prepares again instead of
resuming the failed run's parts (it once resumed them, matched by start/end
only, and publish refused the batch on every re-run): a part carries the
``staging_id`` of the parse that staged its records.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PreparationError
from pipeline.io.lock import held_locks
from pipeline.io.paths import batch_id_for, sha256_file
from pipeline.io.staging import records_from_ipc
from pipeline.keys.settings import Settings
from pipeline.records import validate
from pipeline.steps import prepare
from pipeline.steps.batch import run_batch
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BATCH_DATE,
    BatchEnv,
    elsewhere,
    env_fixture,
    shared_output,
)

SHARD = 40


def _batch_dir(settings: Settings, sample: Path) -> Path:
    root = Path(settings.raw["storage"]["root"])
    return root / "batches" / "demo" / batch_id_for(sha256_file(sample))


def _both(env: BatchEnv, sample: Path, name: str, day: date = BATCH_DATE) -> tuple[Any, Any]:
    """(two-worker streamed run, one-worker step-by-step run) of ``sample``, each in its root."""
    streamed = run_batch("demo", sample, elsewhere(env, f"{name}-w2"), shard_size=SHARD,
                         workers=2, batch_date=day, store=env.store)  # fmt: skip
    stepwise = run_batch("demo", sample, elsewhere(env, f"{name}-w1"), shard_size=SHARD,
                         workers=1, batch_date=day, store=env.store)  # fmt: skip
    return streamed, stepwise


def test_one_valid_record_streams_like_the_step_by_step_run(env: BatchEnv) -> None:
    sample = env.sample("qa-one-valid.dat", 30, errors=1.0, seed=71)  # every record but one bad
    streamed, stepwise = _both(env, sample.path, "qa-one")
    assert streamed["counts"]["prepared"] + streamed["counts"]["rejected"] == 30
    assert streamed["shards"] == stepwise["shards"] == 1
    assert shared_output(streamed) == shared_output(stepwise)
    assert held_locks() == []


def test_no_valid_record_streams_like_the_step_by_step_run(env: BatchEnv) -> None:
    sample = env.sample("qa-none-valid.dat", 20, seed=72)
    expired = date(2099, 1, 1)  # every card's expiry is before the batch month
    streamed, stepwise = _both(env, sample.path, "qa-none", expired)
    assert streamed["counts"] == stepwise["counts"] == {"in": 20, "prepared": 0, "rejected": 20}
    assert streamed["shards"] == stepwise["shards"] == 0
    assert shared_output(streamed) == shared_output(stepwise)


@pytest.mark.slow
def test_a_worker_failing_mid_stream_then_the_rerun_publishes_once(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = env.sample("qa-worker-fails.dat", 120, errors=0.05, seed=73)
    settings = elsewhere(env, "qa-worker")
    run = prepare.ShardWorker.run

    def failing(self: prepare.ShardWorker, ipc: bytes) -> Any:
        if any(r.line_no > 90 for r in records_from_ipc(ipc)):  # the pool is forked after this
            raise PreparationError("test", "worker failed (test)")
        return run(self, ipc)

    monkeypatch.setattr(prepare.ShardWorker, "run", failing)
    with pytest.raises(PreparationError, match="worker failed"):
        run_batch("demo", sample.path, settings, shard_size=SHARD, workers=2,
                  batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    monkeypatch.setattr(prepare.ShardWorker, "run", run)
    batch = _batch_dir(settings, sample.path)
    assert held_locks() == []
    assert not (batch / "manifest.json").exists()
    assert not list(batch.rglob("*.tmp"))
    assert list((batch / "parts").glob("part-*[0-9].parquet")), "a shard was committed first"
    again = run_batch("demo", sample.path, settings, shard_size=SHARD, workers=2,
                      batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    fresh = run_batch("demo", sample.path, elsewhere(env, "qa-worker-fresh"), shard_size=SHARD,
                      workers=1, batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert shared_output(again) == shared_output(fresh)


@pytest.mark.slow
def test_a_rerun_with_another_batch_date_after_a_failed_streamed_run_publishes(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step-by-step, parts exist only beside the parsed.json they came from (a re-run resumes
    it); streamed, a parse failing after a shard's commit leaves the part without it, and the
    re-run parses again: another --batch-date (a corrected one) stages other records."""
    sample = env.sample("qa-other-date.dat", 120, seed=74)
    settings = elsewhere(env, "qa-date")
    later = date(2028, 6, 1)  # about half the cards have expired by then
    check = validate.Validator.check
    batch = _batch_dir(settings, sample.path)

    def failing(self: validate.Validator, raw: Any) -> Any:
        # the first record parsed after shard 0's commit (shards overlap: it is committed
        # while the next shard's chunks are being prepared)
        if (batch / "parts" / "part-00000.parquet").exists():
            raise OSError(5, "I/O error (test)")
        return check(self, raw)

    monkeypatch.setattr(validate.Validator, "check", failing)
    with pytest.raises(OSError, match="I/O error"):
        run_batch("demo", sample.path, settings, shard_size=SHARD, workers=2,
                  batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    monkeypatch.setattr(validate.Validator, "check", check)
    assert (batch / "parts" / "part-00000.parquet").exists()
    assert not (batch / "staging" / "parsed.json").exists()
    again = run_batch("demo", sample.path, settings, shard_size=SHARD, workers=2,
                      batch_date=later, store=env.store)  # fmt: skip
    fresh = run_batch("demo", sample.path, elsewhere(env, "qa-date-fresh"), shard_size=SHARD,
                      workers=1, batch_date=later, store=env.store)  # fmt: skip
    assert shared_output(again) == shared_output(fresh)
