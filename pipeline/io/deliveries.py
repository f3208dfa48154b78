"""The delivery index: which batch took in each issuer delivery, by its header identity.

A batch id is the SHA-256 of the file's bytes, so the same delivery sent again
with other bytes (CRLF line ends, re-exported, records in another order) is a
new batch: every card would be made twice, with new keys.  An issuer's card
operations and a bureau identify a delivery by its header instead: the issuer
id, the file date (the layout's ``batch_date_field``) and the file sequence
number (header field ``file_seq``).  docs/INPUT.md "Deliveries" is the rule.

One small JSON file per issuer, ``<root>/deliveries/<issuer>.json``
(:attr:`~pipeline.io.paths.BatchPaths.deliveries`), maps each delivery key to
the batch that took it in and its state (``in_progress`` from the parse step,
``published`` once the manifest is written).  It lives outside
``<root>/batches/<issuer>/``, which holds batch directories only (retention,
operators and tests list it).  Every change is a read-modify-write under
``<root>/deliveries/.<issuer>.lock`` and an atomic replace (temp file, fsync,
rename), so a reader sees a whole index, never a torn one.  A lookup reads
one file: no manifest scan (a manifest does not record the header's file
sequence anyway).  Header values are not secret (issuer id, a date, a
sequence number) and are stored as read.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pipeline.io.paths import BatchPaths
    >>> paths = BatchPaths(Path(tempfile.mkdtemp()), "demo", "00ab12cd34ef5678")
    >>> d = Delivery("DEMO", "20250115", "000001")
    >>> d.key
    'DEMO/20250115/1'
    >>> record_delivery(paths, d, state=IN_PROGRESS, input_name="x.dat")
    >>> find_delivery(paths, d).batch_id
    '00ab12cd34ef5678'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import PublishError
from pipeline.io.atomic import write_text_atomic
from pipeline.io.lock import exclusive_lock
from pipeline.io.paths import BatchPaths
from pipeline.records.parse import FILE_SEQ_FIELD, ISSUER_ID_FIELD

__all__ = [
    "INDEX_FORMAT",
    "IN_PROGRESS",
    "PUBLISHED",
    "Delivery",
    "DeliveryEntry",
    "delivery_of",
    "find_delivery",
    "record_delivery",
]

INDEX_FORMAT = "cardprep-deliveries/1"
IN_PROGRESS = "in_progress"
PUBLISHED = "published"
#: Seconds to wait for another run's index update (it holds the lock for milliseconds).
INDEX_LOCK_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery's identity as its header states it (values as read, not secret)."""

    issuer_id: str
    file_date: str
    file_seq: str

    @property
    def key(self) -> str:
        """Index key: issuer id/file date/sequence, leading zeros dropped (CSV may drop them)."""
        seq = (self.file_seq.lstrip("0") or "0") if self.file_seq.isdigit() else self.file_seq
        return f"{self.issuer_id}/{self.file_date}/{seq}"

    def describe(self) -> str:
        """The header values, for messages: ``issuer_id 'DEMO', file_date 20250115, ...``."""
        return (
            f"header issuer_id {self.issuer_id!r}, file_date {self.file_date}, "
            f"file_seq {self.file_seq}"
        )

    def to_json(self) -> dict[str, str]:
        return {"issuer_id": self.issuer_id, "file_date": self.file_date,
                "file_seq": self.file_seq}  # fmt: skip

    @classmethod
    def from_json(cls, obj: Any) -> Delivery | None:
        """The delivery of a parse result's ``delivery`` member (None when absent)."""
        if not isinstance(obj, Mapping):
            return None
        return cls(str(obj.get("issuer_id", "")), str(obj.get("file_date", "")),
                   str(obj.get("file_seq", "")))  # fmt: skip


def delivery_of(header: Mapping[str, str], batch_date_field: str | None) -> Delivery | None:
    """The delivery a file's header names, or None when the layout cannot say.

    Needs the layout's batch-date field and a header field ``file_seq``, both
    non-blank; without either, files cannot be told apart by header and the
    duplicate-delivery check does not apply (docs/INPUT.md "Deliveries").

    Example:
        >>> delivery_of({"issuer_id": "DEMO", "file_date": "20250115", "file_seq": "7"},
        ...             "file_date")
        Delivery(issuer_id='DEMO', file_date='20250115', file_seq='7')
        >>> delivery_of({"issuer_id": "DEMO", "file_date": "20250115"}, "file_date") is None
        True
    """
    if batch_date_field is None:
        return None
    file_date = header.get(batch_date_field, "")
    file_seq = header.get(FILE_SEQ_FIELD, "")
    if not file_date or not file_seq:
        return None
    return Delivery(header.get(ISSUER_ID_FIELD, ""), file_date, file_seq)


