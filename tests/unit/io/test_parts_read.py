"""``iter_part_batches`` (memory-mapped, single-threaded read) against a plain Arrow read.

Issue 7: publish and verify stream every part through ``iter_part_batches``;
it maps the file and decodes on the calling thread.  The rows must be those
of ``pq.read_table`` (the reference: a buffered, multi-threaded read) in
order and in batches of at most ``batch_rows``, and a damaged file must fail
as it does there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.io import parts
from pipeline.io.parts import PartWriter, iter_part_batches

rows = st.lists(
    st.fixed_dictionaries(
        {
            "batch_id": st.just("00ab12cd34ef5678"),
            "line_no": st.integers(2, 10**7),
            "product": st.sampled_from(["demo-pboc-sm2", "demo-visa-rsa"]),
            "masked_pan": st.just("623456*********0017"),
            "pan_token": st.text(alphabet="0123456789abcdef", min_size=1, max_size=8),
            "dgi_ids": st.lists(st.integers(0, 0xFFFF), max_size=6),
            "card_data": st.binary(max_size=300),
            "kcvs": st.just("{}"),
            "icc_pk_sha256": st.just("ab" * 32),
        }
    ),
    max_size=40,
)


def _write(path: Path, items: list[dict[str, Any]]) -> None:
    columns: dict[str, list[Any]] = {name: [] for name in parts.PART_SCHEMA.names}
    for item in items:
        for name, values in columns.items():
            if name == "dgi_encrypted":
                values.append([i % 2 == 0 for i in item["dgi_ids"]])
            else:
                values.append(item[name])
    with PartWriter(path) as w:
        for start in range(0, len(items), 7):  # several row groups
            w.write_rows({k: v[start : start + 7] for k, v in columns.items()})


@given(items=rows, batch_rows=st.integers(1, 50))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_batches_hold_the_reference_rows(
    tmp_path: Path, items: list[dict[str, Any]], batch_rows: int
) -> None:
    path = tmp_path / "part-00000.parquet"
    _write(path, items)
    reference = pq.read_table(path).to_pydict()
    got: dict[str, list[Any]] = {name: [] for name in reference}
    for batch in iter_part_batches(path, batch_rows):
        assert set(batch) == set(reference)
        assert 0 < len(batch["line_no"]) <= batch_rows
        for name, values in batch.items():
            got[name].extend(values)
    assert got == reference
    path.unlink()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: b"",
        lambda d: d[: len(d) // 2],
        lambda d: d[:100] + d[-200:],
        lambda d: b"not parquet" * 20,
    ],
)
def test_a_damaged_part_fails_as_the_reference_read_does(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "part-00000.parquet"
    _write(path, _ROWS)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(pa.ArrowException) as reference:
        pq.read_table(path)
    with pytest.raises(pa.ArrowException) as got:
        list(iter_part_batches(path))
    assert type(got.value) is type(reference.value)


def test_reads_mapped_on_the_calling_thread(tmp_path: Path, monkeypatch: Any) -> None:
    """The two options the speed-up rests on (see the function's docstring)."""
    path = tmp_path / "part-00000.parquet"
    _write(path, _ROWS)
    seen: dict[str, Any] = {}
    real = pq.ParquetFile

    class Spy(real):  # type: ignore[misc,valid-type]
        def __init__(self, source: Any, **kw: Any) -> None:
            seen["open"] = kw
            super().__init__(source, **kw)

        def iter_batches(self, **kw: Any) -> Any:
            seen["iter"] = kw
            return super().iter_batches(**kw)

    monkeypatch.setattr(parts.pq, "ParquetFile", Spy)
    assert sum(len(b["line_no"]) for b in iter_part_batches(path)) == len(_ROWS)
    assert seen["open"].get("memory_map") is True
    assert seen["iter"].get("use_threads") is False


_ROWS = [
    {
        "batch_id": "00ab12cd34ef5678",
        "line_no": i + 2,
        "product": "demo-pboc-sm2",
        "masked_pan": "623456*********0017",
        "pan_token": f"{i:08x}",
        "dgi_ids": [0x0101, 0x8000],
        "card_data": bytes([i]) * 50,
        "kcvs": "{}",
        "icc_pk_sha256": "ab" * 32,
    }
    for i in range(30)
]


def test_only_the_columns_asked_for(tmp_path: Path) -> None:
    """publish reads only the columns a bureau record is made of, in the order asked."""
    path = tmp_path / "part-00000.parquet"
    items = [
        {"batch_id": "00ab12cd34ef5678", "line_no": n, "product": "demo-pboc-sm2",
         "masked_pan": "623456*********0017", "pan_token": "ab", "dgi_ids": [0x101, n],
         "card_data": bytes([n]) * n, "kcvs": "{}", "icc_pk_sha256": "ab" * 32}
        for n in range(2, 12)
    ]  # fmt: skip
    _write(path, items)
    wanted = ["card_data", "line_no"]
    batches = list(iter_part_batches(path, 3, columns=wanted))
    assert all(list(b) == wanted for b in batches)
    assert [x for b in batches for x in b["line_no"]] == [i["line_no"] for i in items]
    assert [x for b in batches for x in b["card_data"]] == [i["card_data"] for i in items]


def test_sealed_card_data_is_stored_uncompressed_and_the_rest_zstd(tmp_path: Path) -> None:
    """Sealed card data is AES-GCM output: zstd only costs time on it (issue 7)."""
    items = [
        {
            "batch_id": "00ab12cd34ef5678", "line_no": 2 + i, "product": "demo-pboc-sm2",
            "masked_pan": "623456*********0017", "pan_token": f"{i:032x}",
            "dgi_ids": [0x0101, 0x8000], "card_data": bytes([i]) * 200, "kcvs": "{}",
            "icc_pk_sha256": "ab" * 32,
        }
        for i in range(20)
    ]  # fmt: skip
    path = tmp_path / "part.parquet"
    _write(path, items)
    meta = pq.ParquetFile(path).metadata
    names = parts.PART_SCHEMA.names
    for group in range(meta.num_row_groups):
        for i, name in enumerate(names):
            column = meta.row_group(group).column(i)
            assert column.compression == ("UNCOMPRESSED" if name == "card_data" else "ZSTD"), name
            assert column.is_stats_set == (name == "line_no"), name
            dictionary = any("DICTIONARY" in e for e in column.encodings)
            unique = name in ("line_no", "pan_token", "card_data", "icc_pk_sha256")
            if name != "dgi_encrypted":  # booleans are bit-packed, never a dictionary
                assert dictionary != unique, name
    table = pq.read_table(path)
    assert table.column("card_data").to_pylist() == [item["card_data"] for item in items]
    assert table.column("line_no").to_pylist() == [item["line_no"] for item in items]
