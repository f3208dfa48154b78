"""``cardprep verify``: re-check a published batch independently of how it was produced.

Issue 5 "Output": for a holder of the keys, from the files alone:

1. **manifest**: its MAC under the key it names (and that key's KCV);
2. **keys**: every key the manifest lists has that KCV in the key store;
3. **files**: every listed file exists with the recorded size and SHA-256,
   the two reports among them; report.json's own MAC verifies and
   report.html renders from it;
4. **counts**: part rows = bureau records = prepared; rejects rows = rejected;
   in = prepared + rejected, per product and per reason;
5. **every card**: the sealed card data opens under the data key and is bound
   to its batch and input line; its DGI ids/flags equal the clear columns and
   the bureau record; secret DGIs are exactly the profile's encrypted ones;
   the PAN in 5A matches the masked PAN and the keyed token; the certificate
   chain verifies: issuer certificate (90/92/9F32) under the CA public key
   named by the manifest (and 8F), then the ICC certificate (9F46/9F47/9F48)
   under the recovered issuer key over the static data to be authenticated
   recomputed from the card's own records and AFL (EMV Book 2 5.3/6.4; PBOC
   SM2 formats 12/14); the certified key is the card's (ICC key hash column)
   and no ICC key repeats in the batch;
6. **KCVs**: each key set's KCV DGI (9000, 9001 ...) equals the KCVs column,
   and (``rederive``) the card master keys under the TK in 8000/8001 are
   derived again in the key store from the IMKs and must be identical.

Failures are collected (each names the file, the check and, for cards, the
input line) and raised together as one
:class:`~pipeline.errors.VerificationError` (``.failures`` lists them all).

Example:
    >>> verify_batch("var/demo/batches/demo/00ab12cd34ef5678", settings)["ok"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.audit.masking import mask_pan
from pipeline.crypto.emv_certs import verify_icc_certificate, verify_issuer_certificate
from pipeline.crypto.pboc_certs import verify_pboc_icc_certificate, verify_pboc_issuer_certificate
from pipeline.crypto.sm2 import Sm2Verifier
from pipeline.crypto.tlv import decode_tlv
from pipeline.errors import CardprepError, VerificationError
from pipeline.io.manifest import LEGACY_MANIFEST_FORMAT, load_manifest, verify_manifest_mac
from pipeline.io.parts import iter_part_batches
from pipeline.io.paths import sha256_file
from pipeline.io.perso import BureauCard, open_card, read_bureau_file
from pipeline.io.report import REPORT_KINDS, render_html, verify_report_mac
from pipeline.keys.model import KeyRef
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.prep.static_data import static_data_to_authenticate
from pipeline.profiles.loader import load_product, product_path
from pipeline.profiles.model import ProductProfile, Scheme
from pipeline.records.dgi import Dgi
from pipeline.steps.context import batch_paths, batch_settings, opened_store
from pipeline.steps.retention import raise_if_purged

__all__ = ["Failure", "card_tags", "verify_batch"]

log = logging.getLogger(__name__)

MAX_REPORTED = 50


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed check: where (file, and input line for a card), which check, why."""

    where: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where} [{self.check}]: {self.detail}"


@dataclass
class _Run:
    failures: list[Failure] = field(default_factory=list)
    total: int = 0

    def fail(self, where: str, check: str, detail: str) -> None:
        self.total += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(Failure(where, check, detail))


def card_tags(dgis: list[Dgi]) -> tuple[dict[tuple[int, int], bytes], dict[bytes, bytes]]:
    """Records ``{(sfi, record): tag-70 template}`` and every data object in them (first wins).

    A record DGI is ``SFI || record`` (CPS 4.2) with a tag-70 value, never encrypted.

    Example:
        >>> recs, tags = card_tags([Dgi(0x0201, bytes.fromhex("70035A0112"))])
        >>> recs[(2, 1)].hex(), tags[b"\\x5a"].hex()
        ('70035a0112', '12')
    """
    records: dict[tuple[int, int], bytes] = {}
    tags: dict[bytes, bytes] = {}
    for d in dgis:
        sfi, number = d.id >> 8, d.id & 0xFF
        if d.encrypted or not 1 <= sfi <= 30 or number == 0 or d.value[:1] != b"\x70":
            continue
        records[(sfi, number)] = d.value
        for template in decode_tlv(d.value):
            for item in decode_tlv(template.value):
                tags.setdefault(item.tag, item.value)
    return records, tags


