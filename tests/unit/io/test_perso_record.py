"""The bureau writer's record bytes against the reference ``BureauCard.line``.

:meth:`BureauCard.record` (what :class:`BureauFileWriter` writes) formats a
DGI layout's list once and base64-encodes the card data straight to bytes
(issue 7); it must give exactly ``(line() + "\\n").encode("ascii")`` for any
card, and fail where that fails (a non-ASCII field).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io import perso
from pipeline.io.perso import BureauCard, BureauFileWriter, BureauHeader, read_bureau_file

texts = st.text(alphabet=st.sampled_from("ab7*|,\u00e9\u2603 "), max_size=6)
layouts = st.lists(st.tuples(st.integers(0, 0x1FFFF), st.booleans()), max_size=12).map(tuple)
cards = st.builds(
    BureauCard,
    seq=st.integers(-5, 10**12),
    line_no=st.integers(-5, 10**9),
    product=texts,
    masked_pan=texts,
    tk=texts,
    # few layouts, so that most draws meet one already formatted
    dgis=st.sampled_from([(), ((0x0101, False), (0x8000, True)), ((0x9000, False),)]) | layouts,
    sealed=st.binary(max_size=200),
)


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except Exception as exc:  # the exception type is what is compared
        return ("raised", type(exc))


@given(st.lists(cards, min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_record_is_the_reference_line_as_bytes(batch: list[BureauCard]) -> None:
    for card in batch:
        for _ in range(2):  # the second call takes the formatted layout
            assert _outcome(card.record) == _outcome(
                lambda c=card: (c.line() + "\n").encode("ascii")
            )


def test_a_layout_as_a_list_and_a_full_cache_still_format() -> None:
    card = BureauCard(1, 2, "p", "m", "t", [(0x0101, True)], b"x")  # type: ignore[arg-type]
    assert card.record() == (card.line() + "\n").encode("ascii")
    saved = dict(perso._DGI_FIELDS)
    try:
        perso._DGI_FIELDS.clear()
        for i in range(perso._DGI_FIELDS_MAX + 5):
            c = BureauCard(1, 2, "p", "m", "t", ((i, i % 2 == 0),), b"x")
            assert c.record() == (c.line() + "\n").encode("ascii")
        assert len(perso._DGI_FIELDS) == perso._DGI_FIELDS_MAX
    finally:
        perso._DGI_FIELDS.clear()
        perso._DGI_FIELDS.update(saved)


def test_writer_output_is_the_reference_file(tmp_path: Path) -> None:
    """Header, each ``line()`` with LF, trailer with the SHA-256 of those lines: byte for byte."""
    header = BureauHeader("00ab", "demo", 4, "2025-01-01T00:00:00Z", "demo-data@v1", "305D45",
                          (("demo-tk@v1", "D2B91C"),))  # fmt: skip
    batch = [
        BureauCard(i + 1, 2 * i + 2, "demo-pboc-sm2", "623456*********0017", "demo-tk@v1",
                   ((0x0101, False), (0x8000, True), (0x9000, i % 2 == 0)), bytes(range(i * 40)))
        for i in range(4)
    ]  # fmt: skip
    path = tmp_path / "b.cps"
    with BureauFileWriter(path, header) as w:
        for card in batch:
            w.write(card)
    records = "".join(c.line() + "\n" for c in batch).encode("ascii")
    trailer = f"T|4|{hashlib.sha256(records).hexdigest()}\n".encode("ascii")
    assert path.read_bytes() == (header.line() + "\n").encode("ascii") + records + trailer
    _, back = read_bureau_file(path)
    assert [c.sealed for c in back] == [c.sealed for c in batch]


def test_a_non_ascii_field_is_refused_as_before(tmp_path: Path) -> None:
    header = BureauHeader("00ab", "demo", 1, "t", "k@v1", "00", ())
    with pytest.raises(UnicodeEncodeError), BureauFileWriter(tmp_path / "b.cps", header) as w:
        w.write(BureauCard(1, 2, "p\u00e9", "m", "t@v1", (), b"x"))
    assert list(tmp_path.iterdir()) == []
