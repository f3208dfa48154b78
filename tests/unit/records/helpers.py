"""Builders for hand-made issuer files in the demo layouts (independent of sample.py).

The hash total here is recomputed from its definition in docs/INPUT.md
(sum of the last 10 PAN digits mod 10**18, or SHA-256 of the detail lines),
not through pipeline.records.parse.HashTotal.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.records.issuers import load_issuer
from pipeline.records.layout import Layout, load_layout

BATCH = date(2025, 1, 15)

# A valid card for the demo layouts (PAN: the public Visa test card of known_answers.json).
GOOD: dict[str, str] = {
    "pan": "4761739001010119",
    "psn": "01",
    "expiry": "2812",
    "effective": "2501",
    "service_code": "201",
    "name": "DOE/JOHN",
    "discretionary": "123456",
    "kdd": "00112233445566778899",
    "pin_block": "0123456789ABCDEF",
    "cvv": "FEDCBA9876543210",
    "icvv": "0011223344556677",
    "customer_ref": "CUST00000001",
}

# demo-fixed positions, written out by hand from config/layouts/demo-fixed.yaml.
FIXED_POS = {
    "pan": (2, 19), "psn": (21, 2), "expiry": (23, 4), "effective": (27, 4),
    "service_code": (31, 3), "name": (34, 26), "discretionary": (60, 13), "kdd": (73, 20),
    "pin_block": (93, 16), "cvv": (109, 16), "icvv": (125, 16), "customer_ref": (141, 20),
}
CSV_ORDER = ["pan", "psn", "expiry", "effective", "service_code", "name", "discretionary",
             "kdd", "pin_block", "cvv", "icvv", "customer_ref"]


def fixed_line(values: dict[str, str], marker: str = "D") -> bytes:
    buf = bytearray(b" " * 160)
    buf[0:1] = marker.encode()
    for name, (start, length) in FIXED_POS.items():
        v = values.get(name, "").encode("latin-1")
        assert len(v) <= length, name
        buf[start - 1:start - 1 + len(v)] = v
    return bytes(buf)


def csv_line(values: dict[str, str], marker: str = "D") -> bytes:
    return ",".join([marker] + [values.get(n, "") for n in CSV_ORDER]).encode("latin-1")


def json_line(values: dict[str, Any], marker: str = "D") -> bytes:
    obj = {"type": marker, **{k: v for k, v in values.items() if v != ""}}
    return json.dumps(obj, separators=(",", ":")).encode("latin-1")


def pan_sum(details: list[bytes], layout: Layout) -> str:
    total = 0
    for line in details:
        if layout.format.value == "fixed":
            pan = line[1:20].decode("latin-1").rstrip(" ")
        elif layout.format.value == "csv":
            parts = line.decode("latin-1").split(",")
            pan = parts[1] if len(parts) > 1 else ""
        else:
            try:
                pan = str(json.loads(line).get("pan", ""))
            except ValueError:
                pan = ""
        if pan.isdigit() and pan.isascii():
            total += int(pan[-10:])
    return str(total % 10**18).zfill(18)


def header(layout: Layout, file_date: str = "20250115") -> bytes:
    if layout.format.value == "fixed":
        return f"HDEMO    {file_date}00000101".ljust(160).encode()
    if layout.format.value == "csv":
        return f"H,DEMO,{file_date},000001".encode()
    return json.dumps({"type": "H", "issuer": "DEMO", "file_date": file_date,
                       "file_seq": "000001"}).encode()


def trailer(layout: Layout, details: list[bytes], count: int | None = None,
            total: str | None = None) -> bytes:
    n = len(details) if count is None else count
    if layout.format.value == "json":
        h = hashlib.sha256(b"".join(details)).hexdigest().upper()
        return json.dumps({"type": "T", "record_count": str(n),
                           "hash_total": total or h}).encode()
    t = total or pan_sum(details, layout)
    if layout.format.value == "fixed":
        return f"T{n:09d}{t}".ljust(160).encode()
    return f"T,{n},{t}".encode()


def write_file(path: Path, layout: Layout, details: list[bytes], *, eol: bytes = b"\n",
               count: int | None = None, total: str | None = None,
               final_eol: bool = True) -> Path:
    lines = [header(layout), *details, trailer(layout, details, count, total)]
    path.write_bytes(eol.join(lines) + (eol if final_eol else b""))
    return path


def line_for(layout: Layout, values: dict[str, str], marker: str = "D") -> bytes:
    fmt = layout.format.value
    if fmt == "fixed":
        return fixed_line(values, marker)
    if fmt == "csv":
        return csv_line(values, marker)
    return json_line(values, marker)


def demo(layout_name: str = "demo-fixed") -> tuple[Any, Layout]:
    issuer = {"demo-fixed": "demo", "demo-csv": "demo-csv", "demo-json": "demo-json"}
    return load_issuer(issuer[layout_name]), load_layout(layout_name)
