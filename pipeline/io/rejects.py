"""Reject rows: Parquet and CSV, never a full PAN.

Issue 5 "Validation and rejects": a bad record becomes a reject row with its
reason code, field and input line number.  Rejects of a batch come from two
stages: validation (``staging/rejects-parse.parquet``) and preparation
(``parts/part-NNNNN.rejects.parquet``: self-check failures, undecryptable
secrets).  ``publish`` merges them by line number into ``rejects.parquet``
and ``rejects.csv`` (docs/OUTPUT.md "Rejects").

A reject row carries at most the masked PAN (first 6 / last 4): the writer
re-masks anything that looks like more, so a bug upstream cannot leak a PAN
into a rejects file.

Example:
    >>> from pipeline.records.reasons import RejectReason
    >>> row = reject_row(Reject(7, RejectReason.PAN_LUHN, "pan", "Luhn check digit is wrong",
    ...                         None, "476173******0118"), "validate")
    >>> row["code"], row["reason"], row["masked_pan"]
    ('R001', 'PAN_LUHN', '476173******0118')
"""

from __future__ import annotations

import csv
import heapq
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.audit.masking import mask_pan
from pipeline.io.atomic import atomic_writer
from pipeline.records.validate import Reject

__all__ = [
    "CSV_COLUMNS",
    "REJECT_SCHEMA",
    "RejectWriter",
    "iter_reject_rows",
    "merge_reject_files",
    "reject_row",
    "safe_masked_pan",
    "write_reject_table",
]

REJECT_SCHEMA = pa.schema(
    [
        pa.field("line_no", pa.int64(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("product", pa.string()),
        pa.field("masked_pan", pa.string()),
    ]
)
CSV_COLUMNS: tuple[str, ...] = tuple(REJECT_SCHEMA.names)
_LONG_DIGITS = re.compile(r"\d{7,}")
_MASKED = re.compile(r"\d{6}\*+\d{4}")


def safe_masked_pan(value: str | None) -> str | None:
    """``value`` if it is already a masked PAN, else masked (never more than 6 + 4 digits).

    Example:
        >>> safe_masked_pan("4761739001010119"), safe_masked_pan("476173******0119")
        ('476173******0119', '476173******0119')
    """
    if value is None or value == "":
        return value
    if _MASKED.fullmatch(value):
        return value
    return mask_pan(value)


def _scrub(text: str) -> str:
    """Mask any run of 7+ digits in free text (a detail must never carry a PAN)."""
    return _LONG_DIGITS.sub(
        lambda m: mask_pan(m.group()) if len(m.group()) >= 13 else "*" * len(m.group()), text
    )


def reject_row(reject: Reject, stage: str) -> dict[str, Any]:
    """One row of :data:`REJECT_SCHEMA` for ``reject`` raised at ``stage``."""
    return {
        "line_no": reject.line_no,
        "code": reject.reason.code,
        "reason": reject.reason.name,
        "stage": stage,
        "field": reject.field,
        "detail": _scrub(reject.detail),
        "product": reject.product,
        "masked_pan": safe_masked_pan(reject.masked_pan),
    }


def rows_to_table(rows: Sequence[dict[str, Any]]) -> Any:
    """An Arrow table of reject rows, sorted by line number."""
    ordered = sorted(rows, key=lambda r: int(r["line_no"]))
    return pa.Table.from_pylist(ordered, schema=REJECT_SCHEMA)


def write_reject_table(path: Path, rows: Sequence[dict[str, Any]]) -> int:
    """Write reject rows to Parquet at ``path`` atomically; return the row count."""
    table = rows_to_table(rows)
    with atomic_writer(path) as fh:
        pq.write_table(table, fh)
    return int(table.num_rows)


def iter_reject_rows(path: Path, batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
    """Stream the rows of one reject Parquet file (in file order)."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def _write_csv_row(writer: Any, row: dict[str, Any]) -> None:
    writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])


def merge_reject_files(
    sources: Iterable[Path], parquet_out: Path, csv_out: Path, chunk_rows: int = 4096
) -> dict[str, int]:
    """Merge sorted reject files by line number into one Parquet and one CSV file.

    Each source is sorted by line number (as :func:`write_reject_table`
    writes them), so a heap merge streams them with flat memory.  Returns
    ``{code: count}``.
    """
    streams = [iter_reject_rows(p) for p in sources]
    merged = heapq.merge(*streams, key=lambda r: int(r["line_no"]))
    counts: dict[str, int] = {}
    with atomic_writer(parquet_out) as pfh, atomic_writer(csv_out) as cfh:
        text = io.TextIOWrapper(cfh, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        pwriter = pq.ParquetWriter(pfh, REJECT_SCHEMA)
        try:
            buffer: list[dict[str, Any]] = []
            for row in merged:
                counts[row["code"]] = counts.get(row["code"], 0) + 1
                _write_csv_row(writer, row)
                buffer.append(row)
                if len(buffer) >= chunk_rows:
                    pwriter.write_table(pa.Table.from_pylist(buffer, schema=REJECT_SCHEMA))
                    buffer = []
            if buffer or not counts:
                pwriter.write_table(pa.Table.from_pylist(buffer, schema=REJECT_SCHEMA))
        finally:
            pwriter.close()
        text.flush()
        text.detach()
    return counts


class RejectWriter:
    """Stream reject rows (already in line order) to Parquet; atomic on exit.

    Example:
        >>> import tempfile, pathlib                                     # doctest: +SKIP
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.parquet"  # doctest: +SKIP
        >>> with RejectWriter(out) as w:                           # doctest: +SKIP
        ...     w.add(row)
    """

    def __init__(self, path: Path, chunk_rows: int = 4096) -> None:
        self.path = path
        self.rows = 0
        self._chunk_rows = chunk_rows
        self._buffer: list[dict[str, Any]] = []
        self._ctx = atomic_writer(path)
        self._writer: Any = None
        self._last_line = 0

    def __enter__(self) -> RejectWriter:
        fh = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(fh, REJECT_SCHEMA)
        return self

    def add(self, row: dict[str, Any]) -> None:
        """Append one row of :data:`REJECT_SCHEMA` (line numbers must not decrease)."""
        if int(row["line_no"]) < self._last_line:
            raise ValueError("reject rows must come in line order")
        self._last_line = int(row["line_no"])
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= self._chunk_rows:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=REJECT_SCHEMA))
        self._buffer = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc is None and (self._buffer or self.rows == 0):
                self._flush()
            self._writer.close()
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(exc_type, exc, tb)
