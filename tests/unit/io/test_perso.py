"""Card payload and bureau personalization file (pipeline.io.perso).

The DGI payload format is cardprep's own (docs/OUTPUT.md); it is cross-checked
on random DGI lists against a second, independent encoder written here with
``struct``, and the file reader must refuse every truncation or edit.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidInputError, VerificationError
from pipeline.io.paths import sha256_file
from pipeline.io.perso import (
    BureauCard,
    BureauFileWriter,
    BureauHeader,
    CardSealer,
    _dgi_field,
    bureau_record,
    decode_card_dgis,
    dgi_fields,
    encode_card_dgis,
    open_card,
    read_bureau_file,
    seal_card,
)
from pipeline.keys.model import KeyRef
from pipeline.records.dgi import Dgi

dgis = st.lists(
    st.builds(Dgi, st.integers(0x0101, 0xFFFE), st.binary(max_size=300), st.booleans()),
    max_size=8,
)


@given(dgis)
@settings(max_examples=200, deadline=None)
def test_payload_matches_an_independent_encoder_and_round_trips(items: list[Dgi]) -> None:
    independent = b"".join(
        struct.pack(">HBH", d.id, 1 if d.encrypted else 0, len(d.value)) + d.value
        for d in items
    )
    assert encode_card_dgis(items) == independent
    assert [(d.id, d.value, d.encrypted) for d in decode_card_dgis(independent)] == [
        (d.id, d.value, d.encrypted) for d in items]


def test_payload_decoder_refuses_truncation_and_unknown_flags() -> None:
    blob = encode_card_dgis([Dgi(0x8000, b"K" * 16, True)])
    with pytest.raises(InvalidInputError, match="runs past the end"):
        decode_card_dgis(blob[:-1])
    with pytest.raises(InvalidInputError, match="truncated"):
        decode_card_dgis(blob[:3])
    with pytest.raises(InvalidInputError, match="flags"):
        decode_card_dgis(blob[:2] + b"\x02" + blob[3:])


def test_sealed_card_is_bound_to_batch_and_line(store, data_key) -> None:
    blob = seal_card(store, data_key, batch_id="00ab", line_no=7, product="p",
                     dgis=[Dgi(0x9000, b"\x01\x02\x03")])
    product, back = open_card(store, blob, batch_id="00ab", line_no=7, where="t")
    assert product == "p" and back[0].value == b"\x01\x02\x03"
    with pytest.raises(VerificationError, match=r"\[card binding\]"):
        open_card(store, blob, batch_id="00ab", line_no=8, where="t")


def _write(path: Path, n: int) -> None:
    header = BureauHeader("00ab", "demo", n, "2025-01-01T00:00:00Z", "demo-data@v1", "305D45",
                          (("demo-tk@v1", "D2B91C"),))
    with BureauFileWriter(path, header) as w:
        for i in range(n):
            w.write(BureauCard(i + 1, i + 2, "p", "476173******0119", "demo-tk@v1",
                               ((0x0101, False), (0x8000, True)), bytes([i]) * 20))


def test_bureau_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.cps"
    _write(path, 3)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("H|CARDPREP-PERSO|1|00ab|demo|3|")
    assert lines[0].endswith("demo-tk@v1:D2B91C")
    assert lines[1].split("|")[6] == "0101,8000E"
    header, cards = read_bureau_file(path)
    got = list(cards)
    assert header.cards == 3 and [c.line_no for c in got] == [2, 3, 4]
    assert got[2].sealed == bytes([2]) * 20


@pytest.mark.parametrize("edit,check", [
    (lambda t: t[: t.rindex("T|")], "trailer"),                # trailer lost
    (lambda t: t.replace("|3|", "|9|", 1), "count"),            # header count
    (lambda t: t.replace("476173******0119", "476173******0118", 1), "hash"),
    (lambda t: t[:-3], "truncated"),                             # no final LF
    (lambda t: t + "D|4|x\n", "trailer"),                        # data after the trailer
])
def test_bureau_reader_refuses_edits(tmp_path: Path, edit, check) -> None:
    path = tmp_path / "b.cps"
    _write(path, 3)
    path.write_text(edit(path.read_text()))
    with pytest.raises(VerificationError, match=rf"\[{check}\]"):
        _, cards = read_bureau_file(path)
        list(cards)


def test_writer_with_a_wrong_count_leaves_no_file(tmp_path: Path) -> None:
    header = BureauHeader("00ab", "demo", 2, "t", "k@v1", "00", ())
    with pytest.raises(VerificationError, match=r"\[count\]"), \
            BureauFileWriter(tmp_path / "b.cps", header) as w:
        w.write(BureauCard(1, 2, "p", "m", "t@v1", (), b"x"))
    assert list(tmp_path.iterdir()) == []


class _ClearStore:
    """encrypt_data that only tags its input: makes sealed bytes comparable."""

    def encrypt_data(self, key: object, plaintext: bytes, purpose: str) -> bytes:
        return purpose.encode() + b"|" + plaintext


@pytest.mark.parametrize(
    ("batch_id", "product", "line_no"),
    [
        ("00ab", "demo-visa-rsa", 7),
        ("00ab" * 16, 'p"\\\u00e9\u4e2d', 1_000_001),  # JSON escapes and non-ASCII
        ("918273645546372819", "p", 2),  # the batch id holds the mark: seal_card's path
        ("00ab", "p", True),  # not an int line: seal_card's path
    ],
)
def test_card_sealer_gives_seal_cards_bytes(batch_id: str, product: str, line_no: int) -> None:
    """The sealer's header cut once per product gives seal_card's bytes exactly."""
    store: Any = _ClearStore()
    key = KeyRef("demo-data", 3)
    dgis = [Dgi(0x9000, b"\x01\x02\x03"), Dgi(0x8000, b"K" * 16, True)]
    sealer = CardSealer(store, key, batch_id)
    for _ in range(2):  # the second card of a product takes the remembered cut
        expected = seal_card(
            store, key, batch_id=batch_id, line_no=line_no, product=product, dgis=dgis
        )
        assert sealer.seal(line_no, product, dgis) == expected


def test_card_sealer_output_opens_as_a_sealed_card(store, data_key) -> None:
    sealer = CardSealer(store, data_key, "00ab")
    blob = sealer.seal(7, "p", [Dgi(0x9000, b"\x01\x02\x03")])
    product, back = open_card(store, blob, batch_id="00ab", line_no=7, where="t")
    assert product == "p" and back[0].value == b"\x01\x02\x03"


def test_write_many_gives_the_bytes_of_write_per_card(tmp_path: Path) -> None:
    """publish's batched writer: same records, numbering, trailer count and hash as write()."""
    header = BureauHeader("00ab", "demo", 5, "2025-01-01T00:00:00Z", "demo-data@v1", "305D45",
                          (("demo-tk@v1", "D2B91C"),))  # fmt: skip
    cards = [
        (i + 2, "p", "476173******0119", "demo-tk@v1", ((0x0101, False), (0x8000, True)),
         bytes([i]) * (20 + i))
        for i in range(5)
    ]  # fmt: skip
    one, many = tmp_path / "one.cps", tmp_path / "many.cps"
    with BureauFileWriter(one, header) as w:
        for seq, card in enumerate(cards, start=1):
            w.write(BureauCard(seq, *card))
    with BureauFileWriter(many, header) as w:
        w.write_many(cards[:2])
        w.write_many(iter(cards[2:]))  # numbering goes on across calls
        assert w.count == 5
    assert many.read_bytes() == one.read_bytes()
    assert [c.seq for c in read_bureau_file(many)[1]] == [1, 2, 3, 4, 5]


