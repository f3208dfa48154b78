"""Streaming: memory stays flat however long the file (1,000,000-card files must not load).

Over 200,000 records the number of live Python memory blocks
(``sys.getallocatedblocks``, sampled every 10,000 records: cheap) must not
grow; on 20,000 records tracemalloc bounds the peak in bytes (tracemalloc
slows the parser about tenfold, hence the smaller file), and the validator's
retained state per accepted card.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

from pipeline.records.layout import load_layout
from pipeline.records.luhn import luhn_check_digit
from pipeline.records.parse import iter_records, verify_file
from pipeline.records.validate import Validator
from tests.unit.records.helpers import BATCH, GOOD, demo, fixed_line, header

N = 200_000


def _big_file(path: Path, n: int, unique: bool) -> Path:
    layout = load_layout("demo-fixed")
    total = 0
    with path.open("wb") as fh:
        fh.write(header(layout) + b"\n")
        template = fixed_line(GOOD)
        for i in range(n):
            if unique:
                partial = f"476173{i:09d}"
                pan = partial + luhn_check_digit(partial)
                line = template[:1] + pan.encode() + template[17:]
            else:
                pan, line = GOOD["pan"], template
            total += int(pan[-10:])
            fh.write(line + b"\n")
        fh.write(f"T{n:09d}{total % 10**18:018d}".ljust(160).encode() + b"\n")
    return path


def test_block_count_is_flat_over_200k_records(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    path = _big_file(tmp_path / "big.dat", N, unique=False)
    assert verify_file(path, layout).record_count == N
    samples: list[int] = []
    count = 0
    for raw in iter_records(path, layout):
        count += 1
        if count % 10_000 == 0:
            samples.append(sys.getallocatedblocks())
        assert raw.problem is None
    assert count == N and len(samples) == 20
    # Retaining records would add ~15 blocks each: 150,000 blocks per 10,000 records.
    assert max(samples) - min(samples) < 2_000, samples


def test_peak_bytes_are_bounded(tmp_path: Path) -> None:
    layout = load_layout("demo-fixed")
    n = 20_000
    path = _big_file(tmp_path / "big.dat", n, unique=False)
    tracemalloc.start()
    try:
        assert verify_file(path, layout).record_count == n
        _, verify_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert sum(1 for _ in iter_records(path, layout)) == n
        _, parse_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The 1 MiB read buffer plus a few records, not the 3.2 MB file.
    assert verify_peak < 2 * 2**20, verify_peak
    assert parse_peak < 2 * 2**20, parse_peak


def test_validator_state_per_card_is_small(tmp_path: Path) -> None:
    """The duplicate check keeps one integer per accepted card (about 80 bytes), no records."""
    issuer, layout = demo()
    n = 10_000
    path = _big_file(tmp_path / "unique.dat", n, unique=True)
    v = Validator(issuer, layout, BATCH)
    tracemalloc.start()
    try:
        for raw in iter_records(path, layout):
            v.check(raw)
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert v.accepted == n
    assert retained / n < 150, retained / n
