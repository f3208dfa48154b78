"""Step 6 (DAG task ``reconcile``): re-count from the files, audit once, clean staging.

DESIGN.md step 6: after publish, the counts are established again *from the
written files* (part row counts, the merged rejects, the bureau file's header
and trailer; every listed file, the reports included, against its size and
SHA-256) and compared with the sealed manifest; then the batch is audited
once in the key store's trail (``batch.published``: counts, keys used with
label/version/KCV, the manifest's digest).  Finally the sealed staging
segments are deleted: the cards are published, so the clear records (sealed
or not) have no reason to stay.

The report (``report.json`` + ``report.html``) is written by publish *before*
the manifest and listed in it; this step never writes a listed file.  It is
idempotent, so a run killed after the manifest can finish it later (``cardprep
run`` on the same file does, see :func:`is_unreconciled`): the audit event is
appended only if the trail holds no ``batch.published`` event for this
manifest's SHA-256 yet.

Example:
    >>> summary = reconcile(published, settings)   # doctest: +SKIP
    >>> summary["counts"]                          # doctest: +SKIP
    {'in': 300, 'prepared': 290, 'rejected': 10}
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import stat
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import ReconciliationError, VerificationError
from pipeline.io.manifest import load_manifest, verify_manifest_mac
from pipeline.io.paths import BatchPaths, sha256_file
from pipeline.io.perso import BureauHeader, count_bureau_records
from pipeline.io.report import key_roles
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.steps.audit import audit_batch, find_batch_event
from pipeline.steps.context import batch_paths, batch_settings, opened_store

__all__ = [
    "PUBLISHED_EVENT",
    "is_unreconciled",
    "key_roles",
    "parse_counts",
    "reconcile",
    "unreconciled_summary",
]

log = logging.getLogger(__name__)

#: Threads hashing the listed files while the bureau file is counted (:func:`_recount`).
HASH_THREADS = 2

#: The audit action of a published batch (one per manifest).
PUBLISHED_EVENT = "batch.published"


def is_unreconciled(paths: BatchPaths) -> bool:
    """A published batch whose reconcile step did not finish (its staging is still there).

    Reconcile deletes ``staging/`` as its last act and publish never runs
    without it, so a manifest beside a staging directory means a run stopped
    between the commit marker and the end of reconcile.

    Example:
        >>> is_unreconciled(batch_paths("/nonexistent/batches/demo/00ab12cd34ef5678"))
        False
    """
    return paths.manifest.exists() and paths.staging.exists()


def parse_counts(counts: Mapping[str, Any]) -> dict[str, int]:
    """The parse step's ``records`` / ``valid`` / ``rejected`` of a published batch.

    From its manifest's counts (``rejected`` is what validation rejected).

    Example:
        >>> parse_counts({"in": 10, "rejected_at_validation": 2})
        {'records': 10, 'valid': 8, 'rejected': 2}
    """
    records, at_validation = int(counts["in"]), int(counts["rejected_at_validation"])
    return {"records": records, "valid": records - at_validation, "rejected": at_validation}


def unreconciled_summary(paths: BatchPaths) -> dict[str, Any]:
    """What the parse step returns for a batch :func:`is_unreconciled` finds: reconcile is left.

    A run killed between the manifest (the commit marker) and the end of
    reconcile leaves the batch published with its staging.  Preparing it
    again would be refused (published) or, with ``force``, would burn a new
    key per card; what is left is the idempotent reconcile.  The keys are
    those the DAG's later tasks read, from the manifest's counts, plus
    ``resume: "reconcile"``.

    Example:
        >>> unreconciled_summary(paths)["resume"]  # doctest: +SKIP
        'reconcile'
    """
    return {
        "batch_id": paths.batch_id,
        "batch_dir": str(paths.base),
        "resume": "reconcile",
        **parse_counts(load_manifest(paths.manifest)["counts"]),
    }


#: :func:`_regular_size` of a path that does not exist, and of one that is not a regular file.
_MISSING, _NOT_REGULAR = -1, -2


def _regular_size(path: Path) -> int:
    """The size of ``path`` if it is a regular file; :data:`_MISSING` or :data:`_NOT_REGULAR`.

    Missing as ``Path.exists`` says it (it was the check before): no such file, a
    directory in the path that is a file, a symbolic link loop.
    """
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return _MISSING
        raise
    return st.st_size if stat.S_ISREG(st.st_mode) else _NOT_REGULAR


def _recount(base: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Counts read back from the files the manifest lists; ReconciliationError on any difference.

    Every listed file must have the manifest's size and SHA-256.  The bureau
    file's records are then counted by
    :func:`~pipeline.io.perso.count_bureau_records`, which checks what the
    count rests on (record type and fields, sequence numbers, the trailer's
    count and its hash over the records) without decoding each record's DGI
    list and base64 card data: the SHA-256 just checked binds the file to the
    MACed manifest, and the full structural check of every record against
    its part row and sealed card is ``cardprep verify``'s
    (:mod:`pipeline.steps.verify`).  Decoding only to count cost ~10 us per
    card here (issue 7).

    The reading is overlapped (issue 7: reconcile runs with the workers gone,
    one core idle): every file's SHA-256 is computed on background threads
    (``hashlib`` releases the GIL on large blocks) while this thread counts
    the bureau records; the checks are then made file by file in the
    manifest's order, as before, so a file fails with the same error.
    """
    entries = [(base / entry["path"], entry) for entry in manifest["files"]]
    # only a regular file of the manifest's size is opened ahead (a directory or a FIFO
    # in its place fails the size check below as before, and nothing waits on it)
    sizes = [_regular_size(path) for path, _ in entries]
    ahead = [i for i, (_, entry) in enumerate(entries) if sizes[i] == entry["size"]]
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="recount") as hashing:
        digests = {i: hashing.submit(sha256_file, entries[i][0]) for i in ahead}
        bureau: dict[int, tuple[BureauHeader, int] | VerificationError] = {}
        for i in ahead:
            path, entry = entries[i]
            if entry["kind"] == "bureau":
                try:
                    bureau[i] = count_bureau_records(path)
                except VerificationError as exc:  # raised below, after the file's SHA-256
                    bureau[i] = exc
        counts = {"part": 0, "rejects": 0, "bureau": 0}
        for i, (path, entry) in enumerate(entries):
            if sizes[i] == _MISSING:
                raise ReconciliationError(f"{path} [exists]", "listed in the manifest but missing")
            if i not in digests or digests[i].result() != entry["sha256"]:
                raise ReconciliationError(f"{path} [sha256]", "differs from the manifest")
            kind = entry["kind"]
            if kind in ("part", "rejects"):
                rows = int(pq.ParquetFile(path).metadata.num_rows)
                counts[kind] += rows
            elif kind == "bureau":
                # count-only: the SHA-256 above already ties the file to the MACed
                # manifest; decoding every record is `cardprep verify`'s full check
                counted = bureau[i]
                if isinstance(counted, VerificationError):
                    raise counted
                header, rows = counted
                if rows != header.cards:
                    raise ReconciliationError(
                        f"{path} [count]", f"{rows} records, header {header.cards}"
                    )
                counts["bureau"] += rows
            else:
                continue
            if "rows" in entry and rows != entry["rows"]:
                raise ReconciliationError(
                    f"{path} [rows]", f"{rows} rows, manifest {entry['rows']}"
                )
    c = manifest["counts"]
    if counts["part"] != c["prepared"] or counts["bureau"] != c["prepared"]:
        raise ReconciliationError(
            "prepared",
            f"parts {counts['part']}, bureau file {counts['bureau']}, manifest {c['prepared']}",
        )
    if counts["rejects"] != c["rejected"] or c["in"] != c["prepared"] + c["rejected"]:
        raise ReconciliationError(
            "rejected", f"rejects file {counts['rejects']}, manifest {c['rejected']} of {c['in']}"
        )
    return counts


