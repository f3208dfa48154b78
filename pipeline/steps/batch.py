"""``cardprep run``: the whole batch in one process, composing the DAG's steps.

The same functions are the Airflow tasks (issue 6); here they run one after
another under one exclusive batch lock, with one key store handle:
verify/parse -> plan -> prepare each shard -> publish -> reconcile.  The
shards share one process pool (:class:`~pipeline.steps.prepare.WorkerPool`),
not one per shard; it starts before the file is parsed, so fork and each
worker's tables (:meth:`~pipeline.steps.prepare.WorkerPool.warm`) overlap the
parse.  On more than one worker the workers prepare the first staged segments
while the parent stages the rest (:mod:`pipeline.steps.stream`); the shards,
parts and everything published are those of the step-by-step path.  A second
run of the same file while this one holds the lock waits
``batch.lock_wait`` seconds, then refuses with
:class:`~pipeline.errors.BatchLockedError`; after it, the batch is published
and a re-run is refused (:class:`~pipeline.errors.PublishError`) unless
``force``.  One exception: a run killed after the manifest (the commit
marker) but before reconcile finished left a published batch with its
staging; the re-run finishes the idempotent reconcile step (audit once,
delete staging) without preparing anything, and returns its summary
(``resumed: "reconcile"``).  A re-triggered ``card_batch`` run does likewise:
its ``verify_and_parse`` returns
:func:`~pipeline.steps.reconcile.unreconciled_summary` for such a batch.

Another file whose header names a delivery already taken in as another batch
(a re-sent delivery with other bytes) is refused as well, unless ``force``
(:func:`~pipeline.steps.parse.check_delivery`).  A run refused before it
wrote anything (that, a wrong issuer in the header, a bad trailer...) leaves
no batch directory behind.

Example:
    >>> summary = run_batch("demo", "inbound/x.dat", load_settings())  # doctest: +SKIP
    >>> summary["counts"]                                                         # doctest: +SKIP
    {'in': 3000, 'prepared': 2970, 'rejected': 30}
"""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.io.lock import exclusive_lock
from pipeline.io.manifest import load_manifest
from pipeline.io.paths import batch_id_for
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.records.issuers import load_issuer
from pipeline.records.layout import load_layout
from pipeline.records.parse import verify_file
from pipeline.steps.context import batch_settings, default_workers, opened_store
from pipeline.steps.parse import verify_and_parse
from pipeline.steps.plan import plan_shards
from pipeline.steps.prepare import WorkerPool, prepare_shard
from pipeline.steps.publish import publish
from pipeline.steps.reconcile import is_unreconciled, parse_counts, reconcile
from pipeline.steps.stream import stream_batch

__all__ = ["run_batch"]

log = logging.getLogger(__name__)


def run_batch(
    issuer: str,
    path: str | Path,
    settings: Settings,
    *,
    shard_size: int | None = None,
    workers: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    batch_date: date | None = None,
    store: KeyStore | None = None,
) -> dict[str, Any]:
    """Run every step for one file; return the reconcile summary (+ shard and parse counts).

    ``dry_run`` verifies and validates the file and plans the shards without
    writing anything or touching a key.
    """
    started = time.monotonic()
    bs = batch_settings(settings)
    size = shard_size or bs.shard_size
    if dry_run:
        parsed = verify_and_parse(issuer, path, settings, batch_date, force=force, stage=False)
        shards = plan_shards(parsed, size)
        return {
            "dry_run": True,
            "batch_id": parsed["batch_id"],
            "batch_dir": parsed["batch_dir"],
            "records": parsed["records"],
            "valid": parsed["valid"],
            "rejected": parsed["rejected"],
            "valid_per_product": parsed["valid_per_product"],
            "reasons": parsed["reasons"],
            "shards": len(shards),
        }
    cfg = load_issuer(issuer, bs.config_dir)
    layout = load_layout(cfg.layout, bs.config_dir)
    # the file's one verification pass (header, trailer, hash total; its SHA-256 is the
    # batch id): the parse takes it instead of verifying the file a second time
    verified = verify_file(Path(path), layout)
    batch_id = batch_id_for(verified.sha256)
    paths = bs.paths(cfg.id, batch_id)
    # discard_unused: a file refused before anything is written (wrong issuer,
    # bad trailer, a re-sent delivery...) leaves no batch directory holding only .lock
    with exclusive_lock(paths.lock, f"batch {batch_id}", wait=bs.lock_wait,
                        discard_unused=True), \
            opened_store(settings, store) as ks:  # fmt: skip
        if not force and is_unreconciled(paths):
            log.warning("batch %s is published but its reconcile step did not finish "
                        "(killed?): finishing it, nothing is prepared again", batch_id)  # fmt: skip
            summary = reconcile({"batch_dir": str(paths.base)}, settings, store=ks)
            return _resumed(summary, paths.manifest, started)
        with WorkerPool(default_workers(workers, bs)) as pool:  # one pool for every shard
            # fork and per-worker tables overlap the parse (issue 7, run F)
            pool.warm(bs.config_dir, tuple(sorted(cfg.products)))
            results: list[dict[str, Any]] | None = None
            if pool.workers > 1:  # the workers prepare while the rest is staged (issue 7)
                parsed, results = stream_batch(issuer, path, settings, batch_date, force=force,
                                               store=ks, pool=pool, shard_size=size,
                                               verified=verified)  # fmt: skip
            else:
                parsed = verify_and_parse(issuer, path, settings, batch_date, force=force,
                                          store=ks, verified=verified)  # fmt: skip
            if results is None:
                results = [prepare_shard(shard, settings, workers, store=ks, pool=pool)
                           for shard in plan_shards(parsed, size)]  # fmt: skip
            log.info("batch %s: %d shard(s) of up to %d records", batch_id, len(results), size)
        published = publish(parsed, results, settings, force=force, store=ks)
        summary = reconcile(published, settings, store=ks)
    summary["shards"] = len(results)
    summary["records"] = parsed["records"]
    summary["valid"] = parsed["valid"]
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def _resumed(summary: dict[str, Any], manifest_path: Path, started: float) -> dict[str, Any]:
    """The summary of a run that only finished reconcile: counts from the manifest."""
    manifest = load_manifest(manifest_path)
    parsed = parse_counts(manifest["counts"])
    summary["resumed"] = "reconcile"
    summary["shards"] = len(manifest["shards"])
    summary["records"] = parsed["records"]
    summary["valid"] = parsed["valid"]
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary
