"""Retention (DAG ``retention``): purge published batches and their input files after N days.

Issue 6 "retention": inputs and outputs are kept ``retention_days`` (per
issuer, ``config/issuers/<id>.yaml``, default 30) after *publication*, then
purged with evidence in the audit trail (PCI DSS v4.0 req. 3.2.1: keep
cardholder data no longer than the documented retention period, and delete
it securely when it expires).

What a purge of one batch does, in this order (each step is idempotent, so a
crash anywhere is finished by the next run):

0. check the manifest's MAC with the key store (DOMAIN/OUTPUT: the manifest
   is MACed under ``batch.manifest_key``): the publication time it carries
   decides the purge, so an edited or forged manifest (a back-dated
   ``created_at``) is *not* purged but reported (``refused``), and the DAG
   fails so that a person looks;
1. take the batch lock (a forced re-run of the same batch cannot interleave);
2. append one ``retention.purge`` event to the key store's audit trail
   (batch id, publication time, age, retention, file count and bytes, the
   manifest's SHA-256): *fail closed*, nothing is deleted if the audit
   write fails;
3. write ``purged.json`` (the same evidence and the audit event's sequence
   number) atomically beside the manifest;
4. delete the input file, but only if its SHA-256 is the batch's input hash
   (a different file that reuses the name is left alone);
5. delete every other file of the batch except ``manifest.json``,
   ``purged.json``, ``superseded/`` and the lock.

The manifest (counts, hashes, key labels and KCVs: no card data) is kept on
purpose: it is the evidence of what was prepared, and it keeps the batch
looking *published*, so a re-delivered copy of the same file is still refused
as already published instead of producing the same cards twice.

Batches without a manifest (never published, or being prepared) are never
touched; neither are inbound files whose batch was never published (they
are reported as ``stale_inputs`` when older than the retention, for a person
to decide).

Afterwards, :func:`raise_if_purged` (called by ``cardprep verify``) tells a
purged batch from one whose files went missing: the tombstone must name
this batch and this manifest, and the audit trail (which must verify) must
hold the matching ``retention.purge`` event; then
:class:`~pipeline.errors.BatchPurgedError` says when and which event.

Example:
    >>> is_due("2026-01-01T00:00:00Z", 30, datetime(2026, 2, 1, tzinfo=UTC))
    True
    >>> is_due("2026-01-01T00:00:00Z", 32, datetime(2026, 2, 1, tzinfo=UTC))
    False
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.errors import (
    BatchPurgedError,
    ConfigError,
    KeyNotFoundError,
    KeyStateError,
    KeyUsageError,
    VerificationError,
)
from pipeline.io.atomic import write_text_atomic
from pipeline.io.lock import exclusive_lock
from pipeline.io.manifest import verify_manifest_mac
from pipeline.io.paths import BatchPaths, batch_id_for, sha256_file
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.records.issuers import load_issuer
from pipeline.steps.audit import audit_batch
from pipeline.steps.context import BatchSettings, batch_settings, opened_store

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "PURGE_ACTION",
    "TOMBSTONE",
    "PurgeRecord",
    "is_due",
    "parse_utc",
    "purge_batch",
    "purge_expired",
    "purge_record",
    "raise_if_purged",
]

log = logging.getLogger(__name__)

#: Issue 6: "per issuer, default 30 days after publication".
DEFAULT_RETENTION_DAYS = 30
#: The evidence file a purge leaves beside the manifest.
TOMBSTONE = "purged.json"
#: The audit action of a purge.
PURGE_ACTION = "retention.purge"
#: What a purge keeps in the batch directory.
_KEEP = frozenset({"manifest.json", TOMBSTONE, "superseded", ".lock"})
#: Manifest members that may hold the publication time (publish writes ``created_at``
#: last, just before the manifest itself).
_PUBLISHED_KEYS = ("published_at", "created_at")


def parse_utc(stamp: str) -> datetime:
    """An ISO-8601 UTC time (``Z`` or ``+00:00``) as an aware datetime.

    >>> parse_utc("2026-01-02T03:04:05Z").isoformat()
    '2026-01-02T03:04:05+00:00'
    """
    try:
        value = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ConfigError("published_at", f"not an ISO-8601 time: {stamp!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_due(published_at: str, retention_days: int, now: datetime) -> bool:
    """True when ``retention_days`` full days have passed since ``published_at``."""
    if retention_days < 0:
        raise ConfigError("retention_days", f"must be >= 0, got {retention_days}")
    return now - parse_utc(published_at) >= timedelta(days=retention_days)


def _published_at(manifest: dict[str, Any], path: Path) -> str:
    for key in _PUBLISHED_KEYS:
        value = manifest.get(key)
        if isinstance(value, str) and value:
            return value
    raise VerificationError(f"{path} [published_at]", "manifest has no publication time")


def _input_of(manifest: dict[str, Any], inbound: Path | None) -> tuple[Path | None, str | None]:
    """(input file, its SHA-256) as the manifest records them: ``input.name`` in ``inbound``."""
    source = manifest.get("input")
    if not isinstance(source, dict):
        return None, None
    name, digest = source.get("name"), source.get("sha256")
    if not name or not digest or inbound is None or Path(str(name)).name != name:
        return None, str(digest) if digest else None
    return inbound / str(name), str(digest)


def _files_under(base: Path) -> list[Path]:
    return [
        p for p in sorted(base.rglob("*"))
        if p.is_file() and p.relative_to(base).parts[0] not in _KEEP
    ]  # fmt: skip


def _remove_outputs(base: Path) -> None:
    for child in sorted(base.iterdir()):
        if child.name in _KEEP:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink(missing_ok=True)


def _remove_input(source: Path | None, digest: str | None) -> bool:
    if source is None or not digest:
        return False
    if not source.is_file() or sha256_file(source) != digest:
        return False
    source.unlink()
    return True


def purge_batch(
    paths: BatchPaths,
    retention_days: int,
    now: datetime,
    store: KeyStore,
    bs: BatchSettings,
    *,
    inbound: Path | None = None,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Purge one published batch if its retention has passed; None when it is kept.

    ``inbound`` is the issuer's inbound folder, where the manifest's
    ``input.name`` is looked for.  The returned dict (JSON-able, no card
    data) is also the content of ``purged.json`` (with ``audit_seq``, the
    sequence number of its audit event) and the details of the audit event.
    Raises :class:`~pipeline.errors.VerificationError` (nothing touched) when
    the manifest's MAC does not verify with ``store``.
    """
    manifest_path = paths.manifest
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise VerificationError(f"{manifest_path} [manifest]", "not JSON") from None
    if not isinstance(manifest, dict):
        raise VerificationError(f"{manifest_path} [manifest]", "not a JSON object")
    _check_manifest_mac(manifest, store, manifest_path)
    published = _published_at(manifest, manifest_path)
    if not is_due(published, retention_days, now):
        return None
    input_path, input_sha = _input_of(manifest, inbound)
    files = _files_under(paths.base)
    evidence: dict[str, Any] = {
        "issuer": paths.issuer,
        "batch_id": paths.batch_id,
        "published_at": published,
        "purged_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retention_days": retention_days,
        "age_days": (now - parse_utc(published)).days,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "input_sha256": input_sha,
        "input_name": input_path.name if input_path else None,
    }
    if dry_run:
        return {**evidence, "dry_run": True}
    with exclusive_lock(paths.lock, f"retention of batch {paths.batch_id}"):
        tombstone = paths.base / TOMBSTONE
        if not _names_manifest(tombstone, evidence["manifest_sha256"]):
            details = {k: v for k, v in evidence.items() if k != "batch_id"}
            seq = audit_batch(store, bs.actor, PURGE_ACTION, paths.batch_id, **details)
            evidence["audit_seq"] = seq
            write_text_atomic(tombstone, json.dumps(evidence, indent=2, sort_keys=True) + "\n")
        evidence["input_removed"] = _remove_input(input_path, input_sha)
        _remove_outputs(paths.base)
    log.info(
        "retention: batch %s of %s purged (%d files, %d bytes, published %s, %d days)",
        paths.batch_id, paths.issuer, evidence["files"], evidence["bytes"], published,
        retention_days,
    )  # fmt: skip
    return evidence