@dataclass(frozen=True, slots=True)
class DeliveryEntry:
    """What the index says about one delivery."""

    delivery: Delivery
    batch_id: str
    state: str
    input_name: str
    recorded_at: str
    earlier: tuple[str, ...] = ()  # batch ids this delivery had before a forced re-send


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(paths: BatchPaths) -> dict[str, Any]:
    """The index's ``deliveries`` member; {} when there is no index yet.

    An index that cannot be read is an error, not an empty index: reading it
    as empty would let a re-sent delivery through.
    """
    try:
        text = paths.deliveries.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PublishError(f"{paths.deliveries} [deliveries]",
                           f"unreadable ({exc.strerror})") from None  # fmt: skip
    except UnicodeDecodeError:
        text = ""  # not UTF-8, so not an index: refused below (was a bare traceback)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != INDEX_FORMAT
        or not isinstance(doc.get("deliveries"), dict)
    ):
        raise PublishError(
            f"{paths.deliveries} [deliveries]",
            f"not a {INDEX_FORMAT} index; repair or move it aside (it guards against "
            "preparing a re-sent delivery twice)",
        )
    deliveries: dict[str, Any] = doc["deliveries"]
    return deliveries


def _entry(raw: Any) -> DeliveryEntry | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("batch_id"), str):
        return None
    delivery = Delivery.from_json(raw)
    assert delivery is not None
    earlier = raw.get("earlier", [])
    return DeliveryEntry(
        delivery=delivery,
        batch_id=raw["batch_id"],
        state=str(raw.get("state", IN_PROGRESS)),
        input_name=str(raw.get("input_name", "")),
        recorded_at=str(raw.get("recorded_at", "")),
        earlier=tuple(str(b) for b in earlier) if isinstance(earlier, list) else (),
    )


def find_delivery(paths: BatchPaths, delivery: Delivery) -> DeliveryEntry | None:
    """The index entry of ``delivery`` in ``paths.issuer``'s index, or None.

    Reads without the lock: the index is replaced atomically, so this sees
    one whole version (for a decision, hold ``paths.deliveries_lock``).  An
    entry present but damaged (not an object with a batch id) is an error,
    like an unreadable index: read as absent, it let the delivery through.
    """
    deliveries = _load(paths)
    if delivery.key not in deliveries:
        return None
    entry = _entry(deliveries[delivery.key])
    if entry is None:
        raise PublishError(
            f"{paths.deliveries} [deliveries]",
            f"entry {delivery.key!r} is not a delivery record; repair or remove it (it "
            "guards against preparing a re-sent delivery twice)",
        )
    return entry


def record_delivery(
    paths: BatchPaths,
    delivery: Delivery,
    *,
    state: str,
    input_name: str,
    earlier: tuple[str, ...] = (),
) -> None:
    """Record that batch ``paths.batch_id`` holds ``delivery`` in ``state`` (atomic rewrite).

    Takes ``paths.deliveries_lock`` (re-entrant: callers deciding on the
    entry hold it already).  ``earlier`` lists batch ids the delivery had
    before a forced re-send; it is kept when the same batch is recorded again.
    """
    if state not in (IN_PROGRESS, PUBLISHED):
        raise ValueError(f"unknown delivery state {state!r}")
    with exclusive_lock(paths.deliveries_lock, f"delivery index of issuer {paths.issuer}",
                        wait=INDEX_LOCK_WAIT):  # fmt: skip
        deliveries = _load(paths)
        old = _entry(deliveries.get(delivery.key))
        kept = old.earlier if old is not None and old.batch_id == paths.batch_id else ()
        deliveries[delivery.key] = {
            **delivery.to_json(),
            "batch_id": paths.batch_id,
            "state": state,
            "input_name": input_name,
            "recorded_at": _utc_now(),
            "earlier": sorted(set(kept) | set(earlier)),
        }
        doc = {"format": INDEX_FORMAT, "issuer": paths.issuer,
               "deliveries": dict(sorted(deliveries.items()))}  # fmt: skip
        write_text_atomic(paths.deliveries, json.dumps(doc, indent=1, sort_keys=True) + "\n")
