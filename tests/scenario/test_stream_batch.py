"""Staging overlapped with preparing (``pipeline.steps.stream``, issue 7).

``cardprep run`` on two workers prepares the first staged segments while the
rest of the file is parsed.  Checked: it publishes what the step-by-step run
publishes (shards, counts, keys, the cards of every part and of the bureau
file, the rejects); the first segment really is prepared before the parse
has ended; a batch with a part from an earlier run takes the step-by-step
path; and a parse that fails half-way through a streamed run leaves nothing
published, and the re-run publishes every card exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import VerificationError
from pipeline.records import validate
from pipeline.steps import prepare, stream
from pipeline.steps.batch import run_batch
from pipeline.steps.prepare import WorkerPool
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BATCH_DATE,
    BatchEnv,
    elsewhere,
    env_fixture,
    shared_output,
)

SHARD = 70  # shards of 70 valid cards cross the 50-record staging segments


@pytest.mark.slow
def test_streamed_run_publishes_what_the_step_by_step_run_publishes(env: BatchEnv) -> None:
    sample = env.sample("stream-same.dat", 200, errors=0.05, seed=61)
    streamed = run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                         batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    stepwise = run_batch("demo", sample.path, elsewhere(env, "var-stepwise"), shard_size=SHARD,
                         workers=1, batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert streamed["shards"] == stepwise["shards"] >= 3
    assert streamed["counts"] == stepwise["counts"]
    assert shared_output(streamed) == shared_output(stepwise)


@pytest.mark.slow
def test_the_first_segment_is_prepared_before_the_parse_ends(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse writes parsed.json when it ends: it is not there when the first staged
    segment is read for preparing, and the parse had staged only part of the file."""
    sample = env.sample("stream-overlap.dat", 200, seed=62)
    seen: list[tuple[bool, int]] = []
    read = stream.read_segment

    def watched(store: Any, path: Path, *, batch_id: str, segment: int) -> Any:
        staging = path.parent
        seen.append(((staging / "parsed.json").exists(), len(list(staging.glob("segment-*")))))
        return read(store, path, batch_id=batch_id, segment=segment)

    monkeypatch.setattr(stream, "read_segment", watched)
    summary = run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                        batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert summary["counts"]["prepared"] == 200
    touched = [range(start // 50, (min(start + SHARD, 200) - 1) // 50 + 1)
               for start in range(0, 200, SHARD)]  # fmt: skip
    assert len(seen) == sum(map(len, touched)) == 6  # each shard reads the segments it spans
    parse_ended, staged = seen[0]
    assert not parse_ended and staged < 4


@pytest.mark.slow
def test_the_next_shard_is_sent_before_the_shard_before_is_committed(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards overlap: the workers never wait at a shard's end for its part to be committed
    and the next shard to be set up (issue 7); the parts are what a one-worker run writes."""
    sample = env.sample("stream-shards.dat", 200, errors=0.05, seed=69)
    events: list[tuple[str, int]] = []
    submit, commit = WorkerPool.submit, prepare._ShardRun.commit

    def submitted(self: WorkerPool, spec: Any, ipc: bytes) -> Any:
        events.append(("send", spec.shard))
        return submit(self, spec, ipc)

    def committed(self: Any) -> dict[str, Any]:
        events.append(("commit", self.index))
        return commit(self)

    monkeypatch.setattr(WorkerPool, "submit", submitted)
    monkeypatch.setattr(prepare._ShardRun, "commit", committed)
    streamed = run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                         batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    shards = streamed["shards"]
    assert shards >= 3 and [i for kind, i in events if kind == "commit"] == list(range(shards))
    for index in range(shards - 1):  # a chunk of the next shard went out before the commit
        assert events.index(("send", index + 1)) < events.index(("commit", index))
    stepwise = run_batch("demo", sample.path, elsewhere(env, "var-shards"), shard_size=SHARD,
                         workers=1, batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert shared_output(streamed) == shared_output(stepwise)


def test_a_batch_with_an_earlier_part_takes_the_step_by_step_path(env: BatchEnv) -> None:
    sample = env.sample("stream-earlier.dat", 120, seed=63)
    run_batch("demo", sample.path, env.settings, dry_run=True)  # nothing written
    batch = env.settings.raw["storage"]["root"]
    from pipeline.io.paths import batch_id_for, sha256_file  # noqa: PLC0415

    parts = Path(batch) / "batches" / "demo" / batch_id_for(sha256_file(sample.path)) / "parts"
    parts.mkdir(parents=True)
    (parts / "part-00000.parquet").write_bytes(b"left by a killed run")
    with WorkerPool(2) as pool:
        parsed, results = stream.stream_batch(
            "demo", sample.path, env.settings, BATCH_DATE,
            store=env.store, pool=pool, shard_size=SHARD,
        )  # fmt: skip
    assert results is None and parsed["valid"] == 120  # staged in full, then handed back
    summary = run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                        batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert summary["counts"]["prepared"] == 120  # the bogus part was prepared again


@pytest.mark.slow
def test_a_parse_failing_half_way_publishes_nothing_and_the_rerun_publishes_once(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = env.sample("stream-fail.dat", 200, errors=0.05, seed=64)
    check = validate.Validator.check
    from pipeline.io.paths import batch_id_for, sha256_file  # noqa: PLC0415

    base = Path(env.settings.raw["storage"]["root"]) / "batches" / "demo"
    batch = base / batch_id_for(sha256_file(sample.path))

    def failing(self: validate.Validator, raw: Any) -> Any:
        # the first record parsed after the first shard was prepared and committed (shards
        # overlap: it is committed while the next shard's chunks are being prepared)
        if (batch / "parts" / "part-00000.parquet").exists():
            raise VerificationError("staging", "disk gone (test)")
        return check(self, raw)

    monkeypatch.setattr(validate.Validator, "check", failing)
    with pytest.raises(VerificationError, match="disk gone"):
        run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                  batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert not (batch / "manifest.json").exists()
    committed = sorted((batch / "parts").glob("part-*[0-9].parquet"))
    assert committed, "the shard before the failure was committed"
    monkeypatch.setattr(validate.Validator, "check", check)
    summary = run_batch("demo", sample.path, env.settings, shard_size=SHARD, workers=2,
                        batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    fresh = run_batch("demo", sample.path, elsewhere(env, "var-fresh"), shard_size=SHARD,
                      workers=1, batch_date=BATCH_DATE, store=env.store)  # fmt: skip
    assert summary["counts"] == fresh["counts"]
    assert shared_output(summary) == shared_output(fresh)
