"""Locks, Parquet parts, shard plans, line reconciliation and the report renderer."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BatchLockedError, ReconciliationError, VerificationError
from pipeline.io.lock import exclusive_lock, held_locks
from pipeline.io.parts import PART_SCHEMA, PartWriter, read_part_metadata
from pipeline.io.report import reason_rows, render_html
from pipeline.steps.plan import plan_shards
from pipeline.steps.publish import reconcile_lines

FORK = multiprocessing.get_context("fork")


def _hold(path: str, ready, release) -> None:  # child process
    with exclusive_lock(Path(path), "holder"):
        ready.set()
        release.wait(10)


def test_lock_is_reentrant_in_process_and_exclusive_across_processes(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with exclusive_lock(lock, "outer"), exclusive_lock(lock, "inner"):
        assert held_locks() == [str(lock)]
    assert held_locks() == []
    ready, release = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_hold, args=(str(lock), ready, release))
    child.start()
    try:
        assert ready.wait(10)
        busy = r"batch x is being processed by pid \d+: holder"
        with pytest.raises(BatchLockedError, match=busy), exclusive_lock(lock, "batch x"):
            pass
        release.set()
        with exclusive_lock(lock, "batch x", wait=10):  # waits until the holder lets go
            assert held_locks() == [str(lock)]
    finally:
        release.set()
        child.join(10)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    ready, release = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_hold, args=(str(lock), ready, release))
    child.start()
    assert ready.wait(10)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    started = time.monotonic()
    with exclusive_lock(lock, "after crash", wait=5):
        pass
    assert time.monotonic() - started < 2


def _rows(n: int) -> dict:
    return {
        "batch_id": ["00ab"] * n, "line_no": list(range(2, n + 2)), "product": ["p"] * n,
        "masked_pan": ["476173******0119"] * n, "pan_token": ["t"] * n,
        "dgi_ids": [[0x0101, 0x8000]] * n, "dgi_encrypted": [[False, True]] * n,
        "card_data": [b"x"] * n, "kcvs": ["{}"] * n, "icc_pk_sha256": ["h"] * n,
    }


def test_part_metadata_round_trip_and_atomicity(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    with PartWriter(path) as part:
        part.write_rows(_rows(3))
        part.write_rows(pa.table(_rows(2), schema=PART_SCHEMA))
        part.metadata = {"index": 0, "result": {"prepared": 5}}
    meta = read_part_metadata(path)
    assert meta["rows"] == 5 and meta["index"] == 0 and meta["result"] == {"prepared": 5}
    with pytest.raises(RuntimeError), PartWriter(tmp_path / "part-00001.parquet") as part:
        part.write_rows(_rows(1))
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]
    pa.parquet.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(VerificationError, match="not a cardprep part"):
        read_part_metadata(tmp_path / "foreign.parquet")


@given(valid=st.integers(0, 5000), segment=st.integers(1, 700), shard=st.integers(1, 900))
@settings(max_examples=200, deadline=None)
def test_shards_cover_the_valid_records_once(valid: int, segment: int, shard: int) -> None:
    parsed = {"batch_id": "b", "issuer": "i", "batch_dir": "/x", "input_sha256": "s",
              "products": [], "valid": valid, "segment_size": segment}
    shards = plan_shards(parsed, shard)
    covered = [i for s in shards for i in range(s["start"], s["end"])]
    assert covered == list(range(valid))
    for s in shards:
        assert 0 < s["count"] <= shard
        segs = {i // segment for i in range(s["start"], s["end"])}
        assert s["segments"] == sorted(segs)


def test_reconcile_lines_finds_duplicates_and_losses() -> None:
    reconcile_lines(4, [("a", [2, 5]), ("b", [3, 4])])
    with pytest.raises(ReconciliationError, match=r"b \[duplicate line\]: input line 5"):
        reconcile_lines(4, [("a", [2, 5]), ("b", [5, 4])])
    with pytest.raises(ReconciliationError, match="3 input lines accounted for"):
        reconcile_lines(4, [("a", [2, 5, 3])])
    reconcile_lines(1, [("a", [100_000])])  # the bitmap grows past its first guess


def test_report_html_escapes_and_names_reasons() -> None:
    html = render_html({"batch_id": "<b>", "counts": {"in": 1, "prepared": 1, "rejected": 0},
                        "per_product": {"<p>": {"in": 1, "prepared": 1, "rejected": 0}},
                        "reasons": reason_rows({"R081": 1, "R999": 2})})
    assert "<b>" not in html and "&lt;b&gt;" in html and "&lt;p&gt;" in html
    assert "<td>SELF_CHECK_KCV</td>" in html and "<td>UNKNOWN</td>" in html
    assert "records in = prepared + rejected" in html