@dataclass
class _Product:
    """What verifying one product's cards needs, loaded once."""

    id: str
    profile: ProductProfile
    info: dict[str, Any]
    ca_public: bytes
    ca_exponent: bytes
    issuer_public: bytes
    #: issuer certificate -> (certified key, exponent, issuer identifier digits)
    issuer_cache: dict[bytes, tuple[bytes, bytes, str]] = field(default_factory=dict)
    #: one precomputed SM2 verifier per certified issuer key (PBOC)
    sm2_verifiers: dict[bytes, Sm2Verifier] = field(default_factory=dict)

    def gpo(self, dgis: dict[int, Dgi]) -> tuple[bytes, bytes]:
        """(AIP, AFL) from the product's first GPO DGI (82 || 94)."""
        for spec in self.profile.gpo:
            d = dgis.get(spec.dgi)
            if d is not None:
                items = {t.tag: t.value for t in decode_tlv(d.value)}
                return items.get(b"\x82", b""), items.get(b"\x94", b"")
        raise VerificationError(f"product {self.id}", "no GPO DGI with AIP/AFL on the card")


def _load_product(  # noqa: PLR0917 (internal)
    ks: KeyStore, product: str, info: dict[str, Any], config_dir: Path, run: _Run, where: str
) -> _Product | None:
    profile = load_product(product, config_dir)
    if profile.version != info["version"]:
        run.fail(
            where,
            "profile version",
            f"{product}: manifest v{info['version']}, config v{profile.version}",
        )
    if sha256_file(product_path(product, config_dir)) != info.get("profile_sha256"):
        run.fail(where, "profile digest", f"{product}: the profile file changed since publishing")
    ca = ks.get(KeyRef.parse(info["ca"]["key"]))
    public = (ca.public_key or b"") + (ca.public_exponent or b"")
    if hashlib.sha256(public).hexdigest() != info["ca"]["public_key_sha256"]:
        run.fail(where, "ca key", f"{ca.ref} is not the CA public key the manifest names")
        return None
    issuer = ks.get(KeyRef.parse(info["keys"]["issuer"]))
    return _Product(
        product, profile, info, ca.public_key or b"", ca.public_exponent or b"",
        issuer.public_key or b"",
    )  # fmt: skip


def _check_issuer_identifier(identifier: str, pan: str) -> None:
    """EMV Book 2 5.3 step 8 (and its PBOC twin): the issuer identifier is the PAN's prefix."""
    if not pan.startswith(identifier):
        raise VerificationError(
            "90", f"issuer identifier {identifier} does not match PAN {mask_pan(pan)}"
        )


def _check_chain(p: _Product, tags: dict[bytes, bytes], static: bytes, pan: str) -> bytes:
    """Verify CA -> issuer -> ICC; return the certified ICC public key."""
    index = tags.get(b"\x8f", b"").hex().upper()
    if index != p.info["ca"]["index"]:
        raise VerificationError(
            "8F", f"CA index {index} differs from the manifest's {p.info['ca']['index']}"
        )
    cert = tags.get(b"\x90", b"")
    if p.profile.scheme is Scheme.EMV:
        remainder, exponent = tags.get(b"\x92", b""), tags.get(b"\x9f\x32", b"")
        cache_key = cert + b"|" + remainder + b"|" + exponent
        if cache_key not in p.issuer_cache:
            issuer = verify_issuer_certificate(
                cert, p.ca_public, p.ca_exponent, remainder, exponent
            )
            p.issuer_cache[cache_key] = (
                issuer.modulus, issuer.exponent, issuer.issuer_identifier_digits
            )  # fmt: skip
        modulus, issuer_exp, identifier = p.issuer_cache[cache_key]
        if modulus != p.issuer_public:
            raise VerificationError("90", "certifies a key other than the manifest's issuer key")
        _check_issuer_identifier(identifier, pan)
        icc = verify_icc_certificate(
            tags.get(b"\x9f\x46", b""), modulus, issuer_exp, tags.get(b"\x9f\x48", b""),
            tags.get(b"\x9f\x47", b""), static, pan=pan,
        )  # fmt: skip
        return icc.modulus
    if cert not in p.issuer_cache:
        issuer_sm2 = verify_pboc_issuer_certificate(cert, p.ca_public)
        p.issuer_cache[cert] = (issuer_sm2.public_key, b"", issuer_sm2.issuer_identifier)
    issuer_pub, _, identifier = p.issuer_cache[cert]
    if issuer_pub != p.issuer_public:
        raise VerificationError("90", "certifies a key other than the manifest's issuer key")
    _check_issuer_identifier(identifier, pan)
    verifier = p.sm2_verifiers.get(issuer_pub)
    if verifier is None:
        verifier = p.sm2_verifiers[issuer_pub] = Sm2Verifier(issuer_pub, precompute=True)
    icc_sm2 = verify_pboc_icc_certificate(tags.get(b"\x9f\x46", b""), verifier, static)
    if icc_sm2.pan != pan:
        raise VerificationError(
            "9F46", f"certifies PAN {mask_pan(icc_sm2.pan)}, card has {mask_pan(pan)}"
        )
    return icc_sm2.public_key


