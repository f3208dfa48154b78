"""Step 4 (DAG task ``prepare``, mapped over shards): cards of one shard, on every core.

DESIGN.md step 4 and issue 7: inside a shard a process pool (one worker per
core, ``fork`` context) prepares the cards.  Each worker opens its own key
store handle and builds one :class:`~pipeline.prep.card.CardPreparer` per
product *once*, in the pool initializer.  Records flow to the workers as
Arrow IPC chunks (``batch.chunk_size`` records, 256 by default, smaller on
small shards: :func:`chunk_records`) and come back
as compact Arrow rows of :data:`~pipeline.io.parts.PART_SCHEMA` whose
``card_data`` is already sealed in the worker: no clear PAN or card data
crosses back, and at most ``2 x workers`` chunks are in flight, so memory stays
flat whatever the shard size.

Output, atomically: ``parts/part-NNNNN.rejects.parquet`` first, then
``parts/part-NNNNN.parquet`` whose metadata (plan, counts, the rejects file's
SHA-256, the result dict) makes it the shard's commit marker.  A re-run finds
a complete part with the same plan and returns its recorded result (resume);
anything else is prepared again and overwritten, so a card is never written
twice.  Two runs never prepare the same shard at once (shard lock).

ICC key pools (issue 7): for ``icc_key.source: pool`` products each worker
takes its keys from the pool (:func:`pipeline.steps.keypool.shard_icc_source`);
the shard first burns what a crashed run of it claimed, and after the part is
committed its cards' keys become ``used`` and every other claim is burned
(``result["pool"]``).  A resumed shard settles again from its part's
``icc_pk_sha256`` column (a kill between the part's commit and the settle
left its entries claimed).  Shards streamed on one pool overlap
(:func:`prepare_streamed_shards`): a worker releases a shard's never-handed
claims when it takes its first chunk of the next shard, and every shard is
settled once all are committed and the workers have ended the last one.

``workers=1`` prepares in the calling process (no pool).

Example:
    >>> result = prepare_shard(shards[0], settings, workers=2)   # doctest: +SKIP
    >>> result["prepared"] + result["rejected"] == shards[0]["count"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.crypto import sm2
from pipeline.errors import CardprepError, PreparationError, VerificationError
from pipeline.io.lock import exclusive_lock
from pipeline.io.parts import PART_SCHEMA, PartWriter, read_part_metadata
from pipeline.io.paths import BatchPaths, sha256_file
from pipeline.io.perso import CardSealer
from pipeline.io.rejects import reject_row, write_reject_table
from pipeline.io.staging import read_segment, records_from_ipc, table_from_ipc, table_to_ipc
from pipeline.io.workers import exit_with_parent
from pipeline.keys import open_store
from pipeline.keys.model import IccKeyPair, KeyRef, TranslateCheck
from pipeline.keys.pool import DryPolicy, PoolIccSource
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.prep.card import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles.loader import load_product
from pipeline.profiles.model import IccKeyAlgorithm, IccKeySource
from pipeline.records.issuers import IssuerConfig, load_issuer
from pipeline.records.layout import Layout, SecretPadding, load_layout
from pipeline.steps.context import (
    BatchSettings,
    batch_paths,
    batch_settings,
    default_workers,
    opened_store,
)
from pipeline.steps.keypool import begin_shard, dry_policy, settle_shard, shard_icc_source

__all__ = [
    "ShardWorker",
    "WorkerPool",
    "WorkerSpec",
    "chunk_records",
    "prepare_shard",
    "prepare_streamed_shards",
    "resolve_keys",
]

log = logging.getLogger(__name__)

_ERROR = "error"
#: ``json.dumps(kcvs, sort_keys=True)`` with its encoder built once, not per card (issue 7)
_kcvs_json = json.JSONEncoder(sort_keys=True).encode
#: the part columns :meth:`ShardWorker.run` fills, in the order it binds their appends
_PART_COLUMNS = (
    "batch_id", "line_no", "product", "masked_pan", "pan_token", "dgi_ids", "dgi_encrypted",
    "card_data", "kcvs", "icc_pk_sha256",
)  # fmt: skip
#: what a chunk task returns: ("ok", part rows IPC, reject rows) or ("error", marker, None)
_Result = tuple[str, Any, Any]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs (picklable; ``handle`` may carry the soft store's HMK).

    ``handle`` is the soft store's :meth:`worker_handle` (opened read-only in
    the worker); ``None`` means "open the store ``settings`` describe".
    """

    settings: Settings
    handle: Any
    config_dir: Path
    kek: str
    pan_token: str
    data_key: KeyRef
    batch_id: str
    products: tuple[str, ...]
    #: (secret field, TranslateCheck value) from the issuer layout's ``padding``.
    secret_checks: tuple[tuple[str, str], ...] = ()
    #: the shard index: ICC key pool claims are recorded per (batch, shard).
    shard: int = 0
    #: records per pool task (:func:`chunk_records`): caps each ICC key pool claim.
    chunk_records: int = 256


