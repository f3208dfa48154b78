"""``staged_chunks``: a shard's records while they are being staged (pipeline.steps.stream).

A fake parse stages 50-record segments one at a time; the chunks must cover
the shard exactly and in order, never run ahead of what is staged, never cross
a segment, and leave the shard's end, count and segments as plan_shards cuts
them.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.io.staging import table_from_ipc
from pipeline.steps import stream
from pipeline.steps.parse import StagedProgress
from pipeline.steps.plan import plan_shards

SEGMENT = 50


def _parse(valid: int, records: int, log: list[int]) -> Generator[StagedProgress, None, dict]:
    for staged in [*range(SEGMENT, valid, SEGMENT), valid]:
        log.append(staged)
        yield StagedProgress(staged, records, "00" * 32, "5eed")
    return {"valid": valid}


class _Paths:
    batch_id = "00ab12cd34ef5678"

    def staged_segment(self, index: int) -> Path:
        return Path(f"segment-{index:05d}.sealed")


@pytest.mark.parametrize(("start", "valid"), [(0, 100), (70, 230), (140, 180), (0, 7)])
def test_chunks_cover_the_shard_as_staged(
    monkeypatch: pytest.MonkeyPatch, start: int, valid: int
) -> None:
    staged: list[int] = []
    reads: list[tuple[int, int]] = []  # (segment, staged when it was read)

    def read_segment(store: Any, path: Path, *, batch_id: str, segment: int) -> Any:
        reads.append((segment, staged[-1]))
        first = segment * SEGMENT
        return pa.table({"ordinal": list(range(first, min(first + SEGMENT, valid)))})

    monkeypatch.setattr(stream, "read_segment", read_segment)
    feed = stream.StagedFeed(_parse(valid, valid + 9, staged))
    shard: dict[str, Any] = {"start": start, "segment_size": SEGMENT}
    sizes, got = [], []
    for ipc in stream.staged_chunks(feed, None, _Paths(), shard,  # type: ignore[arg-type]
                                    shard_size=70, chunk=16):  # fmt: skip
        rows = table_from_ipc(ipc).column("ordinal").to_pylist()
        sizes.append(len(rows))
        got += rows
        assert rows[-1] // SEGMENT == rows[0] // SEGMENT  # within one segment
    end = min(start + 70, valid)
    assert got == list(range(start, end))
    assert all(seg * SEGMENT + SEGMENT <= when or when == valid for seg, when in reads)
    assert max(sizes) <= 16
    planned = [s for s in plan_shards(_parsed(valid), 70) if s["start"] == start]
    assert {k: shard[k] for k in ("end", "count", "segments")} == {
        k: planned[0][k] for k in ("end", "count", "segments")
    }


def _parsed(valid: int) -> dict[str, Any]:
    return {"batch_id": "00ab12cd34ef5678", "issuer": "demo", "valid": valid,
            "batch_dir": "/b", "segment_size": SEGMENT, "products": [],
            "input_sha256": "00" * 32}  # fmt: skip


@pytest.mark.parametrize(
    ("start", "valid", "ahead"), [(0, 230, 150), (100, 230, 230), (0, 100, 100)]
)
def test_a_full_shard_stages_the_next_shards_first_segment_before_it_ends(
    monkeypatch: pytest.MonkeyPatch, start: int, valid: int, ahead: int
) -> None:
    """While the workers finish a shard's last chunks, not after (issue 7: both idle then)."""
    staged: list[int] = []

    def read_segment(store: Any, path: Path, *, batch_id: str, segment: int) -> Any:
        first = segment * SEGMENT
        return pa.table({"ordinal": list(range(first, min(first + SEGMENT, valid)))})

    monkeypatch.setattr(stream, "read_segment", read_segment)
    feed = stream.StagedFeed(_parse(valid, valid, staged))
    shard: dict[str, Any] = {"start": start, "segment_size": SEGMENT}
    chunks = stream.staged_chunks(feed, None, _Paths(), shard,  # type: ignore[arg-type]
                                  shard_size=100, chunk=16)  # fmt: skip
    for _ in chunks:
        assert staged[-1] <= min(start + 100, valid)  # no further while the shard is fed
    assert feed.staged == ahead  # one segment past the shard (or the parse's end)
    assert shard["end"] == min(start + 100, valid)