def _check_kcvs(  # noqa: PLR0917 (internal)
    ks: KeyStore,
    p: _Product,
    dgis: dict[int, Dgi],
    kcvs: dict[str, str],
    pan: str,
    psn: str | None,
    rederive: bool,
) -> None:
    keys = p.info["keys"]
    tk = KeyRef.parse(keys["tk"])
    for i, spec in enumerate(p.profile.key_sets):
        kcv_dgi, key_dgi = dgis.get(spec.kcv_dgi), dgis.get(spec.dgi)
        if kcv_dgi is None or key_dgi is None:
            raise VerificationError(f"{spec.dgi:04X}", f"key set {spec.name} missing on the card")
        want = b"".join(
            bytes.fromhex(kcvs.get(f"{spec.name}.{role}", ""))
            for role in ("mk_ac", "mk_smi", "mk_smc")
        )
        if kcv_dgi.value != want:
            raise VerificationError(f"{spec.kcv_dgi:04X}", "KCVs differ from the kcvs column")
        if rederive:
            again = [
                ks.derive_and_wrap(KeyRef.parse(keys[f"set{i}.{role}"]), pan, psn,
                                   spec.derivation, tk)
                for role in ("imk_ac", "imk_smi", "imk_smc")
            ]  # fmt: skip
            if b"".join(w.ciphertext for w in again) != key_dgi.value:
                raise VerificationError(
                    f"{spec.dgi:04X}", "card keys differ from a fresh derivation in the key store"
                )
            if b"".join(w.kcv[:3] for w in again) != kcv_dgi.value:
                raise VerificationError(f"{spec.kcv_dgi:04X}", "KCVs differ from the key store's")
    kmc = p.profile.kmc
    if kmc is not None and kmc.kcv_dgi is not None and "kmc.kenc" in kcvs:
        got = dgis.get(kmc.kcv_dgi)
        want = b"".join(bytes.fromhex(kcvs[f"kmc.{r}"]) for r in ("kenc", "kmac", "kdek"))
        if got is None or got.value != want:
            raise VerificationError(f"{kmc.kcv_dgi:04X}", "GP key KCVs differ from the column")