def secret_checks_for(layout: Layout) -> tuple[tuple[str, str], ...]:
    """What the store checks while translating each secret field of ``layout``.

    ``iso9797-m2`` padded fields (CVV, iCVV, track secrets) are checked for
    padding method 2 inside the store, so a field under the wrong KEK or
    corrupted becomes reject R071 instead of noise on the card.  The PIN
    block check (format 0 against the PAN) is the preparer's default.

    Example:
        >>> dict(secret_checks_for(load_layout("demo-fixed")))["cvv"]
        'iso9797-m2'
    """
    return tuple(
        (f.name, TranslateCheck.ISO9797_M2.value)
        for f in layout.secret_fields
        if f.padding is SecretPadding.ISO9797_M2
    )


class _ShardIccSource:
    """A preparer's ``icc_source`` that follows the worker's current shard.

    Pool claims are tagged per (batch, shard), so a worker reused across the
    shards of a batch opens a new :class:`PoolIccSource` per shard
    (:meth:`ShardWorker.begin`) and releases it at the shard's end
    (:meth:`ShardWorker.end_shard`), before the parent settles the shard.
    """

    def __init__(self, policy: DryPolicy) -> None:
        self.policy = policy
        self.current: PoolIccSource | None = None

    def __call__(
        self, algorithm: str, bits: int | None, exponent: int | None, tk: KeyRef
    ) -> IccKeyPair:
        if self.current is None:
            raise PreparationError("icc_source", "no shard started in this worker")
        return self.current(algorithm, bits, exponent, tk)


