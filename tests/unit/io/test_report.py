"""The batch report built from a manifest body (pipeline.io.report.build_report).

No public vector exists for a cardprep report; the expected values are
computed by hand from the manifest body below (counts, roles, throughput).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.io.report import REPORT_KINDS, build_report, key_roles, render_html, write_report


def _manifest() -> dict[str, Any]:
    return {
        "batch_id": "00ab12cd34ef5678",
        "issuer": "demo",
        "created_at": "2025-01-15T10:00:00Z",
        "input": {"name": "x.dat", "sha256": "aa" * 32},
        "counts": {"in": 10, "prepared": 8, "rejected": 2, "per_product": {
            "p": {"in": 10, "prepared": 8, "rejected": 2}}, "per_reason": {"R050": 2}},
        "products": {"p": {"version": 3, "scheme": "emv", "ca": {"key": "ca@v1"},
                           "keys": {"tk": "tk@v1", "issuer": "iss@v2"}}},
        "keys": [{"ref": "ca@v1", "label": "ca", "version": 1, "kcv": "111111"},
                 {"ref": "iss@v2", "label": "iss", "version": 2, "kcv": "222222"},
                 {"ref": "tk@v1", "label": "tk", "version": 1, "kcv": "333333"}],
        "data_key": "d@v1",
        "files": [{"path": "parts/part-00000.parquet", "kind": "part", "size": 1,
                   "sha256": "bb" * 32, "rows": 8}],
    }  # fmt: skip


def test_report_counts_roles_and_throughput() -> None:
    report = build_report(_manifest(), {"prepare_seconds": 2.0, "workers": 2}, "tk@v1", "333333")
    assert report["counts"] == {"in": 10, "prepared": 8, "rejected": 2}
    assert report["reasons"] == [{"code": "R050", "reason": "DUPLICATE_CARD", "count": 2}]
    assert report["timings"]["cards_per_second"] == 4.0  # 8 cards / 2 s
    assert report["timings"]["cards_per_second_per_worker"] == 2.0
    roles = {k["ref"]: k["roles"] for k in report["keys"]}
    assert roles == {"ca@v1": ["p:ca"], "iss@v2": ["p:issuer"], "tk@v1": ["manifest mac", "p:tk"]}
    assert report["manifest_mac"] == {"key": "tk@v1", "kcv": "333333"}
    assert "mac" not in report and "audit_seq" not in report


def test_report_lists_the_outputs_but_never_itself() -> None:
    manifest = _manifest()
    report = build_report(manifest, {}, "tk@v1", "333333")
    manifest["files"].append({"path": "report.json", "kind": REPORT_KINDS[0]})
    assert [f["path"] for f in report["files"]] == ["parts/part-00000.parquet"]
    assert "cards_per_second" not in report["timings"]  # no prepare time: no throughput


def test_key_roles_without_a_mac_key() -> None:
    assert key_roles({"products": {}, "data_key": "d@v1"}) == {"d@v1": ["card data seal"]}


def test_html_is_rendered_from_the_json_as_written(tmp_path: Path) -> None:
    """What verify re-renders: report.html == render_html(json.loads(report.json))."""
    report = build_report(_manifest(), {"prepare_seconds": 2.0}, "tk@v1", "333333")
    write_report(tmp_path / "report.json", tmp_path / "report.html", report)
    written = json.loads((tmp_path / "report.json").read_text())
    html = (tmp_path / "report.html").read_text()
    assert written == report and html == render_html(written)
    assert "<td>R050</td>" in html and "manifest mac, p:tk" in html
