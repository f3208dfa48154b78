"""Staged valid records: Arrow record batches, sealed per segment file.

Between parse and prepare the valid records wait in ``staging/`` (DESIGN.md
step 2).  They hold clear PANs, so each segment file is an Arrow IPC stream
sealed by the key store (:mod:`pipeline.io.sealed`, kind ``staging``): no
plaintext PAN ever touches the disk.  Segments hold at most
``segment_size`` records in input order; shards (``plan_shards``) are ranges
of the valid-record ordinal that may span segments, so the shard size can be
chosen after parsing.

The Arrow schema (:data:`STAGING_SCHEMA`) mirrors
:class:`~pipeline.records.validate.CardRecord`; the same IPC bytes carry chunks
of records to the worker processes of ``prepare_shard`` over the pool's local
pipe.

Example:
    >>> rec = CardRecord(2, "demo-visa-rsa", "4761739001010119", "01", "2812", None, "201",
    ...                  "DOE/JOHN", "", None, {"cvv": b"\\x00" * 8}, {"customer_ref": "A1"})
    >>> back = records_from_ipc(records_to_ipc([rec]))
    >>> back[0].pan == rec.pan and back[0].secrets == rec.secrets and back[0].psn == "01"
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.io.sealed import read_sealed, write_sealed
from pipeline.keys.model import KeyRef
from pipeline.keys.store import KeyStore
from pipeline.records.validate import CardRecord, _card_record

__all__ = [
    "STAGING_KIND",
    "STAGING_SCHEMA",
    "read_segment",
    "records_from_ipc",
    "records_from_table",
    "records_to_ipc",
    "records_to_table",
    "table_from_ipc",
    "table_to_ipc",
    "write_segment",
]

STAGING_KIND = "staging"

STAGING_SCHEMA = pa.schema(
    [
        pa.field("line_no", pa.int64(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("pan", pa.string(), nullable=False),
        pa.field("psn", pa.string()),
        pa.field("expiry", pa.string(), nullable=False),
        pa.field("effective", pa.string()),
        pa.field("service_code", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("discretionary", pa.string(), nullable=False),
        pa.field("kdd", pa.binary()),
        pa.field("secrets", pa.map_(pa.string(), pa.binary()), nullable=False),
        pa.field("extra", pa.map_(pa.string(), pa.string()), nullable=False),
    ]
)


def records_to_table(records: Sequence[CardRecord]) -> Any:
    """An Arrow table (:data:`STAGING_SCHEMA`) of ``records``, in order."""
    columns: dict[str, list[Any]] = {name: [] for name in STAGING_SCHEMA.names}
    for r in records:
        columns["line_no"].append(r.line_no)
        columns["product"].append(r.product)
        columns["pan"].append(r.pan)
        columns["psn"].append(r.psn)
        columns["expiry"].append(r.expiry)
        columns["effective"].append(r.effective)
        columns["service_code"].append(r.service_code)
        columns["name"].append(r.name)
        columns["discretionary"].append(r.discretionary)
        columns["kdd"].append(r.kdd)
        columns["secrets"].append(list(r.secrets.items()))
        columns["extra"].append(list(r.extra.items()))
    return pa.table(columns, schema=STAGING_SCHEMA)


def records_from_table(table: Any) -> Iterator[CardRecord]:
    """Rebuild :class:`CardRecord` values from a staging table (one at a time).

    Each record is built as the validator builds it (``_card_record``: the
    instance dictionary filled in one call, not the frozen ``__init__``'s
    twelve ``object.__setattr__``); the records are equal to
    ``CardRecord(...)`` of the same fields (issue 7: once per prepared card).
    """
    columns = [table.column(name).to_pylist() for name in STAGING_SCHEMA.names]
    for (
        line_no, product, pan, psn, expiry, effective, service_code, name, discretionary, kdd,
        secrets, extra,
    ) in zip(*columns, strict=True):  # fmt: skip
        yield _card_record(
            line_no=line_no,
            product=product,
            pan=pan,
            psn=psn,
            expiry=expiry,
            effective=effective,
            service_code=service_code,
            name=name,
            discretionary=discretionary,
            kdd=kdd,
            secrets=dict(secrets),
            extra=dict(extra),
        )


def table_to_ipc(table: Any) -> bytes:
    """Serialise an Arrow table as an IPC stream (bytes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_from_ipc(data: bytes) -> Any:
    """Inverse of :func:`table_to_ipc`."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def records_to_ipc(records: Sequence[CardRecord]) -> bytes:
    """``records`` as Arrow IPC bytes (what a worker task carries)."""
    return table_to_ipc(records_to_table(records))


def records_from_ipc(data: bytes) -> list[CardRecord]:
    """Inverse of :func:`records_to_ipc`."""
    return list(records_from_table(table_from_ipc(data)))


def write_segment(
    path: Path,
    store: KeyStore,
    key: KeyRef,
    *,
    batch_id: str,
    segment: int,
    first_ordinal: int,
    records: Sequence[CardRecord],
) -> int:
    """Seal ``records`` (valid-record ordinals ``first_ordinal..``) to ``path``; return its size."""
    header = {
        "batch_id": batch_id,
        "segment": segment,
        "first_ordinal": first_ordinal,
        "records": len(records),
    }
    return write_sealed(path, store, key, STAGING_KIND, header, records_to_ipc(records))


def read_segment(store: KeyStore, path: Path, *, batch_id: str, segment: int) -> Any:
    """Open a staged segment; return its Arrow table (checks batch id and segment number)."""
    from pipeline.errors import VerificationError  # noqa: PLC0415 (keep the import list short)

    header, payload = read_sealed(store, path, STAGING_KIND)
    if header.get("batch_id") != batch_id or header.get("segment") != segment:
        raise VerificationError(
            f"{path} [staging binding]",
            f"holds batch {header.get('batch_id')} segment {header.get('segment')}, "
            f"expected {batch_id} segment {segment}",
        )
    table = table_from_ipc(payload)
    if table.num_rows != header.get("records"):
        raise VerificationError(f"{path} [staging count]", "record count differs from header")
    return table
