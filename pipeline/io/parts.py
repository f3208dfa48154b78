"""Parquet parts: one file per shard, one row per prepared card (docs/OUTPUT.md "Parts").

Issue 5 "Output": batch id, input line, product, masked PAN, a keyed token of
the PAN, the DGIs (ids, encryption flags and the sealed values) and the KCVs.
``card_data`` is the card's DGI list sealed by the key store
(:func:`pipeline.io.perso.seal_card`), so no cardholder data is in clear in
the file.  The file's key-value metadata (``cardprep.*``) records the shard's
plan (index, ordinal range), its counts and the SHA-256 of its rejects
sidecar: the part is the shard's commit marker, written atomically *after*
the sidecar, and a re-run checks that metadata to resume instead of redoing.

Example:
    >>> [f.name for f in PART_SCHEMA][:5]
    ['batch_id', 'line_no', 'product', 'masked_pan', 'pan_token']
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import VerificationError
from pipeline.io.atomic import atomic_writer

__all__ = [
    "META_PREFIX",
    "PART_FORMAT",
    "PART_SCHEMA",
    "PART_WRITE_OPTIONS",
    "PartWriter",
    "iter_part_batches",
    "iter_part_record_batches",
    "read_part_metadata",
]

PART_FORMAT = "cardprep-part/1"
META_PREFIX = "cardprep."

PART_SCHEMA = pa.schema(
    [
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("line_no", pa.int64(), nullable=False),
        pa.field("product", pa.string(), nullable=False),
        pa.field("masked_pan", pa.string(), nullable=False),
        pa.field("pan_token", pa.string(), nullable=False),
        pa.field("dgi_ids", pa.list_(pa.uint16()), nullable=False),
        pa.field("dgi_encrypted", pa.list_(pa.bool_()), nullable=False),
        pa.field("card_data", pa.binary(), nullable=False),
        pa.field("kcvs", pa.string(), nullable=False),
        pa.field("icc_pk_sha256", pa.string(), nullable=False),
    ]
)


#: Unique per card (no repeated value a dictionary could share).
_UNIQUE_COLUMNS = frozenset({"line_no", "pan_token", "card_data", "icc_pk_sha256"})


def _leaf(field: pa.Field) -> str:
    """The Parquet column path of ``field`` (a list's values are ``<name>.list.element``)."""
    return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name


#: How a part is written (issue 7, measured on 12,000 SM2 cards: write 33 -> 21 ms, the
#: publish step's read 20 -> 13 ms, the file 2 % larger).  ``card_data`` is sealed
#: (AES-GCM output): zstd cannot shrink it, so it is stored uncompressed; no dictionary is
#: tried for columns unique per card; statistics (min/max) only for the input line.
PART_WRITE_OPTIONS: dict[str, Any] = {
    "compression": {_leaf(f): "none" if f.name == "card_data" else "zstd" for f in PART_SCHEMA},
    "use_dictionary": [_leaf(f) for f in PART_SCHEMA if f.name not in _UNIQUE_COLUMNS],
    "write_statistics": ["line_no"],
}


class PartWriter:
    """Stream record batches into ``path`` (atomic: visible only after :meth:`__exit__`).

    ``metadata`` (flat str -> JSON-able) is stored under ``cardprep.<key>``
    once every row is written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ctx = atomic_writer(path)
        self._fh: IO[bytes] | None = None
        self._writer: Any = None
        self.rows = 0
        self.metadata: dict[str, Any] = {}

    def __enter__(self) -> PartWriter:
        self._fh = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._fh, PART_SCHEMA, **PART_WRITE_OPTIONS)
        return self

    def write_rows(self, rows: Mapping[str, list[Any]] | Any) -> None:
        """Write a table, or a mapping of column lists, in :data:`PART_SCHEMA`."""
        table = rows if isinstance(rows, pa.Table) else pa.table(dict(rows), schema=PART_SCHEMA)
        if table.num_rows:
            # a worker's rows already have PART_SCHEMA: no cast (and no pyarrow.compute)
            same = table.schema.equals(PART_SCHEMA)
            self._writer.write_table(table if same else table.cast(PART_SCHEMA))
            self.rows += int(table.num_rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                meta = {"format": PART_FORMAT, "rows": self.rows, **self.metadata}
                self._writer.add_key_value_metadata(
                    {META_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
                )
            self._writer.close()
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(exc_type, exc, tb)


def read_part_metadata(path: Path) -> dict[str, Any]:
    """The ``cardprep.*`` metadata of a part (VerificationError if unreadable or foreign)."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise VerificationError(f"{path} [parquet]", f"unreadable ({type(exc).__name__})") from None
    raw = meta.metadata or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode("utf-8", errors="replace")
        if name.startswith(META_PREFIX):
            try:
                out[name[len(META_PREFIX) :]] = json.loads(value)
            except ValueError:
                raise VerificationError(f"{path} [metadata]", f"{name} is not JSON") from None
    if out.get("format") != PART_FORMAT:
        raise VerificationError(f"{path} [metadata]", "not a cardprep part")
    if out.get("rows") != meta.num_rows:
        raise VerificationError(
            f"{path} [rows]", f"metadata says {out.get('rows')}, file has {meta.num_rows}"
        )
    return out


def iter_part_batches(
    path: Path, batch_rows: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[dict[str, list[Any]]]:
    """Stream a part as column dicts of at most ``batch_rows`` rows (only ``columns`` if given).

    Read memory-mapped and decoded on the calling thread: publish and verify
    run it in a serial step, and on two shared cores Arrow's reader threads
    mostly waited to be scheduled.  In ``publish`` (6,000 SM2 cards, read
    right after they were written) the median read went from ~6.8 to
    ~3.4 us a row, the same rows (issue 7).  A part is written atomically and
    never rewritten in place, so the mapping cannot shrink under the reader.
    """
    for batch in iter_part_record_batches(path, batch_rows, columns):
        yield batch.to_pydict()


def iter_part_record_batches(
    path: Path, batch_rows: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[Any]:
    """:func:`iter_part_batches` as Arrow record batches (for callers that convert by column)."""
    parquet = pq.ParquetFile(path, memory_map=True)
    wanted = list(columns) if columns is not None else None
    yield from parquet.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False)
