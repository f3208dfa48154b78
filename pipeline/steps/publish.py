"""Step 5 (DAG task ``publish``): reconcile, then the bureau file, rejects and the manifest, last.

DESIGN.md step 5 and issue 5 "Output":

1. Under the batch lock, a published batch is refused unless ``force``
   (audited; see :func:`pipeline.steps.parse.refuse_or_supersede`).
2. The shard results must cover the valid records ``[0, valid)`` exactly,
   and every planned part must exist with matching metadata: publish derives
   everything from the parts on disk, never from memory, so a re-run after a
   crash publishes exactly the cards that were written, once.  Parts left
   over from an older plan are removed.
3. **Reconciliation before anything is published**: records in = prepared +
   rejected, per product, and every input line appears exactly once among
   prepared cards and rejects (a bitmap over line numbers).  Otherwise
   :class:`~pipeline.errors.ReconciliationError` and nothing is written.
4. The bureau personalization file (:mod:`pipeline.io.perso`), the merged
   rejects (Parquet + CSV), the batch report (``report.json`` with its own
   MAC, ``report.html`` rendered from it; :mod:`pipeline.io.report`), then
   ``manifest.json``: counts, SHA-256 and size of every file *including both
   reports*, label/version/KCV of every key used, profile ids/versions and
   their file digests, the CA key of each product, layout, input SHA-256,
   created_at, software version; sealed with a MAC under a key derived from
   the TK (:mod:`pipeline.io.manifest`) and written atomically *last*.  It is
   the commit marker: a kill before it leaves an unpublished batch (the
   re-run writes every output again), a kill after it a published batch whose
   files are all complete and hashed; no step rewrites a listed file.
5. The issuer's delivery index (:mod:`pipeline.io.deliveries`) marks the
   file's delivery (header issuer id, file date, file sequence) published.

Example:
    >>> published = publish(parsed, shard_results, settings)   # doctest: +SKIP
    >>> c = published["counts"]                                 # doctest: +SKIP
    >>> c["in"] == c["prepared"] + c["rejected"]                # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import pipeline
from pipeline.errors import CardprepError, ConfigError, PublishError, ReconciliationError
from pipeline.io.deliveries import PUBLISHED, Delivery, record_delivery
from pipeline.io.lock import exclusive_lock
from pipeline.io.manifest import MANIFEST_FORMAT, seal_manifest, write_manifest
from pipeline.io.parts import iter_part_record_batches, read_part_metadata
from pipeline.io.paths import BatchPaths, sha256_file
from pipeline.io.perso import BureauFileWriter, BureauHeader, dgi_fields
from pipeline.io.rejects import merge_reject_files
from pipeline.io.report import REPORT_KINDS, build_report, seal_report, write_report
from pipeline.keys.model import KeyAlgorithm, KeyRecord, KeyRef, KeyRole
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.profiles.loader import load_product, product_path
from pipeline.steps.context import batch_paths, batch_settings, opened_store
from pipeline.steps.parse import refuse_or_supersede

__all__ = ["find_ca_key", "publish", "reconcile_lines"]

log = logging.getLogger(__name__)

#: the part columns a bureau file's D records are made of (not the PAN token, KCVs ...)
_BUREAU_COLUMNS = ("line_no", "product", "masked_pan", "dgi_ids", "dgi_encrypted", "card_data")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_plan(
    parsed: dict[str, Any], shard_results: list[dict[str, Any]], paths: BatchPaths
) -> list[dict[str, Any]]:
    """Shard results sorted by start, covering [0, valid) with parts whose metadata agrees."""
    ordered = sorted(shard_results, key=lambda r: int(r["start"]))
    expected_start = 0
    for i, result in enumerate(ordered):
        if int(result["index"]) != i or int(result["start"]) != expected_start:
            raise ReconciliationError(
                f"shard {result['index']}",
                f"starts at {result['start']}, expected shard {i} at {expected_start}",
            )
        if result.get("batch_id") != paths.batch_id:
            raise ReconciliationError(f"shard {i}", f"belongs to batch {result.get('batch_id')}")
        part = paths.part(i)
        if not part.exists() or not paths.part_rejects(i).exists():
            raise ReconciliationError(str(part), "planned part or its rejects file is missing")
        meta = read_part_metadata(part)
        for key in ("start", "end"):
            if int(meta.get(key, -1)) != int(result[key]):
                raise ReconciliationError(
                    f"{part} [plan]",
                    f"{key} {meta.get(key)} differs from the shard's {result[key]}",
                )
        if meta.get("rows") != int(result["prepared"]):
            raise ReconciliationError(
                f"{part} [rows]", f"{meta.get('rows')} rows, shard says {result['prepared']}"
            )
        expected_start = int(result["end"])
    if expected_start != int(parsed["valid"]):
        raise ReconciliationError(
            "shards", f"cover {expected_start} valid records, the batch has {parsed['valid']}"
        )
    return ordered


def _remove_stale_parts(paths: BatchPaths, planned: int) -> list[str]:
    removed: list[str] = []
    if not paths.parts.is_dir():
        return removed
    for path in sorted(paths.parts.glob("part-*.parquet")):
        stem = path.name.split(".", 1)[0]
        try:
            index = int(stem.split("-", 1)[1])
        except ValueError:
            continue
        if index >= planned:
            path.unlink()
            removed.append(path.name)
    return removed


def reconcile_lines(records: int, line_sources: list[tuple[str, list[int]]]) -> None:
    """Every input line exactly once: ``records`` distinct lines across all sources.

    ``line_sources`` are (file name, line numbers) chunks; a bitmap keeps
    memory at one bit per line.

    Example:
        >>> reconcile_lines(3, [("a", [2, 4]), ("b", [3])])
        >>> reconcile_lines(2, [("a", [2]), ("b", [2])])
        Traceback (most recent call last):
        ...
        pipeline.errors.ReconciliationError: b [duplicate line]: input line 2 appears twice
    """
    seen = bytearray(records // 8 + 2)
    count = 0
    for where, lines in line_sources:
        for line in lines:
            if line < 1 or line >= 8 * len(seen):
                seen.extend(bytes(line // 8 + 1 - len(seen) + 1))
            byte, bit = divmod(line, 8)
            if seen[byte] >> bit & 1:
                raise ReconciliationError(
                    f"{where} [duplicate line]", f"input line {line} appears twice"
                )
            seen[byte] |= 1 << bit
            count += 1
    if count != records:
        raise ReconciliationError(
            "lines", f"{count} input lines accounted for, the file has {records} records"
        )


def _line_sources(paths: BatchPaths, ordered: list[dict[str, Any]]) -> Any:
    yield from (
        (paths.parse_rejects.name, [int(x) for x in chunk.column("line_no").to_pylist()])
        for chunk in pq.ParquetFile(paths.parse_rejects).iter_batches(
            batch_size=65536, columns=["line_no"]
        )
    )
    for r in ordered:
        for path in (paths.part(int(r["index"])), paths.part_rejects(int(r["index"]))):
            for chunk in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=["line_no"]):
                yield path.name, [int(x) for x in chunk.column("line_no").to_pylist()]


def _counts(parsed: dict[str, Any], ordered: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per product and reason; ReconciliationError when in != prepared + rejected."""
    prepared: Counter[str] = Counter()
    prep_rejected: Counter[str] = Counter()
    reasons: Counter[str] = Counter(parsed["reasons"])
    for r in ordered:
        prepared.update(r["prepared_per_product"])
        prep_rejected.update(r["rejected_per_product"])
        reasons.update(r["reasons"])
    valid_pp: dict[str, int] = dict(parsed["valid_per_product"])
    parse_rej: dict[str, int] = dict(parsed["rejected_per_product"])
    per_product: dict[str, dict[str, int]] = {}
    for product in sorted(set(valid_pp) | set(parse_rej) | set(prepared) | set(prep_rejected)):
        valid = valid_pp.get(product, 0)
        if prepared[product] + prep_rejected[product] != valid:
            raise ReconciliationError(
                f"product {product}",
                f"{valid} valid records != {prepared[product]} prepared + "
                f"{prep_rejected[product]} rejected at prepare",
            )
        rejected = parse_rej.get(product, 0) + prep_rejected[product]
        per_product[product] = {
            "in": valid + parse_rej.get(product, 0),
            "prepared": prepared[product],
            "rejected": rejected,
        }
    total_in = int(parsed["records"])
    total_prepared = sum(prepared.values())
    total_rejected = int(parsed["rejected"]) + sum(prep_rejected.values())
    if total_in != total_prepared + total_rejected or sum(reasons.values()) != total_rejected:
        raise ReconciliationError(
            "batch",
            f"records in {total_in} != prepared {total_prepared} + rejected {total_rejected}",
        )
    return {
        "in": total_in,
        "prepared": total_prepared,
        "rejected": total_rejected,
        "rejected_at_validation": int(parsed["rejected"]),
        "rejected_at_prepare": sum(prep_rejected.values()),
        "per_product": per_product,
        "per_reason": dict(sorted(reasons.items())),
    }