def test_writer_sha256_is_the_written_files(tmp_path: Path) -> None:
    """publish takes the writer's digest for the manifest instead of reading the file back."""
    path = tmp_path / "b.cps"
    header = BureauHeader("00ab", "demo", 2100, "2025-01-01T00:00:00Z", "demo-data@v1",
                          "305D45", (("demo-tk@v1", "D2B91C"),))  # fmt: skip
    cards = [
        (i + 2, "p", "476173******0119", "demo-tk@v1", ((0x8000, True),), bytes([i % 256]) * 700)
        for i in range(2100)
    ]
    with BureauFileWriter(path, header) as w:
        w.write(BureauCard(1, *cards[0]))
        w.write_many(cards[1:1000])  # blocks large enough to be hashed off the GIL
        w.write_many(cards[1000:])
        assert w.sha256 is None  # not before the trailer
    assert w.sha256 == sha256_file(path)
    _, read = read_bureau_file(path)
    assert sum(1 for _ in read) == 2100  # the trailer's hash over the records still holds


def test_writer_that_fails_has_no_sha256(tmp_path: Path) -> None:
    header = BureauHeader("00ab", "demo", 2, "t", "k@v1", "00", ())
    with pytest.raises(VerificationError), BureauFileWriter(tmp_path / "b.cps", header) as w:
        w.write(BureauCard(1, 2, "p", "m", "t@v1", (), b"x"))
    assert w.sha256 is None


