"""Step 6 (DAG task ``reconcile``): re-count from the files, audit, report, clean staging.

DESIGN.md step 6: after publish, the counts are established again *from the
written files* (part row counts, the merged rejects, the bureau file's header
and trailer) and compared with the sealed manifest; then the batch is
audited once in the key store's trail (``batch.published``: counts, keys
used with label/version/KCV, the manifest's digest) and the report
(``report.json`` + ``report.html``) lands beside the output.  Finally the
sealed staging segments are deleted: the cards are published, so the clear
records (sealed or not) have no reason to stay.

Example:
    >>> summary = reconcile(published, settings)   # doctest: +SKIP
    >>> summary["counts"]                          # doctest: +SKIP
    {'in': 300, 'prepared': 290, 'rejected': 10}
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import ReconciliationError
from pipeline.io.manifest import load_manifest, verify_manifest_mac
from pipeline.io.paths import sha256_file
from pipeline.io.perso import read_bureau_file
from pipeline.io.report import reason_rows, seal_report, write_report
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.steps.audit import audit_batch
from pipeline.steps.context import batch_paths, batch_settings, opened_store

__all__ = ["key_roles", "reconcile"]

log = logging.getLogger(__name__)


def key_roles(manifest: dict[str, Any]) -> dict[str, list[str]]:
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


def _recount(base: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Counts read back from the files the manifest lists; ReconciliationError on any difference."""
    counts = {"part": 0, "rejects": 0, "bureau": 0}
    for entry in manifest["files"]:
        path = base / entry["path"]
        if not path.exists():
            raise ReconciliationError(f"{path} [exists]", "listed in the manifest but missing")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise ReconciliationError(f"{path} [sha256]", "differs from the manifest")
        kind = entry["kind"]
        if kind in ("part", "rejects"):
            rows = int(pq.ParquetFile(path).metadata.num_rows)
            counts[kind] += rows
        elif kind == "bureau":
            header, cards = read_bureau_file(path)
            rows = sum(1 for _ in cards)
            if rows != header.cards:
                raise ReconciliationError(
                    f"{path} [count]", f"{rows} records, header {header.cards}"
                )
            counts["bureau"] += rows
        else:
            continue
        if "rows" in entry and rows != entry["rows"]:
            raise ReconciliationError(f"{path} [rows]", f"{rows} rows, manifest {entry['rows']}")
    c = manifest["counts"]
    if counts["part"] != c["prepared"] or counts["bureau"] != c["prepared"]:
        raise ReconciliationError(
            "prepared",
            f"parts {counts['part']}, bureau file {counts['bureau']}, manifest {c['prepared']}",
        )
    if counts["rejects"] != c["rejected"] or c["in"] != c["prepared"] + c["rejected"]:
        raise ReconciliationError(
            "rejected", f"rejects file {counts['rejects']}, manifest {c['rejected']} of {c['in']}"
        )
    return counts


def reconcile(
    published: dict[str, Any], settings: Settings, *, store: KeyStore | None = None
) -> dict[str, Any]:
    """Re-count, audit and report a published batch; return the XCom-safe summary."""
    started = time.monotonic()
    bs = batch_settings(settings)
    paths = batch_paths(published["batch_dir"])
    manifest = load_manifest(paths.manifest)
    with opened_store(settings, store) as ks:
        mac_key = verify_manifest_mac(manifest, ks, str(paths.manifest))
        _recount(paths.base, manifest)
        counts = manifest["counts"]
        keys = [dict(k) for k in manifest["keys"]]
        seq = audit_batch(
            ks, bs.actor, "batch.published", paths.batch_id,
            issuer=manifest["issuer"], input_name=manifest["input"]["name"],
            input_sha256=manifest["input"]["sha256"],
            manifest_sha256=sha256_file(paths.manifest),
            records=counts["in"], prepared=counts["prepared"], rejected=counts["rejected"],
            per_product=counts["per_product"], per_reason=counts["per_reason"],
            keys={k["ref"]: k["kcv"] for k in keys},
        )  # fmt: skip
    roles = key_roles(manifest)
    for k in keys:
        k["roles"] = roles.get(k["ref"], [])
    timings = dict(published.get("timings", {}))
    prepare_s = float(timings.get("prepare_seconds", 0) or 0)
    workers = int(timings.get("workers", 0) or 0)
    if prepare_s > 0:
        timings["cards_per_second"] = round(counts["prepared"] / prepare_s, 1)
        if workers:
            timings["cards_per_second_per_worker"] = round(
                counts["prepared"] / prepare_s / workers, 1
            )
    timings["reconcile_seconds"] = round(time.monotonic() - started, 3)
    report = {
        "batch_id": paths.batch_id,
        "issuer": manifest["issuer"],
        "created_at": manifest["created_at"],
        "input": manifest["input"],
        "counts": {k: counts[k] for k in ("in", "prepared", "rejected")},
        "per_product": counts["per_product"],
        "reasons": reason_rows(counts["per_reason"]),
        "timings": timings,
        "keys": keys,
        "products": {
            p: {"version": v["version"], "scheme": v["scheme"], "ca": v["ca"]}
            for p, v in manifest["products"].items()
        },
        "files": manifest["files"],
        "manifest_mac": {"key": str(mac_key), "kcv": manifest["mac"]["kcv"]},
        "audit_seq": seq,
    }
    with opened_store(settings, store) as ks:
        report = seal_report(report, ks, mac_key)
    write_report(paths.report_json, paths.report_html, report)
    if paths.staging.exists():
        shutil.rmtree(paths.staging)
    log.info(
        "batch %s reconciled: %d in = %d prepared + %d rejected; audit event %d; report %s",
        paths.batch_id, counts["in"], counts["prepared"], counts["rejected"], seq,
        paths.report_html,
    )  # fmt: skip
    return {
        "batch_id": paths.batch_id,
        "batch_dir": str(paths.base),
        "manifest": str(paths.manifest),
        "report_json": str(paths.report_json),
        "report_html": str(paths.report_html),
        "bureau_file": str(paths.bureau_file),
        "counts": report["counts"],
        "per_product": counts["per_product"],
        "per_reason": counts["per_reason"],
        "timings": timings,
        "keys": {k["ref"]: k["kcv"] for k in keys},
        "audit_seq": seq,
    }