def _check_card(  # noqa: PLR0917 (internal)
    ks: KeyStore,
    p: _Product,
    row: dict[str, Any],
    dgis: list[Dgi],
    rederive: bool,
    seen_icc: set[bytes],
) -> None:
    ids = [d.id for d in dgis]
    flags = [d.encrypted for d in dgis]
    if ids != list(row["dgi_ids"]) or flags != list(row["dgi_encrypted"]):
        raise VerificationError("dgi_ids", "DGI ids/flags differ from the sealed card data")
    expected_enc = p.profile.encrypted_dgis
    for d in dgis:
        if d.encrypted != (d.id in expected_enc):
            raise VerificationError(f"{d.id:04X}", f"encryption flag {d.encrypted} is wrong")
    by_id = {d.id: d for d in dgis}
    records, tags = card_tags(dgis)
    pan = tags.get(b"\x5a", b"").hex().upper().rstrip("F")
    if not pan.isdigit() or mask_pan(pan) != row["masked_pan"]:
        raise VerificationError("5A", f"PAN does not match masked PAN {row['masked_pan']}")
    token = ks.pan_token(KeyRef.parse(p.info["keys"]["pan_token"]), pan)
    if not hmac.compare_digest(token, row["pan_token"]):
        raise VerificationError("pan_token", "differs from the keyed token of the card's PAN")
    aip, afl = p.gpo(by_id)
    static = static_data_to_authenticate(afl, records, tags.get(b"\x9f\x4a"), aip)
    icc_key = _check_chain(p, tags, static, pan)
    digest = hashlib.sha256(icc_key).hexdigest()
    if digest != row["icc_pk_sha256"]:
        raise VerificationError("icc_pk_sha256", "certified ICC key differs from the column")
    short = bytes.fromhex(digest[:32])
    if short in seen_icc:
        raise VerificationError("icc_pk_sha256", "ICC key pair used by another card")
    seen_icc.add(short)
    psn_value = tags.get(b"\x5f\x34")
    psn = psn_value.hex() if psn_value else None
    _check_kcvs(ks, p, by_id, json.loads(row["kcvs"]), pan, psn, rederive)


def _skip(cards: Iterator[BureauCard], n: int) -> Iterator[BureauCard]:
    """Advance the bureau records past a part whose contents are not read."""
    try:
        for _ in range(n):
            next(cards, None)
    except VerificationError:
        return iter(())
    return cards


def _part_rows(path: Path) -> Iterator[dict[str, Any]]:
    for cols in iter_part_batches(path, 512):
        for i in range(len(cols["line_no"])):
            yield {k: v[i] for k, v in cols.items()}


def _check_files(base: Path, manifest: dict[str, Any], run: _Run) -> set[str]:
    """Size and SHA-256 of every listed file; returns the paths that failed (contents unread)."""
    bad: set[str] = set()
    for entry in manifest.get("files", []):
        path = base / entry["path"]
        if not path.exists():
            run.fail(str(path), "exists", "listed in the manifest but missing")
            bad.add(entry["path"])
            continue
        if path.stat().st_size != entry["size"]:
            run.fail(str(path), "size", f"{path.stat().st_size} bytes, manifest {entry['size']}")
            bad.add(entry["path"])
        if sha256_file(path) != entry["sha256"]:
            run.fail(str(path), "sha256", "differs from the manifest")
            bad.add(entry["path"])
    return bad


#: What a published batch directory holds besides the files its manifest lists.
_UNLISTED_OK_DIRS = frozenset({"staging", "superseded"})  # an unreconciled run; a forced re-run


def _check_unlisted(base: Path, manifest: dict[str, Any], run: _Run) -> None:
    """Every output file of the batch is one the manifest lists (nothing slipped in beside them).

    Allowed besides: ``manifest.json``, lock files (``.lock``, ``parts/.part-N.lock``),
    each shard's intermediate ``parts/part-N.rejects.parquet`` (its rows are in
    the listed ``rejects.parquet``), the ``staging/`` and ``superseded/``
    directories, and a format-1 manifest's reports (written after it).  A
    Parquet part or bureau file that is not listed would be picked up by
    anyone globbing the directory, unverified.
    """
    listed = {str(f["path"]) for f in manifest.get("files", [])}
    if manifest.get("format") == LEGACY_MANIFEST_FORMAT:  # reports written after the manifest
        listed |= {"report.json", "report.html"}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_dir() or rel.parts[0] in _UNLISTED_OK_DIRS or path.name.startswith("."):
            continue
        name = rel.as_posix()
        if name in listed or name == "manifest.json":
            continue
        if rel.parent.name == "parts" and path.name.endswith(".rejects.parquet"):
            continue
        run.fail(str(path), "unlisted", "in the batch but not in its manifest")