def find_ca_key(store: KeyStore, issuer: KeyRecord) -> KeyRecord | None:
    """The store's CA key (role CA_SIGNING) under which ``issuer``'s certificate verifies."""
    from pipeline.crypto.emv_certs import verify_issuer_certificate  # noqa: PLC0415
    from pipeline.crypto.pboc_certs import verify_pboc_issuer_certificate  # noqa: PLC0415

    cert = issuer.certificate
    if cert is None:
        return None
    for record in store.list():
        if record.role is not KeyRole.CA_SIGNING or record.public_key is None:
            continue
        if record.algorithm is not issuer.algorithm:
            continue
        try:
            if record.algorithm is KeyAlgorithm.RSA:
                verify_issuer_certificate(
                    cert.certificate,
                    record.public_key,
                    record.public_exponent or b"",
                    cert.remainder,
                    cert.exponent,
                )
            else:
                verify_pboc_issuer_certificate(cert.certificate, record.public_key)
        except CardprepError:
            continue
        return record
    return None


def _products(
    store: KeyStore, ordered: list[dict[str, Any]], config_dir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """Per product: profile version + file digest, key refs, CA; and every key's KCV."""
    keys: dict[str, dict[str, str]] = {}
    kcvs: dict[str, str] = {}
    for r in ordered:
        for product, refs in r["keys"].items():
            if keys.setdefault(product, refs) != refs:
                raise ReconciliationError(
                    f"product {product}", f"shards used different keys (shard {r['index']})"
                )
        kcvs.update(r["kcvs"])
    products: dict[str, Any] = {}
    for product in sorted(keys):
        profile = load_product(product, config_dir)
        issuer = store.get(KeyRef.parse(keys[product]["issuer"]))
        ca = find_ca_key(store, issuer)
        if ca is None:
            raise PublishError(
                f"product {product}", f"no CA key in the store certifies issuer key {issuer.ref}"
            )
        kcvs[str(ca.ref)] = ca.kcv.hex().upper()
        public = (ca.public_key or b"") + (ca.public_exponent or b"")
        products[product] = {
            "version": profile.version,
            "scheme": profile.scheme.value,
            "profile_sha256": sha256_file(product_path(product, config_dir)),
            "keys": keys[product],
            "ca": {
                "rid": profile.ca.rid.hex().upper(),
                "index": profile.ca.index.hex().upper(),
                "key": str(ca.ref),
                "algorithm": ca.algorithm.value,
                "public_key_sha256": hashlib.sha256(public).hexdigest(),
            },
            "prepared": sum(int(x["prepared_per_product"].get(product, 0)) for x in ordered),
        }
    return products, dict(sorted(kcvs.items()))


def _file_entry(
    path: Path, base: Path, kind: str, rows: int | None = None, *, sha256: str | None = None
) -> dict[str, Any]:
    """The manifest's entry of ``path`` (its SHA-256 read from disk unless ``sha256`` is given)."""
    entry: dict[str, Any] = {
        "path": str(path.relative_to(base)),
        "kind": kind,
        "size": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else sha256_file(path),
    }
    if rows is not None:
        entry["rows"] = rows
    return entry


def publish(
    parsed: dict[str, Any],
    shard_results: list[dict[str, Any]],
    settings: Settings,
    force: bool = False,
    *,
    store: KeyStore | None = None,
) -> dict[str, Any]:
    """Publish a prepared batch (see the module docstring); return its XCom-safe summary."""
    started = time.monotonic()
    bs = batch_settings(settings).for_bureau(str(parsed.get("bureau", "")) or "-")
    paths = batch_paths(parsed["batch_dir"])
    if paths.batch_id != parsed["batch_id"]:
        raise ConfigError("batch_dir", f"{paths.base} is not batch {parsed['batch_id']}")
    with exclusive_lock(paths.lock, f"batch {paths.batch_id}", wait=bs.lock_wait), \
            opened_store(settings, store) as ks:  # fmt: skip
        refuse_or_supersede(paths, force=force, store=ks, bs=bs, reason="publish")
        ordered = _check_plan(parsed, shard_results, paths)
        removed = _remove_stale_parts(paths, len(ordered))
        if removed:
            log.warning("batch %s: removed parts of an older plan: %s", paths.batch_id, removed)
        counts = _counts(parsed, ordered)
        reconcile_lines(int(parsed["records"]), list(_line_sources(paths, ordered)))
        products, kcvs = _products(ks, ordered, bs.config_dir)
        manifest_key = ks.active(bs.manifest_key)
        kcvs[str(manifest_key)] = ks.get(manifest_key).kcv.hex().upper()
        data_key = ordered[0]["data_key"] if ordered else str(ks.active(bs.data_key))
        kcvs.setdefault(data_key, ks.get(KeyRef.parse(data_key)).kcv.hex().upper())
        created = _utc_now()
        files = _write_outputs(paths, parsed, ordered, products, kcvs, data_key, created)
        manifest = {
            "format": MANIFEST_FORMAT,
            "batch_id": paths.batch_id,
            "issuer": parsed["issuer"],
            "bureau": parsed.get("bureau"),
            "created_at": created,
            "software": {"name": "cardprep", "version": pipeline.__version__},
            "input": {
                "name": parsed["input_name"],
                "sha256": parsed["input_sha256"],
                "size": parsed["input_size"],
                "layout": parsed["layout"],
                "records": parsed["records"],
                "hash_total_check": parsed.get("input_hash_check", "matched the trailer"),
                "batch_date": parsed["batch_date"],
            },
            "counts": counts,
            "shards": [
                {k: r[k] for k in ("index", "start", "end", "prepared", "rejected")}
                for r in ordered
            ],
            "products": products,
            "keys": [
                {
                    "ref": ref,
                    "label": KeyRef.parse(ref).label,
                    "version": KeyRef.parse(ref).version,
                    "kcv": kcv,
                }
                for ref, kcv in sorted(kcvs.items())
            ],
            "data_key": data_key,
            "files": files,
        }
        timings = _timings(parsed, ordered, started)
        report = build_report(manifest, timings, str(manifest_key), kcvs[str(manifest_key)])
        write_report(paths.report_json, paths.report_html, seal_report(report, ks, manifest_key))
        for path, kind in zip((paths.report_json, paths.report_html), REPORT_KINDS, strict=True):
            files.append(_file_entry(path, paths.base, kind))
        sealed = seal_manifest(manifest, ks, manifest_key)
        write_manifest(paths.manifest, sealed)
        _mark_delivery_published(paths, parsed)
    log.info(
        "batch %s published: %d in, %d prepared, %d rejected %s; manifest MAC under %s kcv=%s",
        paths.batch_id,
        counts["in"],
        counts["prepared"],
        counts["rejected"],
        counts["per_reason"],
        manifest_key,
        kcvs[str(manifest_key)],
    )
    return {
        "batch_id": paths.batch_id,
        "issuer": parsed["issuer"],
        "batch_dir": str(paths.base),
        "manifest": str(paths.manifest),
        "manifest_sha256": sha256_file(paths.manifest),
        "bureau_file": str(paths.bureau_file),
        "rejects_csv": str(paths.rejects_csv),
        "counts": {k: counts[k] for k in ("in", "prepared", "rejected")},
        "per_product": counts["per_product"],
        "per_reason": counts["per_reason"],
        "keys": {ref: kcv for ref, kcv in sorted(kcvs.items())},
        "manifest_key": str(manifest_key),
        "report_json": str(paths.report_json),
        "report_html": str(paths.report_html),
        "timings": report["timings"],
    }


def _mark_delivery_published(paths: BatchPaths, parsed: dict[str, Any]) -> None:
    """Record in the issuer's delivery index that this batch published its delivery.

    After the manifest (the commit marker), so it must not fail the publish:
    the parse step already recorded this batch as the delivery's holder, and
    the duplicate check reads a holder with a manifest as published anyway.
    The ``published`` state only outlives a batch directory removed by hand.
    """
    delivery = Delivery.from_json(parsed.get("delivery"))
    if delivery is None:
        return
    try:
        record_delivery(paths, delivery, state=PUBLISHED, input_name=str(parsed["input_name"]))
    except (CardprepError, OSError) as exc:
        log.error("batch %s: published, but the delivery index was not updated: %s",
                  paths.batch_id, exc)  # fmt: skip


def _timings(
    parsed: dict[str, Any], ordered: list[dict[str, Any]], started: float
) -> dict[str, Any]:
    """Step timings for the report (publish measured up to the report, which it is part of)."""
    return {
        "parse_seconds": parsed.get("seconds", 0),
        "prepare_seconds": round(sum(float(r.get("seconds", 0)) for r in ordered), 3),
        "publish_seconds": round(time.monotonic() - started, 3),
        "workers": max((int(r.get("workers", 1)) for r in ordered), default=0),
        "shards": len(ordered),
        "resumed_shards": sum(1 for r in ordered if r.get("resumed")),
    }


def _write_outputs(  # noqa: PLR0917 (internal)
    paths: BatchPaths,
    parsed: dict[str, Any],
    ordered: list[dict[str, Any]],
    products: dict[str, Any],
    kcvs: dict[str, str],
    data_key: str,
    created: str,
) -> list[dict[str, Any]]:
    """Write the bureau file and the merged rejects; return the manifest's file entries."""
    base = paths.base
    tk_refs = sorted({p["keys"]["tk"] for p in products.values()})
    total = sum(int(r["prepared"]) for r in ordered)
    header = BureauHeader(
        batch_id=paths.batch_id,
        issuer=str(parsed["issuer"]),
        cards=total,
        created_at=created,
        seal_key=data_key,
        seal_kcv=kcvs[data_key],
        tks=tuple((ref, kcvs[ref]) for ref in tk_refs),
    )
    paths.bureau_file.parent.mkdir(parents=True, exist_ok=True)
    tk_of = {product: p["keys"]["tk"] for product, p in products.items()}
    part_paths = [paths.part(int(r["index"])) for r in ordered]
    # the parts are final: hashed on a background thread (hashlib releases the GIL) while
    # this one formats the bureau file, whose writer hashes what it writes (issue 7)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-sha256") as hashing:
        part_sha256 = [hashing.submit(sha256_file, path) for path in part_paths]
        with BureauFileWriter(paths.bureau_file, header) as writer:
            for part_path in part_paths:
                for batch in iter_part_record_batches(part_path, columns=_BUREAU_COLUMNS):
                    column = batch.column
                    writer.write_many(
                        (line_no, product, masked, tk_of[product], field, sealed)
                        for line_no, product, masked, field, sealed in zip(
                            column("line_no").to_pylist(), column("product").to_pylist(),
                            column("masked_pan").to_pylist(),
                            dgi_fields(column("dgi_ids"), column("dgi_encrypted")),
                            column("card_data").to_pylist(), strict=True,
                        )
                    )  # fmt: skip
        sources = [paths.parse_rejects] + [paths.part_rejects(int(r["index"])) for r in ordered]
        reason_counts = merge_reject_files(sources, paths.rejects_parquet, paths.rejects_csv)
        rejected = sum(reason_counts.values())
        files = [
            _file_entry(path, base, "part", int(r["prepared"]), sha256=digest.result())
            for path, r, digest in zip(part_paths, ordered, part_sha256, strict=True)
        ]
    files.append(_file_entry(paths.bureau_file, base, "bureau", total, sha256=writer.sha256))
    files.append(_file_entry(paths.rejects_parquet, base, "rejects", rejected))
    files.append(_file_entry(paths.rejects_csv, base, "rejects-csv", rejected))
    return files