class ShardWorker:
    """One worker's state: its store handle and one CardPreparer per product.

    Built once per worker process and reused for every shard of the same
    batch plan; :meth:`begin` switches the per-shard state (the ICC key pool
    claims) when a chunk of another shard arrives.
    """

    def __init__(self, spec: WorkerSpec, store: KeyStore | None = None) -> None:
        self.spec = spec
        self.own_store = store is None
        if store is None:
            store = spec.handle.open() if spec.handle is not None else open_store(spec.settings)
        self.store: KeyStore = store
        #: seals each prepared card under the batch's data key (its header cut once per product)
        self.sealer = CardSealer(store, spec.data_key, spec.batch_id)
        self.preparers: dict[str, CardPreparer] = {}
        self.icc_sources: list[_ShardIccSource] = []
        self.shard: tuple[int, int] | None = None
        for product in spec.products:
            profile = load_product(product, spec.config_dir)
            keys = PreparerKeys.resolve(store, profile, kek=spec.kek, pan_token=spec.pan_token)
            checks = {name: TranslateCheck(value) for name, value in spec.secret_checks}
            source = None
            if profile.icc_key.source is IccKeySource.POOL:  # issue 7: ICC key pool
                source = _ShardIccSource(dry_policy(profile.icc_key))
                self.icc_sources.append(source)
            self.preparers[product] = CardPreparer(
                profile, store, keys, secret_checks=checks, icc_source=source
            )
        self.begin(spec.shard, spec.chunk_records)

    def begin(self, shard: int, chunk_records: int) -> None:
        """Make ``shard`` current: fresh pool sources tagged with it (no-op if it already is)."""
        if self.shard == (shard, chunk_records):
            return
        self.end_shard()
        for source in self.icc_sources:
            source.current = shard_icc_source(
                self.spec.settings, self.store, self.spec.batch_id, shard,
                on_empty=source.policy, max_claim=chunk_records,
            )  # fmt: skip
        self.shard = (shard, chunk_records)

    def end_shard(self) -> None:
        """Release the current shard's never-handed pool claims and close its pool handles."""
        for source in self.icc_sources:
            current, source.current = source.current, None
            if current is not None:
                try:
                    current.close()
                finally:
                    current.pool.close()
        self.shard = None

    def run(self, ipc: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        """Prepare one chunk: (part rows as Arrow IPC, reject rows)."""
        spec, seal, preparers = self.spec, self.sealer.seal, self.preparers
        columns: dict[str, list[Any]] = {name: [] for name in PART_SCHEMA.names}
        rejects: list[dict[str, Any]] = []
        batch_id = spec.batch_id
        # each column's append bound once per chunk, not looked up per card (issue 7)
        (
            add_batch, add_line, add_product, add_masked, add_token, add_ids, add_encrypted,
            add_card, add_kcvs, add_pk,
        ) = (columns[name].append for name in _PART_COLUMNS)  # fmt: skip
        for record in records_from_ipc(ipc):
            preparer = preparers.get(record.product)
            if preparer is None:
                raise PreparationError(
                    f"product {record.product}", "not among the shard's planned products"
                )
            result = preparer.prepare(record)
            if not isinstance(result, PreparedCard):
                rejects.append(reject_row(result, "prepare"))
                continue
            dgis = result.dgis
            add_batch(batch_id)
            add_line(result.line_no)
            add_product(result.product)
            add_masked(result.masked_pan)
            add_token(result.pan_token)
            add_ids([d.id for d in dgis])
            add_encrypted([d.encrypted for d in dgis])
            add_card(seal(result.line_no, result.product, dgis))
            add_kcvs(_kcvs_json(dict(result.kcvs)))
            add_pk(result.icc_public_key_sha256)
        import pyarrow as pa  # noqa: PLC0415 (already loaded by staging)

        return table_to_ipc(pa.table(columns, schema=PART_SCHEMA)), rejects

    def close(self) -> None:
        """Release never-handed pool claims; close the store if this worker opened it."""
        self.end_shard()
        if self.own_store:
            self.store.close()


# --- worker process entry points -----------------------------------------------------

#: (token, worker) of this worker process: reused while the parent sends the same token.
_cached: tuple[int, ShardWorker] | None = None
#: one party per worker process: makes a broadcast task reach every worker exactly once.
_barrier: Any = None
_BARRIER_WAIT = 120.0


def _error_marker(exc: CardprepError) -> tuple[str, str, str, str]:
    # CardprepError(field, detail) does not survive pickling through the pool
    # (its args are the joined message), so errors travel as a marker.
    return (type(exc).__module__, type(exc).__qualname__, exc.field, exc.detail)


def _init_pool_worker(barrier: Any, parent: int) -> None:
    global _barrier  # noqa: PLW0603 (one state per worker process)
    _barrier = barrier
    exit_with_parent(parent)  # a SIGKILLed `cardprep run` or task leaves no orphan worker


def _worker_for(token: int, spec: WorkerSpec) -> ShardWorker:
    """This process's worker for ``token`` (built on first use, the previous one closed)."""
    global _cached  # noqa: PLW0603 (one state per worker process)
    if _cached is not None and _cached[0] == token:
        worker = _cached[1]
        worker.begin(spec.shard, spec.chunk_records)
        return worker
    if _cached is not None:
        old, _cached = _cached[1], None
        old.close()
    worker = ShardWorker(spec)
    _cached = (token, worker)
    return worker


def _run_chunk(token: int, spec: WorkerSpec, ipc: bytes) -> tuple[str, Any, Any]:
    try:
        rows, rejects = _worker_for(token, spec).run(ipc)
    except CardprepError as exc:
        return (_ERROR, _error_marker(exc), None)
    return ("ok", rows, rejects)


def _end_shard() -> tuple[str, Any, Any]:
    """Broadcast task: release this worker's claims for its shard, then wait for every worker."""
    try:
        if _cached is not None:
            _cached[1].end_shard()
    except CardprepError as exc:
        return (_ERROR, _error_marker(exc), None)
    finally:
        # no worker takes a second broadcast task before every one took its first
        _barrier.wait(_BARRIER_WAIT)
    return ("ok", None, None)


def _warm(config_dir: Path, products: tuple[str, ...]) -> int:
    """Pre-warm task: build this process's per-process tables before the first chunk.

    The SM2 fixed-base table (~0.1 s, built lazily on a process's first SM2
    key or signature) when any of ``products`` has an SM2 ICC key; the product
    profiles are parsed on the way.  Runs while the parent still parses the
    file, so the first chunk of each worker runs at the steady rate.  Errors
    are left to the shard, which loads the same profiles.

    Example:
        >>> _warm(Path("config"), ("demo-pboc-sm2",))  # doctest: +SKIP
        1
    """
    try:
        algorithms = {load_product(p, config_dir).icc_key.algorithm for p in products}
    except CardprepError:
        return 0
    if IccKeyAlgorithm.SM2 not in algorithms:
        return 0
    sm2.warm_up()
    return 1


def _raise_marker(marker: tuple[str, str, str, str]) -> None:
    module, name, field, detail = marker
    cls: Any = getattr(importlib.import_module(module), name, None)
    if isinstance(cls, type) and issubclass(cls, CardprepError):
        try:
            raise cls(field, detail)
        except TypeError:
            pass
    raise PreparationError(field, f"{name} in a worker: {detail}")


# --- the shard ---------------------------------------------------------------------------


def _chunks(
    store: KeyStore, paths: BatchPaths, shard: dict[str, Any], chunk_size: int
) -> Iterator[bytes]:
    """The shard's staged records, as Arrow IPC chunks, in order."""
    start, end, seg_size = int(shard["start"]), int(shard["end"]), int(shard["segment_size"])
    for seg in shard["segments"]:
        table = read_segment(
            store, paths.staged_segment(int(seg)), batch_id=paths.batch_id, segment=int(seg)
        )
        first = int(seg) * seg_size
        lo, hi = max(start, first) - first, min(end, first + table.num_rows) - first
        for offset in range(lo, hi, chunk_size):
            yield table_to_ipc(table.slice(offset, min(chunk_size, hi - offset)))


def _results_inline(worker: ShardWorker, chunks: Iterator[bytes]) -> Generator[_Result, None, None]:
    for ipc in chunks:
        try:
            rows, rejects = worker.run(ipc)
        except CardprepError as exc:
            yield (_ERROR, _error_marker(exc), None)
            return
        yield ("ok", rows, rejects)


class WorkerPool:
    """A process pool (``fork``) reused across the shards prepared through it.

    ``cardprep run`` (:func:`pipeline.steps.batch.run_batch`) prepares every
    shard of a batch in one process: one pool for the whole batch saves the
    start of a pool per shard (fork, store handle, key resolution, SM2
    tables: ~0.3-0.5 s here).  Each worker process keeps its
    :class:`ShardWorker` while the shards share a plan (same :class:`WorkerSpec`
    but for ``shard`` and ``chunk_records``) and switches only the per-shard
    ICC key pool claims.  At each shard's end (:meth:`results`; for overlapped
    shards, at the last one's end) every worker releases its never-handed
    claims (a broadcast task that waits on a barrier, so each worker runs
    exactly one) before the parent settles the shard(s).  Airflow's
    mapped ``prepare`` tasks are separate processes: :func:`prepare_shard`
    then uses a pool of its own for the one shard.

    The processes start on first use; after a failed shard the pool is shut
    down and restarts on the next use.

    Example:
        >>> with WorkerPool(2) as pool:                                          # doctest: +SKIP
        ...     results = [prepare_shard(s, settings, 2, pool=pool) for s in shards]
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise PreparationError("workers", f"must be >= 1, got {workers}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._specs: list[WorkerSpec] = []
        self._last_token: tuple[WorkerSpec, int] | None = None
        self.started = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("fork")
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context,
                initializer=_init_pool_worker,
                initargs=(context.Barrier(self.workers), os.getpid()),
            )  # fmt: skip
            self.started += 1
        return self._executor

    def warm(self, config_dir: Path, products: tuple[str, ...]) -> None:
        """Start the workers now and let each build its tables (:func:`_warm`) in the background.

        ``cardprep run`` calls this before parsing the file, so fork and the
        per-process set-up overlap the parent's serial parse instead of
        delaying the first shard.  One task per worker, not awaited (a worker
        may take two: the second is a no-op); a failure there is the shard's
        to report.  No-op for a one-worker pool (it prepares inline).
        """
        if self.workers < 2:  # one worker prepares in the caller
            return
        pool = self._pool()
        for _ in range(self.workers):
            pool.submit(_warm, config_dir, products)

    def token(self, spec: WorkerSpec) -> int:
        """The same number for specs that differ only in ``shard`` / ``chunk_records``."""
        last = self._last_token
        if last is not None and last[0] is spec:  # the chunks of one shard: one spec
            return last[1]
        plan = replace(spec, shard=0, chunk_records=0)
        for token, known in enumerate(self._specs):
            if known == plan:
                self._last_token = (spec, token)
                return token
        self._specs.append(plan)
        self._last_token = (spec, len(self._specs) - 1)
        return len(self._specs) - 1

    def submit(self, spec: WorkerSpec, ipc: bytes) -> Future[_Result]:
        """Send one chunk of ``spec``'s shard to the workers; its future result."""
        return self._pool().submit(_run_chunk, self.token(spec), spec, ipc)

    def end_shards(self) -> None:
        """Every worker releases its never-handed pool claims (a broadcast, see the class)."""
        pool = self._pool()
        ends = [pool.submit(_end_shard) for _ in range(self.workers)]
        for end in ends:
            status, marker, _ = end.result()
            if status == _ERROR:
                _raise_marker(marker)

    def results(self, spec: WorkerSpec, chunks: Iterator[bytes]) -> Generator[_Result, None, None]:
        """Prepare ``chunks`` in order (at most 2 x workers in flight), then end the shard."""
        pending = deque[Future[_Result]]()
        try:
            for ipc in chunks:
                pending.append(self.submit(spec, ipc))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
            self.end_shards()
        except BaseException:  # a failed shard (or the consumer stopped): no state survives
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker processes (they release their claims at a clean exit)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def chunk_records(chunk_size: int, count: int, workers: int) -> int:
    """Records per pool task: ``min(chunk_size, ceil(count / (4 x workers)))``, at least 1.

    Issue 7 (every core busy): with a fixed ``batch.chunk_size`` a shard of
    300 cards on 2 workers is one 256-record chunk and one of 44, so one
    worker idles most of the shard.  About four chunks per worker keep every
    worker busy to the end and still amortise the per-task IPC; large shards
    keep ``chunk_size``.

    Example:
        >>> chunk_records(256, 300, 2), chunk_records(256, 100_000, 2), chunk_records(256, 3, 2)
        (38, 256, 1)
    """
    per_worker = -(-max(0, count) // (4 * max(1, workers)))
    return max(1, min(chunk_size, per_worker))


def resolve_keys(
    store: KeyStore, products: list[str], config_dir: Path, kek: str, pan_token: str
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Per product role -> ``label@vN``, and ``label@vN`` -> KCV (hex) of every key used."""
    keys: dict[str, dict[str, str]] = {}
    kcvs: dict[str, str] = {}
    for product in products:
        profile = load_product(product, config_dir)
        refs = PreparerKeys.resolve(store, profile, kek=kek, pan_token=pan_token).refs()
        keys[product] = dict(sorted(refs.items()))
        for ref in refs.values():
            if ref not in kcvs:
                kcvs[ref] = store.get(KeyRef.parse(ref)).kcv.hex().upper()
    return keys, dict(sorted(kcvs.items()))


def _completed(paths: BatchPaths, shard: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded result of a complete part for this very shard plan, else None."""
    part, rejects = paths.part(int(shard["index"])), paths.part_rejects(int(shard["index"]))
    if not part.exists() or not rejects.exists():
        return None
    try:
        meta = read_part_metadata(part)
    except VerificationError:
        return None
    plan = ("batch_id", "input_sha256", "staging_id", "index", "start", "end")
    if any(meta.get(k) != shard.get(k) for k in plan):
        return None
    if meta.get("rejects_sha256") != sha256_file(rejects):
        return None
    result = meta.get("result")
    return dict(result, resumed=True) if isinstance(result, dict) else None


def _settle_resumed(settings: Settings, paths: BatchPaths, index: int) -> dict[str, int]:
    """Settle the ICC key pool for a shard whose part an earlier run committed.

    A run killed between the part's commit and :func:`settle_shard` leaves the
    shard's pool entries ``claimed``: settle them now from the part's own
    ``icc_pk_sha256`` column (the written cards' keys become ``used``, any
    other claim of the shard is burned).  Idempotent: a settled shard changes
    nothing (``{"used": 0, "burned": 0}``); without a pool file nothing is read.
    """
    return settle_shard(settings, paths.batch_id, index, _part_hashes(paths.part(index)))


def prepare_shard(
    shard: dict[str, Any],
    settings: Settings,
    workers: int | None = None,
    *,
    store: KeyStore | None = None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Prepare one shard (see the module docstring); return its XCom-safe result dict.

    ``pool``: a :class:`WorkerPool` shared by the shards of a batch run in one
    process (``cardprep run``); without it a shard on several workers starts
    and stops a pool of its own (Airflow's mapped tasks).
    """
    bs, _, paths, index = _shard_setup(shard, settings)
    n_workers = min(
        pool.workers if pool is not None else default_workers(workers, bs),
        max(1, int(shard["count"])),
    )
    chunk = chunk_records(bs.chunk_size, int(shard["count"]), n_workers)
    what = f"shard {index} of batch {paths.batch_id}"
    with exclusive_lock(paths.part_lock(index), what, wait=bs.shard_lock_wait):
        done = _completed(paths, shard)
        if done is not None:
            log.info("%s: complete from an earlier run (%d cards); resumed", what, done["prepared"])
            done["pool"] = _settle_resumed(settings, paths, index)
            return done
        with opened_store(settings, store) as ks:
            return _prepare(_ShardRun(shard, settings, ks, n_workers, chunk), settings, ks, pool)


def _shard_setup(
    shard: dict[str, Any], settings: Settings
) -> tuple[BatchSettings, IssuerConfig, BatchPaths, int]:
    """The batch settings (for the issuer's bureau), issuer, batch paths and index of ``shard``."""
    bs = batch_settings(settings)
    cfg = load_issuer(shard["issuer"], bs.config_dir)
    return bs.for_bureau(cfg.bureau), cfg, batch_paths(shard["batch_dir"]), int(shard["index"])


class _ShardRun:
    """One shard being prepared: its worker spec, open part, counters and result.

    :func:`_prepare` (one shard at a time) and :func:`prepare_streamed_shards`
    (shards overlapped) feed it the workers' chunk results in order
    (:meth:`add`); :meth:`commit` writes the rejects file and commits the part,
    :meth:`abort` discards it.  The shard's ``count`` and ``end`` are read only
    at :meth:`commit` (a streamed shard learns them from its last chunk).
    """

    def __init__(
        self,
        shard: dict[str, Any],
        settings: Settings,
        store: KeyStore,
        workers: int,
        chunk: int,
    ) -> None:
        self.started = time.monotonic()
        bs, cfg, paths, self.index = _shard_setup(shard, settings)
        self.shard, self.paths = shard, paths
        self.n_workers, self.chunk = workers, chunk
        kek, secret_checks = cfg.kek, secret_checks_for(load_layout(cfg.layout, bs.config_dir))
        products = list(shard["products"])
        self.keys, self.kcvs = resolve_keys(store, products, bs.config_dir, kek, bs.pan_token_key)
        self.data_key = store.active(bs.data_key)
        self.kcvs[str(self.data_key)] = store.get(self.data_key).kcv.hex().upper()
        worker_handle: Callable[[], Any] | None = getattr(store, "worker_handle", None)
        self.spec = WorkerSpec(
            settings=settings,
            handle=worker_handle() if worker_handle is not None and self.n_workers > 1 else None,
            config_dir=bs.config_dir,
            kek=kek,
            pan_token=bs.pan_token_key,
            data_key=self.data_key,
            batch_id=paths.batch_id,
            products=tuple(products),
            secret_checks=secret_checks,
            shard=self.index,
            chunk_records=self.chunk,
        )
        begin_shard(settings, paths.batch_id, self.index)  # burn what a crashed run claimed
        self.icc_hashes: list[str] = []
        self.prepared_pp: Counter[str] = Counter()
        self.rejected_pp: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.reject_rows: list[dict[str, Any]] = []
        self.part_path, self.rejects_path = paths.part(self.index), paths.part_rejects(self.index)
        for path in (self.part_path, self.rejects_path):  # temporaries a killed run left
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        self.part = PartWriter(self.part_path)
        self.part.__enter__()
        self.closed = False
        #: chunks sent and not yet added (overlapped shards)
        self.in_flight = 0

    def add(self, status: str, rows: Any, rejects: Any) -> None:
        """One chunk's result (raises the worker's error)."""
        if status == _ERROR:
            _raise_marker(rows)
        table = table_from_ipc(rows)
        self.part.write_rows(table)
        self.icc_hashes.extend(table.column("icc_pk_sha256").to_pylist())
        self.prepared_pp.update(table.column("product").to_pylist())
        for row in rejects:
            self.rejected_pp[row["product"] or "(none)"] += 1
            self.reasons[row["code"]] += 1
        self.reject_rows.extend(rejects)

    def abort(self, exc: BaseException) -> None:
        """Discard the part (nothing of the shard is committed); no-op once closed."""
        if not self.closed:
            self.closed = True
            self.part.__exit__(type(exc), exc, exc.__traceback__)

    def commit(self) -> dict[str, Any]:
        """Write the rejects file, check the counts, commit the part; the result dict."""
        paths, shard, index = self.paths, self.shard, self.index
        try:
            write_reject_table(self.rejects_path, self.reject_rows)
            prepared, rejected = self.part.rows, len(self.reject_rows)
            if prepared + rejected != int(shard["count"]):
                raise PreparationError(
                    f"shard {index}",
                    f"{prepared} prepared + {rejected} rejected != {shard['count']} staged records",
                )
            seconds = round(time.monotonic() - self.started, 3)
            result: dict[str, Any] = {
                "batch_id": paths.batch_id,
                "index": index,
                "start": int(shard["start"]),
                "end": int(shard["end"]),
                "part": str(self.part_path),
                "rejects": str(self.rejects_path),
                "prepared": prepared,
                "rejected": rejected,
                "prepared_per_product": dict(sorted(self.prepared_pp.items())),
                "rejected_per_product": dict(sorted(self.rejected_pp.items())),
                "reasons": dict(sorted(self.reasons.items())),
                "keys": self.keys,
                "kcvs": self.kcvs,
                "data_key": str(self.data_key),
                "workers": self.n_workers,
                "chunk_records": self.chunk,
                "seconds": seconds,
                "cards_per_second": round(prepared / seconds, 1) if seconds > 0 else 0,
                "resumed": False,
            }
            self.part.metadata = {
                "batch_id": paths.batch_id,
                "input_sha256": shard["input_sha256"],
                "staging_id": shard.get("staging_id"),
                "index": index,
                "start": int(shard["start"]),
                "end": int(shard["end"]),
                "rejects_sha256": sha256_file(self.rejects_path),
                "result": result,
            }
        except BaseException as exc:
            self.abort(exc)
            raise
        self.closed = True
        self.part.__exit__(None, None, None)
        return result

    def release(self) -> None:
        """Drop what only the commit needed (overlapped shards wait for their settle)."""
        self.icc_hashes, self.reject_rows = [], []

    def settle(
        self, settings: Settings, result: dict[str, Any], hashes: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """After the commit, with every worker off the shard: settle its pool keys; log.

        ``hashes``: the written cards' ICC key hashes when :meth:`release` dropped them
        (read lazily from the part: a shard that claimed nothing never reads them).
        """
        # the part is committed: its cards' pool keys are used, any other claim of this
        # shard is burned (never handed out again)
        written = self.icc_hashes if hashes is None else hashes
        result["pool"] = settle_shard(settings, self.paths.batch_id, self.index, written)
        log.info(
            "batch %s shard %d: %d prepared, %d rejected %s in %.2f s on %d worker(s); keys %s",
            self.paths.batch_id,
            self.index,
            result["prepared"],
            result["rejected"],
            result["reasons"],
            result["seconds"],
            self.n_workers,
            ", ".join(f"{ref} kcv={kcv}" for ref, kcv in self.kcvs.items()),
        )
        return result


def _prepare(
    run: _ShardRun, settings: Settings, store: KeyStore, shared_pool: WorkerPool | None = None
) -> dict[str, Any]:
    """Prepare ``run``'s staged records; the part and the result dict."""
    chunks = _chunks(store, run.paths, run.shard, run.chunk)
    inline: ShardWorker | None = None
    own_pool: WorkerPool | None = None
    try:
        if run.n_workers == 1:
            inline = ShardWorker(run.spec, store=store)
            results = _results_inline(inline, chunks)
        else:
            pool = shared_pool or WorkerPool(run.n_workers)
            own_pool = None if shared_pool is not None else pool
            results = pool.results(run.spec, chunks)
        # closing(): a failed shard stops its chunks (and an own or shared pool) at once
        with closing(results):
            for status, rows, rejects in results:
                run.add(status, rows, rejects)
    except BaseException as exc:
        run.abort(exc)
        raise
    result = run.commit()
    if inline is not None:
        inline.close()
    if own_pool is not None:
        own_pool.close()
    return run.settle(settings, result)


def prepare_streamed_shards(
    shards: Iterator[tuple[dict[str, Any], Iterator[bytes], int]],
    settings: Settings,
    *,
    store: KeyStore,
    pool: WorkerPool,
) -> list[dict[str, Any]]:
    """Prepare shards whose records are still being staged, overlapped (:mod:`.stream`).

    ``shards`` yields ``(shard, chunks, chunk_records)`` one shard at a time;
    a shard's ``chunks`` yield its records as they are staged and, when
    exhausted, have set its ``end``, ``count`` and ``segments``.  Each shard
    gets the lock, part, rejects file and result of :func:`prepare_shard`
    (no resume check: a streamed batch has no earlier part, the caller makes
    sure).  The next shard's chunks go to the workers while the last ones of
    the shard before are still being prepared, so the workers never wait at a
    shard's end (issue 7: ~50 ms per boundary here, 11 boundaries in a
    12,000-card batch of the default 1,000-card shards).  A shard's part is
    committed when its last result is in; its ICC pool keys are settled once
    every shard is committed and every worker has released its claims (a
    committed part settles again if the run dies before: resume).

    Example:
        >>> results = prepare_streamed_shards(shards, settings, store=ks,   # doctest: +SKIP
        ...                                   pool=pool)
        >>> sum(r["prepared"] for r in results)                             # doctest: +SKIP
        12000
    """
    runs: list[_ShardRun] = []
    locks: dict[int, ExitStack] = {}
    pending: deque[tuple[_ShardRun, Future[_Result]]] = deque()
    results: dict[int, dict[str, Any]] = {}

    def collect() -> None:
        run, future = pending.popleft()
        run.add(*future.result())
        run.in_flight -= 1
        if run.in_flight == 0:  # every chunk sent and prepared
            finish(run)

    def finish(run: _ShardRun) -> None:
        results[run.index] = run.commit()
        run.release()  # memory stays flat however many shards wait for their settle
        locks.pop(run.index).close()

    try:
        for shard, chunks, chunk in shards:
            bs, _, paths, index = _shard_setup(shard, settings)
            what = f"shard {index} of batch {paths.batch_id}"
            locks[index] = lock = ExitStack()
            lock.enter_context(exclusive_lock(paths.part_lock(index), what,
                                              wait=bs.shard_lock_wait))  # fmt: skip
            run = _ShardRun(shard, settings, store, pool.workers, chunk)
            runs.append(run)
            run.in_flight = 1  # held until every chunk is sent
            for ipc in chunks:
                pending.append((run, pool.submit(run.spec, ipc)))
                run.in_flight += 1
                while len(pending) >= 2 * pool.workers:
                    collect()
            run.in_flight -= 1
            if run.in_flight == 0:
                finish(run)
        while pending:
            collect()
        pool.end_shards()
    except BaseException as exc:  # a failed shard: nothing uncommitted survives
        pool.close()
        for run in runs:
            if run.index not in results:
                run.abort(exc)
        for lock in locks.values():
            lock.close()
        raise
    return [run.settle(settings, results[run.index], _part_hashes(run.part_path)) for run in runs]


def _part_hashes(path: Path) -> Iterator[str]:
    """The ``icc_pk_sha256`` column of a committed part, read when first iterated."""
    yield from pq.read_table(path, columns=["icc_pk_sha256"]).column(0).to_pylist()