def _check_report(  # noqa: PLR0917 (internal)
    ks: KeyStore, base: Path, manifest: dict[str, Any], run: _Run, where: str, bad: set[str]
) -> None:
    """Both reports listed in the manifest (format 2); report.json's MAC; report.html from it.

    Their presence, size and SHA-256 are :func:`_check_files`' (a listed file);
    a format-1 manifest (reports written after it) has them optional.
    """
    json_path, html_path = base / "report.json", base / "report.html"
    listed = {f["kind"]: f["path"] for f in manifest.get("files", []) if f["kind"] in REPORT_KINDS}
    if manifest.get("format") != LEGACY_MANIFEST_FORMAT:
        expected = {REPORT_KINDS[0]: json_path.name, REPORT_KINDS[1]: html_path.name}
        if listed != expected:
            run.fail(where, "report", f"the manifest lists reports {listed}, expected {expected}")
            return
        if bad & set(listed.values()):
            return  # missing or not the published bytes: already a failure, not read
    elif not json_path.exists():
        return
    try:
        report = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        run.fail(str(json_path), "report", "not a JSON object")
        return
    if not verify_report_mac(ks, report):
        run.fail(str(json_path), "report mac", "MAC missing or does not verify")
    if not html_path.exists() or html_path.read_text(encoding="utf-8") != render_html(report):
        run.fail(str(html_path), "report", "does not match report.json")


def _check_keys(ks: KeyStore, manifest: dict[str, Any], run: _Run, where: str) -> None:
    for k in manifest.get("keys", []):
        try:
            kcv = ks.get(KeyRef.parse(k["ref"])).kcv.hex().upper()
        except CardprepError as exc:
            run.fail(where, "key", f"{k['ref']}: {exc}")
            continue
        if kcv != str(k["kcv"]).upper():
            run.fail(where, "key kcv", f"{k['ref']} has KCV {kcv}, manifest says {k['kcv']}")


def _check_counts(
    base: Path, manifest: dict[str, Any], run: _Run, where: str, bad: set[str]
) -> None:
    counts = manifest["counts"]
    if counts["in"] != counts["prepared"] + counts["rejected"]:
        run.fail(where, "counts", "in != prepared + rejected")
    rejects = [f["path"] for f in manifest["files"] if f["kind"] == "rejects"]
    if any(p in bad for p in rejects):
        return  # its hash failed: reading it could only add noise (or crash)
    reasons: Counter[str] = Counter()
    per_product_rej: Counter[str] = Counter()
    for rel in rejects:
        try:
            table = pq.read_table(base / rel, columns=["code", "product"])
        except (OSError, pa.ArrowException) as exc:
            run.fail(str(base / rel), "parquet", f"unreadable ({type(exc).__name__})")
            return
        reasons.update(table.column("code").to_pylist())
        per_product_rej.update(p or "(none)" for p in table.column("product").to_pylist())
    if dict(reasons) != counts["per_reason"]:
        run.fail(
            where,
            "reasons",
            f"rejects file {dict(sorted(reasons.items()))}, manifest {counts['per_reason']}",
        )
    for product, c in counts["per_product"].items():
        if c["in"] != c["prepared"] + c["rejected"]:
            run.fail(where, "counts", f"{product}: in != prepared + rejected")
        if per_product_rej.get(product, 0) != c["rejected"]:
            run.fail(
                where,
                "counts",
                f"{product}: {per_product_rej.get(product, 0)} rejects in "
                f"the file, manifest {c['rejected']}",
            )


def verify_batch(
    batch_dir: str | Path,
    settings: Settings,
    *,
    store: KeyStore | None = None,
    cards: bool = True,
    rederive: bool = True,
) -> dict[str, Any]:
    """Verify a published batch (see the module docstring); return a summary dict.

    Raises :class:`~pipeline.errors.VerificationError` (``.failures``: every
    failure found, up to 50) when any check fails, and its subclass
    :class:`~pipeline.errors.BatchPurgedError` when retention purged the
    batch (manifest MAC verified, purge backed by the audit trail).
    """
    started = time.monotonic()
    bs = batch_settings(settings)
    paths = batch_paths(batch_dir)
    base, where = paths.base, str(paths.manifest)
    manifest = load_manifest(paths.manifest)
    run = _Run()
    checked = 0
    with opened_store(settings, store) as ks:
        mac_key = verify_manifest_mac(manifest, ks, where)
        raise_if_purged(paths, ks)  # outputs gone on purpose: BatchPurgedError, not "missing"
        _check_keys(ks, manifest, run, where)
        bad = _check_files(base, manifest, run)
        _check_unlisted(base, manifest, run)
        _check_counts(base, manifest, run, where, bad)
        _check_report(ks, base, manifest, run, where, bad)
        if cards:
            checked = _check_cards(ks, paths, manifest, bs.config_dir, run, rederive, bad)
    elapsed = round(time.monotonic() - started, 3)
    if run.failures:
        first = run.failures[0]
        more = f" (+{run.total - 1} more failures)" if run.total > 1 else ""
        err = VerificationError(f"{first.where} [{first.check}]", first.detail + more)
        err.failures = list(run.failures)  # type: ignore[attr-defined]
        log.error("batch %s: verification FAILED, %d failure(s)", paths.batch_id, run.total)
        raise err
    log.info(
        "batch %s verified: MAC, files, counts, %d cards in %.2f s",
        paths.batch_id,
        checked,
        elapsed,
    )
    return {
        "batch_id": paths.batch_id,
        "batch_dir": str(base),
        "ok": True,
        "manifest_mac_key": str(mac_key),
        "files": len(manifest["files"]),
        "cards_checked": checked,
        "counts": {k: manifest["counts"][k] for k in ("in", "prepared", "rejected")},
        "seconds": elapsed,
    }


