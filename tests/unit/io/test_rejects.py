"""Reject rows, Parquet and CSV (pipeline.io.rejects): masked PANs only, merged by line."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.io.rejects import (
    CSV_COLUMNS,
    RejectWriter,
    merge_reject_files,
    reject_row,
    safe_masked_pan,
    write_reject_table,
)
from pipeline.records.reasons import RejectReason
from pipeline.records.validate import Reject


def _row(line: int, code: RejectReason = RejectReason.PAN_LUHN, detail: str = "x") -> dict:
    return reject_row(Reject(line, code, "pan", detail, "demo-visa-rsa", "476173******0119"),
                      "validate")


def test_a_full_pan_never_reaches_a_reject_row() -> None:
    row = reject_row(Reject(3, RejectReason.PAN_LUHN, "pan", "saw 4761739001010119 here",
                            None, "4761739001010119"), "validate")
    assert row["masked_pan"] == "476173******0119"
    assert "4761739001010119" not in row["detail"] and "476173******0119" in row["detail"]
    assert safe_masked_pan(None) is None


def test_merge_is_sorted_by_line_and_counts_reasons(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_reject_table(a, [_row(9), _row(2)])
    write_reject_table(b, [_row(5, RejectReason.SELF_CHECK_CERT), _row(3)])
    counts = merge_reject_files([a, b], tmp_path / "all.parquet", tmp_path / "all.csv")
    assert counts == {"R001": 3, "R080": 1}
    lines = pq.read_table(tmp_path / "all.parquet").column("line_no").to_pylist()
    assert lines == [2, 3, 5, 9]
    with (tmp_path / "all.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == ["2", "3", "5", "9"]


def test_merge_of_nothing_writes_empty_files(tmp_path: Path) -> None:
    a = tmp_path / "a.parquet"
    write_reject_table(a, [])
    assert merge_reject_files([a], tmp_path / "o.parquet", tmp_path / "o.csv") == {}
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 0
    assert (tmp_path / "o.csv").read_text().count("\n") == 1


def test_streaming_writer_keeps_line_order_and_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    with RejectWriter(out, chunk_rows=2) as w:
        for line in (2, 3, 7):
            w.add(_row(line))
    assert pq.read_table(out).column("line_no").to_pylist() == [2, 3, 7]
    with pytest.raises(ValueError, match="line order"), RejectWriter(tmp_path / "x.parquet") as w:
        w.add(_row(5))
        w.add(_row(4))
    assert not (tmp_path / "x.parquet").exists()
    assert not list(tmp_path.glob(".x.parquet*"))
