"""Batch audit events, appended to the key store's hash-chained trail.

Issue 5/6: the batch audits once (published, counts, keys used), not per
card; a forced re-run of a published batch is audited before anything is
touched.  Events never carry PANs or key material: subjects are
``batch <id>``, details are counts, ``label@vN`` and KCVs (file digests go in
details named ``*_sha256``, which the trail allows).

If the backend exposes no trail the step fails closed
(:class:`~pipeline.errors.AuditError`).

Example:
    >>> audit_batch(store, "cardprep-batch", "batch.published", "00ab12cd34ef5678",
    ...             prepared=290, rejected=10)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import AuditError
from pipeline.keys.store import KeyStore

__all__ = ["audit_batch", "find_batch_event"]


def _trail(store: KeyStore) -> Any:
    trail = getattr(store, "audit_trail", None)
    if trail is None:
        raise AuditError(
            "audit trail",
            f"{type(store).__name__} exposes no audit trail: batch events cannot be recorded",
        )
    return trail


def find_batch_event(store: KeyStore, action: str, batch_id: str, **details: Any) -> int | None:
    """Sequence number of the last ``action`` event of batch ``batch_id`` whose details
    include ``details`` (e.g. ``manifest_sha256=...``), or None: what makes a step
    that audits once idempotent across a crash and a re-run.

    Reads the whole trail (as every append does to find its tail); a step calls
    it once per batch.

    Example:
        >>> find_batch_event(store, "batch.published", "00ab12cd34ef5678",
        ...                  manifest_sha256="9f86...")                 # doctest: +SKIP
        42
    """
    subject = f"batch {batch_id}"
    found: int | None = None
    for event in _trail(store).events():
        if (event.action, event.subject, event.result) != (action, subject, "ok"):
            continue
        if all(event.details.get(k) == v for k, v in details.items()):
            found = int(event.seq)
    return found


def audit_batch(
    store: KeyStore, actor: str, action: str, batch_id: str, result: str = "ok", **details: Any
) -> int:
    """Append one batch event to the store's audit trail; return its sequence number."""
    event = _trail(store).append(actor, action, f"batch {batch_id}", result, **details)
    return int(event.seq)