def _check_cards(  # noqa: PLR0917 (internal)
    ks: KeyStore,
    paths: Any,
    manifest: dict[str, Any],
    config_dir: Path,
    run: _Run,
    rederive: bool,
    bad: set[str],
) -> int:
    base, where = paths.base, str(paths.manifest)
    products: dict[str, _Product | None] = {}
    for product, info in manifest["products"].items():
        try:
            products[product] = _load_product(ks, product, info, config_dir, run, where)
        except CardprepError as exc:
            run.fail(where, "product", f"{product}: {exc}")
            products[product] = None
    bureau_entries = [f for f in manifest["files"] if f["kind"] == "bureau"]
    bureau: Iterator[BureauCard] = iter(())
    bureau_path = base / bureau_entries[0]["path"] if bureau_entries else None
    if bureau_path is not None and bureau_path.exists():
        try:
            _, bureau = read_bureau_file(bureau_path)
        except VerificationError as exc:
            run.fail(str(bureau_path), "header", exc.detail)
    seen_icc: set[bytes] = set()
    checked = 0
    for entry in (f for f in manifest["files"] if f["kind"] == "part"):
        part = base / entry["path"]
        if entry["path"] in bad:
            bureau = _skip(bureau, int(entry.get("rows", 0)))
            continue
        try:
            for row in _part_rows(part):
                checked += 1
                line = int(row["line_no"])
                at = f"{part} line {line}"
                try:
                    card = next(bureau, None)
                except VerificationError as exc:
                    run.fail(str(bureau_path), exc.field, exc.detail)
                    bureau, card = iter(()), None
                if card is None:
                    run.fail(str(bureau_path), "bureau record", f"no record for input line {line}")
                elif (card.line_no, card.product, card.masked_pan, card.sealed) != (
                    line,
                    row["product"],
                    row["masked_pan"],
                    row["card_data"],
                ) or [i for i, _ in card.dgis] != list(row["dgi_ids"]):
                    run.fail(
                        str(bureau_path),
                        "bureau record",
                        f"record {card.seq} differs from the part row of input line {line}",
                    )
                if row["batch_id"] != paths.batch_id:
                    run.fail(at, "batch id", f"row belongs to batch {row['batch_id']}")
                try:
                    product, dgis = open_card(
                        ks, row["card_data"], batch_id=paths.batch_id, line_no=line, where=at
                    )
                    if product != row["product"]:
                        raise VerificationError(
                            "product", f"sealed {product}, row {row['product']}"
                        )
                    p = products.get(product)
                    if p is None:
                        raise VerificationError("product", f"{product} not verifiable (see above)")
                    _check_card(ks, p, row, dgis, rederive, seen_icc)
                except CardprepError as exc:
                    check = (
                        exc.field.rsplit("[", 1)[-1].rstrip("]") if "[" in exc.field else exc.field
                    )
                    run.fail(at, check, exc.detail)
        except (OSError, pa.ArrowException) as exc:
            run.fail(str(part), "parquet", f"unreadable ({type(exc).__name__})")

    try:
        extra = next(bureau, None)
    except VerificationError as exc:
        run.fail(str(bureau_path), exc.field, exc.detail)
        extra = None
    if extra is not None:
        run.fail(str(bureau_path), "bureau record", f"record {extra.seq} has no part row")
    return checked