def _names_manifest(tombstone: Path, manifest_sha256: str) -> bool:
    """True when ``tombstone`` is the purge evidence of the manifest with that digest.

    A tombstone of an earlier publication (the batch was purged, then forced
    through again) does not count: the new publication gets its own purge.
    """
    try:
        doc = json.loads(tombstone.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("manifest_sha256") == manifest_sha256


def _check_manifest_mac(manifest: dict[str, Any], store: KeyStore, path: Path) -> None:
    """The manifest's MAC under the key it names (VerificationError naming the check if not).

    A MAC key that is unknown, destroyed or of the wrong usage is a failed
    check too: without it nothing vouches for the publication time.
    """
    try:
        verify_manifest_mac(manifest, store, str(path))
    except (KeyNotFoundError, KeyStateError, KeyUsageError) as exc:
        raise VerificationError(f"{path} [mac]", f"cannot be checked: {exc}") from None


def _issuer_policy(issuer: str, bs: BatchSettings, default: int) -> tuple[int, Path | None]:
    """(retention days, inbound folder) of ``issuer``; the default days without a config."""
    try:
        cfg = load_issuer(issuer, bs.config_dir)
    except ConfigError:
        log.warning("retention: no config for issuer %s; using %d days", issuer, default)
        return default, None
    return cfg.retention_days, bs.inbound(issuer, cfg.inbound)


def _stale_inputs(
    issuer: str, inbound: Path | None, bs: BatchSettings, days: int, now: datetime
) -> list[str]:
    if inbound is None or not inbound.is_dir():
        return []
    stale = []
    for path in sorted(p for p in inbound.iterdir() if p.is_file()):
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        if now - modified < timedelta(days=days):
            continue
        if not bs.paths(issuer, batch_id_for(sha256_file(path))).manifest.exists():
            stale.append(path.name)
    return stale


def purge_expired(
    settings: Settings,
    *,
    store: KeyStore | None = None,
    now: datetime | None = None,
    issuers: Sequence[str] | None = None,
    dry_run: bool = False,
    default_retention_days: int = DEFAULT_RETENTION_DAYS,
) -> dict[str, Any]:
    """The ``retention`` task: purge every published batch past its issuer's retention.

    Returns ``{"purged": [...evidence], "kept": n, "already_purged": n,
    "unpublished": [batch ids], "refused": [{"batch", "check", "detail"}],
    "stale_inputs": {issuer: [file names]}, "dry_run": bool, "now": iso}``.
    ``refused`` lists batches left alone because their manifest failed its
    MAC (or is unreadable): nothing vouches for their publication time.
    """
    moment = now or datetime.now(UTC)
    bs = batch_settings(settings)
    root = bs.storage_root / "batches"
    chosen = sorted(issuers) if issuers is not None else (
        sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    )  # fmt: skip
    purged: list[dict[str, Any]] = []
    unpublished: list[str] = []
    refused: list[dict[str, str]] = []
    stale: dict[str, list[str]] = {}
    kept = already = 0
    with opened_store(settings, store) as ks:
        for issuer in chosen:
            days, inbound = _issuer_policy(issuer, bs, default_retention_days)
            issuer_dir = root / issuer
            batch_dirs = sorted(p for p in issuer_dir.iterdir() if p.is_dir()) if (
                issuer_dir.is_dir()
            ) else []  # fmt: skip
            for batch_dir in batch_dirs:
                paths = bs.paths(issuer, batch_dir.name)
                if not paths.manifest.exists():
                    unpublished.append(f"{issuer}/{batch_dir.name}")
                    continue
                if (batch_dir / TOMBSTONE).exists() and not _files_under(batch_dir):
                    already += 1
                    continue
                try:
                    done = purge_batch(
                        paths, days, moment, ks, bs, inbound=inbound, dry_run=dry_run
                    )
                except VerificationError as exc:
                    log.error(
                        "retention: batch %s of %s NOT purged: %s", batch_dir.name, issuer, exc
                    )
                    refused.append(
                        {"batch": f"{issuer}/{batch_dir.name}", "check": exc.field,
                         "detail": exc.detail}
                    )  # fmt: skip
                    continue
                if done is None:
                    kept += 1
                else:
                    purged.append(done)
            if found := _stale_inputs(issuer, inbound, bs, days, moment):
                stale[issuer] = found
    return {
        "now": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dry_run": dry_run,
        "purged": purged,
        "kept": kept,
        "already_purged": already,
        "unpublished": unpublished,
        "refused": refused,
        "stale_inputs": stale,
    }


# --- after the purge: telling a purged batch from missing files -----------------------


@dataclass(frozen=True, slots=True)
class PurgeRecord:
    """A purge backed by the audit trail: when, and which event is the evidence."""

    batch_id: str
    purged_at: str
    audit_seq: int
    retention_days: int | None

    def __str__(self) -> str:
        return f"purged at {self.purged_at} by retention (evidence: audit event {self.audit_seq})"


def _tombstone(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VerificationError(f"{path} [tombstone]", "unreadable or not JSON") from None
    if not isinstance(doc, dict):
        raise VerificationError(f"{path} [tombstone]", "not a JSON object")
    return doc


def purge_record(paths: BatchPaths, store: KeyStore) -> PurgeRecord | None:
    """The retention purge of ``paths``' batch, checked against the audit trail; None if none.

    None when there is no ``purged.json``, or when it is the evidence of
    another manifest (an earlier publication, superseded by a forced re-run:
    the current one was not purged).  Otherwise the tombstone must name this
    batch, and the key store's audit trail must verify (chain, MACs, sealed
    head) and hold the ``retention.purge`` event of this batch with this
    manifest's SHA-256 (and, when the tombstone records it, that sequence
    number).  The time reported is the event's.  Raises
    :class:`~pipeline.errors.VerificationError` when a tombstone is there but
    not backed that way (a forged tombstone must not excuse missing files).

    Example:
        >>> str(purge_record(paths, store))                 # doctest: +SKIP
        'purged at 2026-03-01T03:00:02Z by retention (evidence: audit event 412)'
    """
    path = paths.base / TOMBSTONE
    if not path.exists():
        return None
    where = f"{path} [tombstone]"
    doc = _tombstone(path)
    if doc.get("batch_id") != paths.batch_id:
        raise VerificationError(where, f"names batch {doc.get('batch_id')!r}, not this one")
    try:
        manifest_sha = sha256_file(paths.manifest)
    except OSError:
        raise VerificationError(where, "the manifest it refers to is unreadable") from None
    if doc.get("manifest_sha256") != manifest_sha:
        log.info(
            "batch %s: %s is of an earlier manifest; not purged since", paths.batch_id, TOMBSTONE
        )
        return None
    trail = getattr(store, "audit_trail", None)
    if trail is None:
        raise VerificationError(where, f"{type(store).__name__} has no audit trail to check it")
    report = trail.verify()
    if not report.ok:
        raise VerificationError(
            where, f"the audit trail does not verify ({report.problems[0]}): no evidence"
        )
    subject = f"batch {paths.batch_id}"
    wanted = doc.get("audit_seq")
    for event in trail.events():
        if (event.action == PURGE_ACTION and event.subject == subject and event.result == "ok"
                and event.details.get("manifest_sha256") == manifest_sha
                and (wanted is None or event.seq == wanted)):  # fmt: skip
            days = event.details.get("retention_days")
            return PurgeRecord(
                paths.batch_id,
                str(event.details.get("purged_at") or event.ts),
                event.seq,
                days if isinstance(days, int) else None,
            )
    shown = f"event {wanted}" if wanted is not None else "no retention.purge event"
    raise VerificationError(where, f"not backed by the audit trail ({shown} for this manifest)")


def raise_if_purged(paths: BatchPaths, store: KeyStore) -> None:
    """Raise :class:`~pipeline.errors.BatchPurgedError` when retention purged this batch.

    Nothing happens for a batch without a tombstone; a tombstone the audit
    trail does not back is a :class:`~pipeline.errors.VerificationError`
    (see :func:`purge_record`).
    """
    record = purge_record(paths, store)
    if record is not None:
        raise BatchPurgedError(f"batch {paths.batch_id}", str(record))
