"""Staging overlapped with preparing: ``cardprep run`` on several workers (issue 7).

Run one after the other, the parse (verify, validate, stage) leaves every
worker of the pool idle, and on two cores it is the largest serial part of a
batch.  Here the workers prepare the first segments while the parent parses
the rest, in one thread, pulled by the pool:

* the parse is :func:`pipeline.steps.parse.staged_parse`, a generator that
  stops after each sealed segment it writes (the file is verified, header,
  trailer and hash total, and the delivery checked, before the first one);
* each shard's records come from :func:`staged_chunks`, which reads a staged
  segment once the parse has written it, advancing the parse when the pool
  asks for a chunk that is not staged yet (at most ``2 x workers`` chunks are
  in flight, so the parent parses while the workers prepare);
* the shards go through
  :func:`pipeline.steps.prepare.prepare_streamed_shards`: the same lock, ICC
  key pool bookkeeping, part file and result as ``prepare_shard``, and the
  next shard's chunks sent while the last ones of the shard before are still
  being prepared.  A shard learns its end when the parse reaches it (a full
  shard) or ends.

When the parse has ended, :func:`pipeline.steps.plan.plan_shards` must give
exactly the shards that were prepared, or the run fails
(:class:`~pipeline.errors.PreparationError`): publish then sees what it sees
after the step-by-step run, which the Airflow DAG keeps doing.  A batch that
resumes (staging complete, or only reconcile left), has a part from an
earlier run, or stages no valid record is handed back to the step-by-step
path (:func:`stream_batch` returns no results).

Example:
    >>> parsed, results = stream_batch("demo", path, settings, store=ks, pool=pool,
    ...                                shard_size=5000)                # doctest: +SKIP
    >>> sum(r["prepared"] for r in results) + parsed["rejected"] >= 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.errors import PreparationError
from pipeline.io.paths import BatchPaths, batch_id_for
from pipeline.io.staging import read_segment, table_to_ipc
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.records.issuers import load_issuer
from pipeline.records.parse import FileSummary
from pipeline.steps.context import batch_settings
from pipeline.steps.parse import StagedProgress, available_products, staged_parse
from pipeline.steps.plan import plan_shards
from pipeline.steps.prepare import WorkerPool, chunk_records, prepare_streamed_shards

__all__ = ["StagedFeed", "staged_chunks", "stream_batch"]

log = logging.getLogger(__name__)


@dataclass
class StagedFeed:
    """How far a :func:`~pipeline.steps.parse.staged_parse` generator has staged.

    ``last``: the parse's latest :class:`StagedProgress` (its file's trailer
    count, SHA-256 and staging identity); ``parsed``: the result dict once the
    parse has ended (``done``).
    """

    steps: Generator[StagedProgress, None, dict[str, Any]]
    last: StagedProgress = field(default_factory=lambda: StagedProgress(0, 0, "", ""))
    parsed: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        """True once the parse has returned its result."""
        return self.parsed is not None

    @property
    def staged(self) -> int:
        """Valid records staged so far (all of them once the parse has ended)."""
        return int(self.parsed.get("valid", self.last.staged)) if self.parsed else self.last.staged

    def advance(self) -> None:
        """Run the parse to its next staged segment (or to its end)."""
        try:
            self.last = next(self.steps)
        except StopIteration as end:
            self.parsed = dict(end.value)

    def until(self, staged: int) -> int:
        """Advance until ``staged`` valid records are staged or the parse ends; the count."""
        while not self.done and self.staged < staged:
            self.advance()
        return self.staged

    def finish(self) -> dict[str, Any]:
        """Run the parse to its end; its result dict."""
        while self.parsed is None:
            self.advance()
        return self.parsed


def staged_chunks(
    feed: StagedFeed,
    store: KeyStore,
    paths: BatchPaths,
    shard: dict[str, Any],
    *,
    shard_size: int,
    chunk: int,
) -> Iterator[bytes]:
    """The shard's records as Arrow IPC chunks, each read once its segment is staged.

    ``shard`` holds ``start`` and ``segment_size``; when the iterator is
    exhausted (the shard is full, or the parse ended inside it) it has set
    ``end``, ``count`` and ``segments`` as :func:`~pipeline.steps.plan.plan_shards`
    would.  Chunks never cross a segment (as the step-by-step path's).
    (Quarter-size chunks at a shard's end, so both workers end it together,
    measured 0.05-0.1 s *slower* per 12,000-card batch: more tasks while the
    parent still parses.)
    """
    start, seg_size = int(shard["start"]), int(shard["segment_size"])
    limit = start + shard_size
    pos = start
    while pos < limit:
        seg = pos // seg_size
        first = seg * seg_size
        avail = min(feed.until(min(first + seg_size, limit)), limit, first + seg_size)
        if pos >= avail:  # the parse ended before this shard's limit
            break
        table = read_segment(store, paths.staged_segment(seg), batch_id=paths.batch_id, segment=seg)
        for offset in range(pos - first, avail - first, chunk):
            yield table_to_ipc(table.slice(offset, min(chunk, avail - first - offset)))
        pos = avail
    shard["end"] = pos
    shard["count"] = pos - start
    shard["segments"] = list(range(start // seg_size, (pos - 1) // seg_size + 1))
    # the next shard's first segment, staged now: while the workers finish this shard's
    # last chunks, not after, when both would wait for it (issue 7: ~16 ms a shard)
    feed.until(limit + 1)


def stream_batch(
    issuer: str,
    path: str | Path,
    settings: Settings,
    batch_date: date | None = None,
    *,
    force: bool = False,
    store: KeyStore,
    pool: WorkerPool,
    shard_size: int,
    verified: FileSummary | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """Parse and prepare ``path`` overlapped (module docstring): (parsed, shard results).

    The results are None when the batch must take the step-by-step path
    (resumed, a part from an earlier run, nothing valid); the parse has then
    ended and ``parsed`` is its result.  ``verified``: as for
    :func:`~pipeline.steps.parse.verify_and_parse`.
    """
    bs = batch_settings(settings)
    cfg = load_issuer(issuer, bs.config_dir)
    bs = bs.for_bureau(cfg.bureau)
    feed = StagedFeed(
        staged_parse(
            issuer, path, settings, batch_date, force=force, store=store, verified=verified
        )
    )
    try:
        feed.advance()  # verification and the delivery check, then the first segment
        if feed.done:
            return feed.finish(), None
        paths = bs.paths(cfg.id, batch_id_for(feed.last.input_sha256))
        if paths.parts.is_dir() and any(paths.parts.glob("part-*.parquet")):
            log.info("batch %s: parts of an earlier run; staging first, then resuming them",
                     paths.batch_id)  # fmt: skip
            return feed.finish(), None
        base = {
            "batch_id": paths.batch_id, "issuer": cfg.id, "batch_dir": str(paths.base),
            "input_sha256": feed.last.input_sha256, "staging_id": feed.last.staging_id,
            "products": available_products(cfg.products, bs.config_dir),
            "segment_size": bs.segment_size,
        }  # fmt: skip
        shards: list[dict[str, Any]] = []

        def shards_as_staged() -> Iterator[tuple[dict[str, Any], Iterator[bytes], int]]:
            """The next shard once the parse has staged a record beyond the last one's end."""
            while feed.until(len(shards) * shard_size + 1) > len(shards) * shard_size:
                start = len(shards) * shard_size
                shard = dict(base, index=len(shards), start=start)
                shards.append(shard)
                expected = min(shard_size, max(1, feed.last.records - start))
                chunk = chunk_records(bs.chunk_size, expected, pool.workers)
                chunks = staged_chunks(feed, store, paths, shard, shard_size=shard_size,
                                       chunk=chunk)  # fmt: skip
                yield shard, chunks, chunk

        results = prepare_streamed_shards(shards_as_staged(), settings, store=store, pool=pool)
        parsed = feed.finish()
    except BaseException:
        feed.steps.close()  # the parse's rejects writer and locks end with the run
        raise
    _check_plan(plan_shards(parsed, shard_size), shards)
    return parsed, results


def _check_plan(planned: list[dict[str, Any]], streamed: list[dict[str, Any]]) -> None:
    """The shards prepared while staging are exactly those the parse's result plans.

    Example:
        >>> _check_plan([{"index": 0, "end": 3}], [{"index": 0, "end": 2}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pipeline.errors.PreparationError: shards: prepared while staging [(0, 2)], the parse ...
    """
    if planned != streamed:
        raise PreparationError(
            "shards",
            f"prepared while staging {[(s.get('index'), s.get('end')) for s in streamed]}, "
            f"the parse plans {[(s.get('index'), s.get('end')) for s in planned]}",
        )