def reconcile(
    published: dict[str, Any], settings: Settings, *, store: KeyStore | None = None
) -> dict[str, Any]:
    """Re-count and audit a published batch, clean its staging; return the XCom-safe summary.

    Idempotent: on a batch already reconciled it audits nothing new (the
    existing ``batch.published`` event of this manifest is reused).
    """
    started = time.monotonic()
    bs = batch_settings(settings)
    paths = batch_paths(published["batch_dir"])
    manifest = load_manifest(paths.manifest)
    manifest_sha256 = sha256_file(paths.manifest)
    with opened_store(settings, store) as ks:
        verify_manifest_mac(manifest, ks, str(paths.manifest))
        _recount(paths.base, manifest)
        counts = manifest["counts"]
        keys = {k["ref"]: k["kcv"] for k in manifest["keys"]}
        seq = find_batch_event(ks, PUBLISHED_EVENT, paths.batch_id, manifest_sha256=manifest_sha256)
        if seq is None:
            seq = audit_batch(
                ks, bs.actor, PUBLISHED_EVENT, paths.batch_id,
                issuer=manifest["issuer"], input_name=manifest["input"]["name"],
                input_sha256=manifest["input"]["sha256"], manifest_sha256=manifest_sha256,
                records=counts["in"], prepared=counts["prepared"], rejected=counts["rejected"],
                per_product=counts["per_product"], per_reason=counts["per_reason"], keys=keys,
            )  # fmt: skip
        else:
            log.info("batch %s: %s already audited (event %d)", paths.batch_id,
                     PUBLISHED_EVENT, seq)  # fmt: skip
    if paths.staging.exists():
        shutil.rmtree(paths.staging)
    timings = dict(published.get("timings") or _report_timings(paths.report_json))
    timings["reconcile_seconds"] = round(time.monotonic() - started, 3)
    log.info(
        "batch %s reconciled: %d in = %d prepared + %d rejected; audit event %d; report %s",
        paths.batch_id, counts["in"], counts["prepared"], counts["rejected"], seq,
        paths.report_html,
    )  # fmt: skip
    return {
        "batch_id": paths.batch_id,
        "batch_dir": str(paths.base),
        "manifest": str(paths.manifest),
        "report_json": str(paths.report_json),
        "report_html": str(paths.report_html),
        "bureau_file": str(paths.bureau_file),
        "counts": {k: counts[k] for k in ("in", "prepared", "rejected")},
        "per_product": counts["per_product"],
        "per_reason": counts["per_reason"],
        "timings": timings,
        "keys": keys,
        "audit_seq": seq,
    }


def _report_timings(path: Path) -> dict[str, Any]:
    """The timings the report recorded (a resumed reconcile has no publish result in memory)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    timings = report.get("timings") if isinstance(report, dict) else None
    return dict(timings) if isinstance(timings, dict) else {}
