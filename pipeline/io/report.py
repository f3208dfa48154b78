"""The batch report, JSON and HTML, written beside the output (issue 5 "Output").

Counts per product, reject reasons, timings and throughput, and the keys used
(label, version, KCV).  The report is built from the manifest's body and the
step timings only (:func:`build_report`): it never sees a PAN or a key.  The
HTML is one self-contained page (inline CSS, every value escaped).

Publish writes both reports *before* the manifest, which lists and hashes
them (kinds ``report-json`` and ``report-html``, :data:`REPORT_KINDS`) and is
written last as the batch's commit marker; nothing rewrites them afterwards.
A crash therefore leaves either no manifest (not published: the re-run writes
everything again) or a manifest whose reports are complete and hashed.

Example:
    >>> report = {"batch_id": "00ab12cd34ef5678", "issuer": "demo",
    ...           "counts": {"in": 3, "prepared": 2, "rejected": 1},
    ...           "per_product": {"p": {"in": 3, "prepared": 2, "rejected": 1}},
    ...           "reasons": [{"code": "R001", "reason": "PAN_LUHN", "count": 1}],
    ...           "timings": {"prepare_seconds": 1.0}, "keys": [], "files": []}
    >>> "<td>R001</td>" in render_html(report)
    True
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.audit.trail import canonical
from pipeline.errors import CardprepError
from pipeline.io.atomic import write_text_atomic
from pipeline.keys.model import KeyRef
from pipeline.keys.store import KeyStore
from pipeline.records.reasons import RejectReason

__all__ = [
    "REPORT_KINDS",
    "REPORT_PURPOSE",
    "build_report",
    "key_roles",
    "reason_rows",
    "render_html",
    "seal_report",
    "verify_report_mac",
    "write_report",
]

#: report.json also carries its own MAC (``store.mac(key, canonical JSON,
#: "report")`` under the manifest's key), so that a copy travelling without
#: its manifest can still be checked; report.html must render from it.
REPORT_PURPOSE = "report"
#: Manifest ``files[].kind`` of report.json and report.html.
REPORT_KINDS = ("report-json", "report-html")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f0f0f0} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#070}.bad{color:#a00}
"""


def reason_rows(per_reason: Mapping[str, int]) -> list[dict[str, Any]]:
    """``{code: n}`` -> rows with the reason's name, sorted by code.

    Example:
        >>> reason_rows({"R050": 2})
        [{'code': 'R050', 'reason': 'DUPLICATE_CARD', 'count': 2}]
    """
    rows = []
    for code, count in sorted(per_reason.items()):
        try:
            name = RejectReason(code).name
        except ValueError:
            name = "UNKNOWN"
        rows.append({"code": code, "reason": name, "count": int(count)})
    return rows