_layouts = st.lists(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.booleans()), max_size=12), max_size=60
)


@given(rows=_layouts, cut=st.integers(0, 60), size=st.integers(0, 60))
@settings(max_examples=200, deadline=None)
def test_dgi_fields_match_the_per_row_formatting(
    rows: list[list[tuple[int, bool]]], cut: int, size: int
) -> None:
    """publish formats the DGI list field from the Arrow columns: the text of _dgi_field."""
    ids = pa.array([[i for i, _ in row] for row in rows], pa.list_(pa.uint16()))
    flags = pa.array([[e for _, e in row] for row in rows], pa.list_(pa.bool_()))
    # batches of a part are slices of larger arrays: offsets into shared buffers
    ids, flags, rows = ids.slice(cut, size), flags.slice(cut, size), rows[cut : cut + size]
    assert dgi_fields(ids, flags) == [_dgi_field(tuple(row)) for row in rows]


def test_dgi_fields_refuse_flags_that_do_not_match_the_ids() -> None:
    ids = pa.array([[0x0101, 0x8000]], pa.list_(pa.uint16()))
    with pytest.raises(VerificationError, match="dgi_encrypted"):
        dgi_fields(ids, pa.array([[False]], pa.list_(pa.bool_())))
    with pytest.raises(VerificationError, match="dgi_encrypted"):
        dgi_fields(ids, pa.array([None], pa.list_(pa.bool_())))


def test_bureau_record_takes_the_dgi_field_preformatted() -> None:
    pairs = ((0x0101, False), (0x8000, True))
    assert bureau_record(7, 9, "p", "m", "t@v1", pairs, b"xy") == bureau_record(
        7, 9, "p", "m", "t@v1", "0101,8000E", b"xy"
    )


def test_dgi_fields_do_not_import_pyarrow_compute() -> None:
    """A batch run never imports pyarrow.compute (~40 ms a process): publish must not either."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, pyarrow as pa\n"
        "from pipeline.io.perso import dgi_fields\n"
        "ids = pa.array([[257, 32768], [257]], pa.list_(pa.uint16())).slice(1)\n"
        "flags = pa.array([[False, True], [False]], pa.list_(pa.bool_())).slice(1)\n"
        "assert dgi_fields(ids, flags) == ['0101']\n"
        "print('pyarrow.compute' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_file_without_line_feeds_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """Reconcile counts a bureau file of the manifest's size before its hash is compared."""
    import tracemalloc  # noqa: PLC0415

    from pipeline.io.perso import MAX_LINE, count_bureau_records  # noqa: PLC0415

    path = tmp_path / "b.cps"
    _write(path, 3)
    head = path.read_bytes().split(b"\n", 1)[0] + b"\n"
    path.write_bytes(head + bytes(8 * MAX_LINE))  # zero-filled after a crash
    tracemalloc.start()
    try:
        with pytest.raises(VerificationError, match=r"\[line\]"):
            count_bureau_records(path)
        with pytest.raises(VerificationError, match=r"\[line\]"):
            list(read_bureau_file(path)[1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE
    path.write_bytes(bytes(8 * MAX_LINE))  # not even a header
    with pytest.raises(VerificationError, match=r"\[header\]"):
        count_bureau_records(path)
