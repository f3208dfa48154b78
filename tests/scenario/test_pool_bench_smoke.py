"""Smoke run of bench/bench_pipeline.py: the table's shape, never its speed.

The benchmark is run by hand (docs/PERFORMANCE.md); CI only checks that a
tiny run of the SM2 and pool variants completes through the real steps and
prints one Markdown row per variant with every column filled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_pipeline.py"
COLUMNS = 12


def test_bench_prints_one_full_row_per_variant(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--work", str(tmp_path), "--variants", "sm2,rsa-pool",
         "--cards", "12", "--rounds", "1", "--seconds", "0.02", "--json",
         str(tmp_path / "rows.json")],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| variant | cards | workers | wall s | cards/s/core |")
    assert len(lines) == 2 + 2  # header, rule, two variants
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == COLUMNS and all(cells)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["variant"] for r in rows] == ["sm2", "rsa-pool"]
    for row in rows:
        assert row["cards"] == 12 and row["cards_per_s_core"] > 0 and row["bound_per_s_core"] > 0
        assert row["ratio"] == round(row["cards_per_s_core"] / row["bound_per_s_core"], 3)
        assert row["peak_rss_mib"] > 0
    assert rows[1]["pool"]["used"] == 12  # the pool variant really took its keys from the pool