def key_roles(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    """``label@vN`` -> the roles it played in this batch (``product:role``, ``manifest mac`` ...).

    Example:
        >>> key_roles({"products": {"p": {"keys": {"tk": "t@v1"}, "ca": {"key": "c@v1"}}},
        ...            "data_key": "d@v1", "mac": {"key": "t@v1"}})
        {'t@v1': ['manifest mac', 'p:tk'], 'c@v1': ['p:ca'], 'd@v1': ['card data seal']}
    """
    roles: dict[str, set[str]] = defaultdict(set)
    for product, info in manifest.get("products", {}).items():
        for role, ref in info.get("keys", {}).items():
            roles[ref].add(f"{product}:{role}")
        ca = info.get("ca", {}).get("key")
        if ca:
            roles[ca].add(f"{product}:ca")
    if manifest.get("data_key"):
        roles[manifest["data_key"]].add("card data seal")
    mac_key = manifest.get("mac", {}).get("key")
    if mac_key:
        roles[mac_key].add("manifest mac")
    return {ref: sorted(r) for ref, r in roles.items()}


def build_report(
    manifest: Mapping[str, Any], timings: Mapping[str, Any], mac_key: str, mac_kcv: str
) -> dict[str, Any]:
    """The report of a batch about to be published, from its manifest body (no ``mac`` yet).

    ``mac_key``/``mac_kcv`` name the key the manifest will be MACed under;
    ``files`` are the outputs the manifest lists so far (the reports
    themselves are added to the manifest after this).  Throughput is derived
    from ``prepare_seconds`` and ``workers``.

    Example:
        >>> m = {"batch_id": "b", "issuer": "demo", "created_at": "t", "input": {},
        ...      "counts": {"in": 3, "prepared": 2, "rejected": 1, "per_product": {},
        ...                 "per_reason": {"R001": 1}},
        ...      "products": {}, "keys": [], "files": []}
        >>> r = build_report(m, {"prepare_seconds": 0.5, "workers": 2}, "tk@v1", "ABCDEF")
        >>> r["timings"]["cards_per_second"], r["reasons"][0]["reason"]
        (4.0, 'PAN_LUHN')
    """
    counts = manifest["counts"]
    roles = key_roles({**manifest, "mac": {"key": mac_key}})
    keys = [{**k, "roles": roles.get(k["ref"], [])} for k in manifest["keys"]]
    times = dict(timings)
    prepare_s = float(times.get("prepare_seconds", 0) or 0)
    workers = int(times.get("workers", 0) or 0)
    if prepare_s > 0:
        times["cards_per_second"] = round(counts["prepared"] / prepare_s, 1)
        if workers:
            times["cards_per_second_per_worker"] = round(
                counts["prepared"] / prepare_s / workers, 1
            )
    return {
        "batch_id": manifest["batch_id"],
        "issuer": manifest["issuer"],
        "created_at": manifest["created_at"],
        "input": manifest["input"],
        "counts": {k: counts[k] for k in ("in", "prepared", "rejected")},
        "per_product": counts["per_product"],
        "reasons": reason_rows(counts["per_reason"]),
        "timings": times,
        "keys": keys,
        "products": {
            p: {"version": v["version"], "scheme": v["scheme"], "ca": v["ca"]}
            for p, v in manifest["products"].items()
        },
        "files": list(manifest["files"]),
        "manifest_mac": {"key": mac_key, "kcv": mac_kcv},
    }


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page."""
    counts = report.get("counts", {})
    balanced = counts.get("in") == counts.get("prepared", 0) + counts.get("rejected", 0)
    status = (
        '<p class="ok">records in = prepared + rejected</p>'
        if balanced
        else '<p class="bad">RECONCILIATION FAILED</p>'
    )
    products = report.get("per_product", {})
    timings = report.get("timings", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cardprep batch {_e(report.get('batch_id'))}</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>Batch {_e(report.get('batch_id'))}</h1>",
        _table(
            ["issuer", "input", "input SHA-256", "created", "manifest MAC key"],
            [
                [
                    report.get("issuer"),
                    report.get("input", {}).get("name"),
                    report.get("input", {}).get("sha256"),
                    report.get("created_at"),
                    f"{report.get('manifest_mac', {}).get('key')} "
                    f"kcv={report.get('manifest_mac', {}).get('kcv')}",
                ]
            ],
        ),
        "<h2>Counts</h2>",
        status,
        _table(
            ["product", "in", "prepared", "rejected"],
            [[p, c.get("in"), c.get("prepared"), c.get("rejected")] for p, c in products.items()]
            + [["total", counts.get("in"), counts.get("prepared"), counts.get("rejected")]],
            {1, 2, 3},
        ),
        "<h2>Reject reasons</h2>",
        _table(
            ["code", "reason", "count"],
            [[r["code"], r["reason"], r["count"]] for r in report.get("reasons", [])],
            {2},
        ),
        "<h2>Timings and throughput</h2>",
        _table(["measure", "value"], [[k, v] for k, v in timings.items()], {1}),
        "<h2>Keys used</h2>",
        _table(
            ["label", "version", "KCV", "used as"],
            [
                [k.get("label"), k.get("version"), k.get("kcv"), ", ".join(k.get("roles", []))]
                for k in report.get("keys", [])
            ],
        ),
        "<h2>Files</h2>",
        _table(
            ["path", "kind", "rows", "bytes", "SHA-256"],
            [
                [f.get("path"), f.get("kind"), f.get("rows", ""), f.get("size"), f.get("sha256")]
                for f in report.get("files", [])
            ],
            {2, 3},
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(json_path: Path, html_path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report.json`` and ``report.html``, each atomically (before the manifest)."""
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    write_text_atomic(json_path, text)
    # rendered from the JSON as written, so that verify can render it again and compare
    write_text_atomic(html_path, render_html(json.loads(text)))


def _report_body(report: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in report.items() if k != "mac"})


def seal_report(report: Mapping[str, Any], store: KeyStore, key: KeyRef) -> dict[str, Any]:
    """``report`` with a ``mac`` member (key, KCV, value) over its canonical JSON."""
    mac = store.mac(key, _report_body(report), REPORT_PURPOSE)
    sealed = {k: v for k, v in report.items() if k != "mac"}
    sealed["mac"] = {
        "key": str(key),
        "kcv": store.get(key).kcv.hex().upper(),
        "purpose": REPORT_PURPOSE,
        "value": mac.hex().upper(),
    }
    return sealed


def verify_report_mac(store: KeyStore, report: Mapping[str, Any]) -> bool:
    """True when the report's ``mac`` member verifies with ``store``."""
    member = report.get("mac")
    if not isinstance(member, Mapping):
        return False
    try:
        key = KeyRef.parse(str(member.get("key")))
        value = bytes.fromhex(str(member.get("value")))
        return store.verify_mac(key, _report_body(report), value, REPORT_PURPOSE)
    except (CardprepError, ValueError):
        return False
