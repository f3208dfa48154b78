"""Step 1-2 (DAG task ``verify_and_parse``): check the file, validate records, stage the valid ones.

DESIGN.md "The batch, step by step" 1-2 and issue 5 "Validation and rejects":

1. :func:`pipeline.records.parse.verify_file` checks header, trailer count and
   hash total *before any cryptography*; the batch id is the first 16 hex of
   the file's SHA-256 (:func:`pipeline.io.paths.batch_id_for`).
2. A published batch is refused (:class:`~pipeline.errors.PublishError`)
   unless ``force``; a forced re-run is audited and the old manifest is moved
   to ``superseded/`` before anything else changes, so a crash during the
   re-run never leaves an old manifest beside new parts.
   A file whose header names a delivery (issuer id, file date, file
   sequence) already taken in as *another* batch is refused too, unless
   ``force`` (audited): a re-sent delivery with other bytes (CRLF line ends,
   re-exported) has another batch id (:func:`check_delivery`,
   docs/INPUT.md "Deliveries").  Both refusals come before anything is
   staged, and a refused run leaves no batch directory behind.
3. Each record is validated (:class:`~pipeline.records.validate.Validator`);
   valid records are staged in sealed Arrow segments (no clear PAN on disk),
   rejects stream to ``staging/rejects-parse.parquet``.
4. Records in = valid + rejected, and = the trailer's count, or the step
   fails (:class:`~pipeline.errors.ReconciliationError`).
5. The result dict is written last to ``staging/parsed.json``: a re-run finds
   it and resumes instead of parsing again.

The returned dict (XCom-safe: paths, counts, ids; never a PAN) is what
``plan_shards`` and ``publish`` take.

Example:
    >>> parsed = verify_and_parse("demo", "var/demo/inbound/demo/x.dat", settings)  # doctest: +SKIP
    >>> parsed["records"] == parsed["valid"] + parsed["rejected"]                   # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Generator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InputFileCheckError, PublishError, ReconciliationError
from pipeline.io.atomic import write_text_atomic
from pipeline.io.deliveries import (
    IN_PROGRESS,
    INDEX_LOCK_WAIT,
    PUBLISHED,
    Delivery,
    delivery_of,
    find_delivery,
    record_delivery,
)
from pipeline.io.lock import exclusive_lock
from pipeline.io.paths import BatchPaths, batch_id_for
from pipeline.io.rejects import RejectWriter, reject_row
from pipeline.io.staging import write_segment
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.profiles.loader import product_path
from pipeline.records.issuers import IssuerConfig, load_issuer
from pipeline.records.layout import Layout, load_layout
from pipeline.records.parse import (
    ISSUER_ID_FIELD,
    Check,
    FileSummary,
    iter_records,
    verify_file,
)
from pipeline.records.validate import CardRecord, Validator
from pipeline.steps.audit import audit_batch
from pipeline.steps.context import BatchSettings, batch_settings, opened_store
from pipeline.steps.reconcile import is_unreconciled, unreconciled_summary

__all__ = [
    "PARSED_FORMAT",
    "StagedProgress",
    "available_products",
    "check_delivery",
    "check_header_issuer",
    "refuse_or_supersede",
    "staged_parse",
    "verify_and_parse",
]

log = logging.getLogger(__name__)

PARSED_FORMAT = "cardprep-parsed/1"
NO_PRODUCT = "(none)"


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refuse_or_supersede(
    paths: BatchPaths, *, force: bool, store: KeyStore | None, bs: BatchSettings, reason: str
) -> str | None:
    """Refuse a published batch, or (``force``) audit and move its manifest aside.

    Returns the superseded manifest's new path, or None when the batch was not
    published.  Must be called with the batch lock held.
    """
    if not paths.manifest.exists():
        return None
    if not force:
        raise PublishError(
            f"batch {paths.batch_id}",
            f"already published at {paths.base}; use force to prepare it again",
        )
    if store is None:
        raise PublishError(f"batch {paths.batch_id}", "a forced re-run needs the key store (audit)")
    target = paths.superseded / f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    audit_batch(
        store, bs.actor, "batch.force_rerun", paths.batch_id,
        superseded=str(target), reason=reason,
    )  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    # The manifest goes first: from here on the batch is not published, so a
    # crash during the move leaves an unpublished batch, never a manifest
    # beside outputs it does not describe.
    paths.manifest.replace(target / paths.manifest.name)
    for old in (
        paths.parts,
        paths.bureau_file.parent,
        paths.rejects_parquet,
        paths.rejects_csv,
        paths.report_json,
        paths.report_html,
    ):
        if old.exists():
            old.replace(target / old.name)
    log.warning("batch %s: forced re-run; previous outputs moved to %s", paths.batch_id, target)
    return str(target)


def _resume(paths: BatchPaths, sha256: str) -> dict[str, Any] | None:
    try:
        state = json.loads(paths.parsed_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("format") != PARSED_FORMAT:
        return None
    if state.get("input_sha256") != sha256:
        return None
    segments = int(state.get("segments", 0))
    if not all(paths.staged_segment(i).exists() for i in range(segments)):
        return None
    if not Path(state.get("parse_rejects", "")).exists():
        return None
    return state


def available_products(products: frozenset[str], config_dir: Path) -> list[str]:
    """The issuer's products that have a profile in ``config_dir``, sorted (a batch's products)."""
    return sorted(p for p in products if product_path(p, config_dir).exists())


def check_header_issuer(cfg: IssuerConfig, summary: FileSummary, source: Path) -> None:
    """Refuse a file whose header names another issuer than the one it is run for.

    The issuer config's ``header_issuer_id`` is what that issuer's files say
    in the header field ``issuer_id`` (docs/INPUT.md); a file delivered to
    the wrong inbound folder, or run with the wrong ``--issuer``, would
    otherwise be prepared with this issuer's KEK, BIN table and products.
    No ``header_issuer_id`` configured: not checked.

    Example:
        >>> check_header_issuer(load_issuer("demo"), summary, Path("x.dat"))  # doctest: +SKIP
    """
    expected = cfg.header_issuer_id
    if expected is None:
        return
    found = summary.header.get(ISSUER_ID_FIELD, "")
    if found != expected:
        raise InputFileCheckError(
            str(source),
            Check.ISSUER.value,
            f"header issuer_id {found!r} is not issuer {cfg.id}'s {expected!r}",
        )


def _earlier_batch(paths: BatchPaths, delivery: Delivery) -> tuple[str, str] | None:
    """(batch id, "published" | "in progress") of another batch holding ``delivery``, or None.

    Published: that batch's manifest exists (it stays after a retention
    purge), or the index says so (its directory was removed by hand: the
    bureau has its cards all the same).  In progress: its directory exists.
    Neither: the run that claimed the delivery was refused or abandoned and
    left nothing, so the claim is stale.  A forced re-send's claim replaced
    the entry of the batch it was forced past (kept in ``earlier``): a stale
    forced claim hands the delivery back to those batches, published or in
    progress, instead of freeing it (a fourth copy was prepared unforced).
    """
    entry = find_delivery(paths, delivery)
    if entry is None or entry.batch_id == paths.batch_id:
        return None
    other = replace(paths, batch_id=entry.batch_id)
    if other.manifest.exists() or entry.state == PUBLISHED:
        return entry.batch_id, "published"
    if other.base.is_dir():
        return entry.batch_id, "in progress"
    log.warning("%s: batch %s claimed it but left nothing (refused or abandoned run); "
                "the claim is stale", delivery.describe(), entry.batch_id)  # fmt: skip
    held = [replace(paths, batch_id=b) for b in entry.earlier if b != paths.batch_id]
    for earlier in held:
        if earlier.manifest.exists():
            return earlier.batch_id, "published"
    for earlier in held:
        if earlier.base.is_dir():
            return earlier.batch_id, "in progress"
    return None


def check_delivery(
    cfg: IssuerConfig,
    summary: FileSummary,
    source: Path,
    paths: BatchPaths,
    *,
    force: bool,
    store: KeyStore | None,
    bs: BatchSettings,
    claim: bool,
) -> Delivery | None:
    """Refuse a re-sent delivery unless ``force``; with ``claim``, record this batch as its holder.

    A delivery is what the header names: issuer id, file date (the layout's
    ``batch_date_field``) and file sequence (``file_seq``), per issuer; an
    issuer's card operations and the bureau count deliveries that way, while
    the batch id is the SHA-256 of the bytes, so the same delivery re-sent
    with CRLF line ends or re-exported would be prepared again with new keys
    (docs/INPUT.md "Deliveries").  When another batch holds the delivery
    (published, or in progress), :class:`~pipeline.errors.InputFileCheckError`
    ``[duplicate_delivery]`` names that batch and the header values (not
    secret).  ``force`` lets the file through, audited
    (``batch.duplicate_delivery_forced``) before anything is staged.

    ``claim`` (the staging run, called with the batch lock held) decides and
    records under the issuer's index lock, so two runs of one delivery with
    other bytes cannot both pass; without it (dry run) the check only reads.
    Returns the delivery, or None when the layout cannot name one (no
    ``file_seq`` or batch-date header field): then nothing is checked.

    Example:
        >>> check_delivery(cfg, summary, Path("x.dat"), paths, force=False, store=ks,
        ...                bs=bs, claim=True)                           # doctest: +SKIP
        Delivery(issuer_id='DEMO', file_date='20250115', file_seq='000001')
    """
    delivery = delivery_of(summary.header, summary.batch_date_field)
    if delivery is None:
        return None
    what = f"delivery index of issuer {cfg.id}"
    guard = (
        exclusive_lock(paths.deliveries_lock, what, wait=INDEX_LOCK_WAIT)
        if claim
        else nullcontext()
    )
    with guard:
        earlier = _earlier_batch(paths, delivery)
        if earlier is not None:
            batch, state = earlier
            if not force:
                advice = (
                    "Finish that batch first: run its own file again (it resumes). "
                    if state == "in progress"
                    else ""
                )
                raise InputFileCheckError(
                    str(source),
                    Check.DUPLICATE_DELIVERY.value,
                    f"{delivery.describe()} is issuer {cfg.id}'s delivery already taken in as "
                    f"batch {batch} ({state}); this file has other bytes (batch "
                    f"{paths.batch_id}) and would make every card again. {advice}"
                    "A new delivery needs the issuer's next file_seq; to prepare this file "
                    "anyway, re-run with force (audited)",
                )
            log.warning("batch %s: %s was taken in as batch %s (%s); accepted again (force)",
                        paths.batch_id, delivery.describe(), batch, state)  # fmt: skip
            if claim:
                if store is None:
                    raise PublishError(f"batch {paths.batch_id}",
                                       "a forced re-send needs the key store (audit)")  # fmt: skip
                audit_batch(
                    store, bs.actor, "batch.duplicate_delivery_forced", paths.batch_id,
                    earlier_batch=batch, earlier_state=state, input=source.name,
                    **delivery.to_json(),
                )  # fmt: skip
        if claim:
            record_delivery(paths, delivery, state=IN_PROGRESS, input_name=source.name,
                            earlier=(earlier[0],) if earlier else ())  # fmt: skip
    return delivery


@dataclass(frozen=True, slots=True)
class StagedProgress:
    """What :func:`staged_parse` yields after each sealed segment it writes.

    ``staged``: valid records staged so far (segment ``k`` holds the valid
    records ``[k x segment_size, (k + 1) x segment_size)``); ``records``: the
    records the file's trailer announces (verified before the first yield),
    an upper bound of the valid records to come; ``input_sha256``: the file's
    SHA-256 as verified (the batch id and directory come from it);
    ``staging_id``: this parse's identity (the result's ``staging_id``).
    """

    staged: int
    records: int
    input_sha256: str
    staging_id: str


def verify_and_parse(
    issuer: str,
    path: str | Path,
    settings: Settings,
    batch_date: date | None = None,
    *,
    force: bool = False,
    stage: bool = True,
    store: KeyStore | None = None,
    verified: FileSummary | None = None,
) -> dict[str, Any]:
    """Verify, validate and stage one issuer file (see the module docstring).

    ``stage=False`` (dry run) validates and counts without writing anything.
    ``verified``: this file's :func:`~pipeline.records.parse.verify_file`
    result when the caller has just run it (``cardprep run`` does, while the
    key store opens); the file is then not verified a second time.
    """
    steps = staged_parse(
        issuer, path, settings, batch_date, force=force, stage=stage, store=store,
        verified=verified,
    )  # fmt: skip
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return dict(done.value)


def staged_parse(
    issuer: str,
    path: str | Path,
    settings: Settings,
    batch_date: date | None = None,
    *,
    force: bool = False,
    stage: bool = True,
    store: KeyStore | None = None,
    verified: FileSummary | None = None,
) -> Generator[StagedProgress, None, dict[str, Any]]:
    """:func:`verify_and_parse` one staged segment at a time.

    Yields a :class:`StagedProgress` after each sealed segment is written
    (segment ``k`` holds the valid records ``[k x segment_size, (k + 1) x
    segment_size)``, so once ``staged`` passes a segment's end it can be
    read), and returns the result dict.  The file is
    verified (header, trailer, hash total) and the delivery checked before the
    first yield; a resumed or unreconciled batch returns without one.  The
    batch lock and the store stay held until the generator finishes or is
    closed.  ``cardprep run`` prepares the first segments while the rest are
    parsed (:mod:`pipeline.steps.stream`).

    Example:
        >>> steps = staged_parse("demo", "inbound/demo/x.dat", settings)  # doctest: +SKIP
        >>> next(steps)                                                    # doctest: +SKIP
        StagedProgress(staged=1000, records=12000, input_sha256='5f0c...', staging_id='9a1e...')
    """
    started = time.monotonic()
    bs = batch_settings(settings)
    cfg = load_issuer(issuer, bs.config_dir)
    bs = bs.for_bureau(cfg.bureau)
    layout = load_layout(cfg.layout, bs.config_dir)
    source = Path(path)
    summary = verified if verified is not None else verify_file(source, layout)
    check_header_issuer(cfg, summary, source)
    batch_id = batch_id_for(summary.sha256)
    paths = bs.paths(cfg.id, batch_id)
    day = batch_date or summary.batch_date or date.today()
    log.info(
        "batch %s: %s verified (%d records, layout %s, batch date %s)",
        batch_id, source.name, summary.record_count, layout.name, day,
    )  # fmt: skip
    if not stage:
        delivery = check_delivery(cfg, summary, source, paths, force=force, store=None, bs=bs,
                                  claim=False)  # fmt: skip
        return (yield from _parse(cfg, source, summary, layout, day, bs, paths, None, started,
                                  delivery))  # fmt: skip
    # discard_unused: a run refused here leaves no batch directory holding only .lock
    with exclusive_lock(paths.lock, f"batch {batch_id}", wait=bs.lock_wait,
                        discard_unused=True), \
            opened_store(settings, store) as ks:  # fmt: skip
        if not force and is_unreconciled(paths):
            log.warning("batch %s is published but its reconcile did not finish: only "
                        "reconcile is left, nothing is prepared again", batch_id)  # fmt: skip
            return unreconciled_summary(paths)
        refuse_or_supersede(paths, force=force, store=ks, bs=bs, reason="verify_and_parse")
        delivery = check_delivery(cfg, summary, source, paths, force=force, store=ks, bs=bs,
                                  claim=True)  # fmt: skip
        if not force:
            resumed = _resume(paths, summary.sha256)
            if resumed is not None:
                log.info("batch %s: staging complete from an earlier run; resumed", batch_id)
                return resumed
        return (yield from _parse(cfg, source, summary, layout, day, bs, paths, ks, started,
                                  delivery))  # fmt: skip


def _parse(  # noqa: PLR0917 (internal)
    cfg: IssuerConfig,
    source: Path,
    summary: FileSummary,
    layout: Layout,
    day: date,
    bs: BatchSettings,
    paths: BatchPaths,
    store: KeyStore | None,
    started: float,
    delivery: Delivery | None,
) -> Generator[StagedProgress, None, dict[str, Any]]:
    """Validate and stage (see :func:`staged_parse`: a yield per staged segment)."""
    products = available_products(cfg.products, bs.config_dir)
    validator = Validator(cfg, layout, day, products=products)
    data_key = store.active(bs.data_key) if store is not None else None
    valid_per_product: Counter[str] = Counter()
    rejected_per_product: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    buffer: list[CardRecord] = []
    segments = 0
    valid = records = 0
    # This parse's identity: every shard planned from it and every part prepared
    # from its segments carry it, so a part is resumed only by the parse that
    # staged its records (a re-parse, e.g. with another batch date, may stage others)
    staging_id = secrets.token_hex(8) if store is not None else None  # a dry run stages nothing

    def progress(staged: int) -> StagedProgress:
        return StagedProgress(staged, summary.record_count, summary.sha256, staging_id or "")

    def flush() -> None:
        nonlocal segments, buffer
        if buffer and store is not None and data_key is not None:
            write_segment(
                paths.staged_segment(segments), store, data_key,
                batch_id=paths.batch_id, segment=segments,
                first_ordinal=segments * bs.segment_size, records=buffer,
            )  # fmt: skip
            segments += 1
        buffer = []

    writer = RejectWriter(paths.parse_rejects) if store is not None else None
    if writer is not None:
        paths.staging.mkdir(parents=True, exist_ok=True)
        for old in paths.staging.glob("segment-*.sealed"):
            old.unlink()
        writer.__enter__()
    try:
        for raw in iter_records(source, layout):
            records += 1
            result = validator.check(raw)
            if isinstance(result, CardRecord):
                valid += 1
                valid_per_product[result.product] += 1
                buffer.append(result)
                if len(buffer) >= bs.segment_size:
                    flush()
                    if store is not None:
                        yield progress(valid)
                continue
            rejected_per_product[result.product or NO_PRODUCT] += 1
            reasons[result.reason.code] += 1
            if writer is not None:
                writer.add(reject_row(result, "validate"))
        if buffer:
            flush()
            if store is not None:
                yield progress(valid)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    rejected = records - valid
    if records != summary.record_count:
        raise ReconciliationError(
            f"{source} [count]",
            f"trailer says {summary.record_count} records, {records} were read",
        )
    parsed: dict[str, Any] = {
        "format": PARSED_FORMAT,
        "batch_id": paths.batch_id,
        "issuer": cfg.id,
        "bureau": cfg.bureau,
        "input": str(source),
        "input_name": source.name,
        "input_sha256": summary.sha256,
        "input_size": summary.size,
        # that the trailer's hash total matched, not its value: a pan_sum of a
        # one-card file is the PAN's last digits (PAN at most first 6 / last 4)
        "input_hash_check": f"{layout.hash_total.method.value} matched the trailer",
        "layout": layout.name,
        "batch_date": day.isoformat(),
        # the header's delivery identity (not secret); publish marks it published
        "delivery": delivery.to_json() if delivery is not None else None,
        "batch_dir": str(paths.base),
        "records": records,
        "valid": valid,
        "rejected": rejected,
        "valid_per_product": dict(sorted(valid_per_product.items())),
        "rejected_per_product": dict(sorted(rejected_per_product.items())),
        "reasons": dict(sorted(reasons.items())),
        "products": products,
        "segment_size": bs.segment_size,
        "segments": segments,
        "staging_id": staging_id,
        "parse_rejects": str(paths.parse_rejects),
        "staged": store is not None,
        "seconds": round(time.monotonic() - started, 3),
        "parsed_at": _utc_stamp(),
    }
    if store is not None:
        write_text_atomic(paths.parsed_state, json.dumps(parsed, indent=1, sort_keys=True) + "\n")
    log.info(
        "batch %s: %d records, %d valid, %d rejected %s",
        paths.batch_id, records, valid, rejected, dict(sorted(reasons.items())),
    )  # fmt: skip
    return parsed
