"""``cardprep run | verify | inspect | demo``: batches from the command line (issue 5).

* ``run``: one issuer file -> a published, verified batch (the same steps as the DAG).
* ``verify``: re-check a published batch independently (manifest MAC, hashes,
  counts, every certificate chain, KCVs); a batch retention purged exits 3
  with when and which audit event, not "files missing".
* ``inspect``: show a batch's manifest, or one card's DGIs (ids, lengths,
  flags); the PAN stays masked unless ``--reveal`` in the demo environment.
* ``demo``: initialise the demo key store if needed, write a sample file, run
  it, verify it and print the summary and the report's path.

Output never contains a full PAN (except ``inspect --reveal`` in demo) or key
material: counts, ``label@vN`` and KCVs.

Example:
    $ cardprep demo --cards 3000
    $ cardprep run --issuer demo --file var/demo/inbound/demo/demo.dat --workers 2
    $ cardprep verify var/demo/batches/demo/<batch id>
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import BatchPurgedError, ConfigError, VerificationError
from pipeline.io.manifest import load_manifest, verify_manifest_mac
from pipeline.io.parts import iter_part_batches
from pipeline.io.perso import open_card
from pipeline.keys.settings import Settings, load_settings
from pipeline.keys.store import KeyStore

__all__ = ["EXIT_PURGED", "format_summary", "register"]

#: ``cardprep verify`` exit status of a batch retention purged (0 ok, 1 failed, 2 error).
EXIT_PURGED = 3


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--settings", type=Path, default=None, help="settings file (default: config/settings.yaml)"
    )


def register(subparsers: Any) -> None:
    """Add the ``run``, ``verify``, ``inspect`` and ``demo`` commands."""
    p = subparsers.add_parser(
        "run",
        help="prepare one issuer file: parse, prepare, publish, reconcile",
        description="Turn an issuer file into a published batch (Parquet parts, bureau "
        "personalization file, rejects, MACed manifest, report). A published batch, or "
        "a re-sent delivery (same header issuer id, file date and file_seq as another "
        "batch, docs/INPUT.md), is refused unless --force.",
    )
    p.add_argument("--issuer", required=True, help="issuer id (config/issuers/<id>.yaml)")
    p.add_argument("--file", required=True, type=Path, help="the issuer's input file")
    p.add_argument("--shard-size", type=_positive, default=None, help="valid records per shard")
    p.add_argument("--workers", type=_positive, default=None, help="processes (default: cores)")
    p.add_argument(
        "--force",
        action="store_true",
        help="prepare a published batch or a re-sent delivery again (audited)",
    )
    p.add_argument("--dry-run", action="store_true", help="verify and validate only")
    p.add_argument("--batch-date", type=_date, default=None, metavar="YYYY-MM-DD")
    _settings_arg(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "verify",
        help="re-check a published batch (MAC, hashes, counts, certificates, KCVs)",
        description="Verify a published batch independently of how it was produced.",
    )
    p.add_argument("batch_dir", type=Path, help="<storage>/batches/<issuer>/<batch id>")
    p.add_argument("--no-cards", action="store_true", help="skip the per-card checks")
    p.add_argument(
        "--no-rederive", action="store_true", help="do not re-derive card keys in the key store"
    )
    _settings_arg(p)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser(
        "inspect",
        help="show a batch's manifest or one card's DGIs",
        description="Show a published batch, or with --card one card's DGIs (ids, lengths, "
        "encryption flags). --reveal prints the PAN and DGI values, only in the demo "
        "environment.",
    )
    p.add_argument("batch_dir", type=Path)
    p.add_argument("--card", type=_positive, default=None, metavar="LINE", help="input line")
    p.add_argument("--reveal", action="store_true", help="demo only: show PAN and DGI values")
    _settings_arg(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "demo",
        help="demo: sample file -> prepared batch -> verify -> report",
        description="Initialise the demo key store (TEST keys) if needed, write a sample "
        "issuer file, prepare, publish and verify it, and print the summary.",
    )
    p.add_argument("--cards", type=_positive, default=3000, help="cards in the sample file")
    p.add_argument("--errors", type=float, default=0.01, metavar="RATE", help="injected errors")
    p.add_argument("--seed", type=int, default=None, help="sample seed")
    p.add_argument("--shard-size", type=_positive, default=None)
    p.add_argument("--workers", type=_positive, default=None)
    _settings_arg(p)
    p.set_defaults(func=cmd_demo)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A short text summary of a batch (counts, reasons, throughput, keys, report).

    Example:
        >>> print(format_summary({"batch_id": "00ab", "counts": {"in": 2, "prepared": 1,
        ...     "rejected": 1}, "per_product": {}, "per_reason": {"R001": 1}}))
        batch 00ab: 2 records in = 1 prepared + 1 rejected
          rejected R001: 1
    """
    c = summary["counts"]
    lines = [
        f"batch {summary['batch_id']}: {c['in']} records in = {c['prepared']} prepared"
        f" + {c['rejected']} rejected"
    ]
    for product, pc in summary.get("per_product", {}).items():
        lines.append(
            f"  {product:<20} in {pc['in']:>7}  prepared {pc['prepared']:>7}  "
            f"rejected {pc['rejected']:>5}"
        )
    for code, n in summary.get("per_reason", {}).items():
        lines.append(f"  rejected {code}: {n}")
    t = summary.get("timings", {})
    if t.get("cards_per_second"):
        lines.append(
            f"  prepare {t.get('prepare_seconds')} s on {t.get('workers')} worker(s): "
            f"{t.get('cards_per_second')} cards/s ({t.get('cards_per_second_per_worker')}"
            " per worker)"
        )
    keys = summary.get("keys", {})
    if keys:
        lines.append("  keys: " + ", ".join(f"{ref} kcv={kcv}" for ref, kcv in keys.items()))
    for name in ("manifest", "bureau_file", "report_html"):
        if summary.get(name):
            lines.append(f"  {name.replace('_', ' ')}: {summary[name]}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    """``cardprep run``."""
    from pipeline.steps.batch import run_batch  # noqa: PLC0415 (heavy imports on use)

    _logging()
    settings = load_settings(args.settings)
    summary = run_batch(
        args.issuer,
        args.file,
        settings,
        shard_size=args.shard_size,
        workers=args.workers,
        force=args.force,
        dry_run=args.dry_run,
        batch_date=args.batch_date,
    )
    if summary.get("dry_run"):
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(format_summary(summary))
    return 0


def _print_failures(exc: VerificationError) -> None:
    failures = getattr(exc, "failures", None) or [exc]
    print(f"VERIFICATION FAILED ({len(failures)} shown):", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    """``cardprep verify``: exit 0 when every check passes, 3 when purged by retention, else 1."""
    from pipeline.steps.verify import verify_batch  # noqa: PLC0415

    settings = load_settings(args.settings)
    try:
        result = verify_batch(
            args.batch_dir, settings, cards=not args.no_cards, rederive=not args.no_rederive
        )
    except BatchPurgedError as exc:
        print(f"{exc.field} was {exc.detail}; its manifest MAC verifies, its outputs are gone "
              "on purpose", file=sys.stderr)  # fmt: skip
        return EXIT_PURGED
    except VerificationError as exc:
        _print_failures(exc)
        return 1
    print(
        f"batch {result['batch_id']} OK: manifest MAC under {result['manifest_mac_key']}, "
        f"{result['files']} files, {result['cards_checked']} cards checked "
        f"({result['counts']['in']} in = {result['counts']['prepared']} prepared + "
        f"{result['counts']['rejected']} rejected) in {result['seconds']} s"
    )
    return 0


def _find_row(batch_dir: Path, manifest: dict[str, Any], line: int) -> dict[str, Any] | None:
    for entry in (f for f in manifest["files"] if f["kind"] == "part"):
        for cols in iter_part_batches(batch_dir / entry["path"]):
            if line in cols["line_no"]:
                i = cols["line_no"].index(line)
                return {k: v[i] for k, v in cols.items()}
    return None


def _show_card(
    store: KeyStore, batch_dir: Path, manifest: dict[str, Any], line: int, reveal: bool
) -> int:
    from pipeline.steps.verify import card_tags  # noqa: PLC0415

    row = _find_row(batch_dir, manifest, line)
    if row is None:
        print(f"input line {line} is not a prepared card of batch {manifest['batch_id']}")
        return 1
    product, dgis = open_card(
        store,
        row["card_data"],
        batch_id=manifest["batch_id"],
        line_no=line,
        where=f"{batch_dir} line {line}",
    )
    _, tags = card_tags(dgis)
    pan = tags.get(b"\x5a", b"").hex().upper().rstrip("F")
    print(
        f"input line {line}: product {product}, PAN {pan if reveal else row['masked_pan']}, "
        f"token {row['pan_token']}"
    )
    print(f"  KCVs: {row['kcvs']}")
    print(f"  ICC public key SHA-256: {row['icc_pk_sha256']}")
    print(f"  {'DGI':<6} {'bytes':>5}  encrypted")
    for d in dgis:
        value = f"  {d.value.hex().upper()}" if reveal else ""
        print(f"  {d.id:04X}   {len(d.value):>5}  {'yes (TK)' if d.encrypted else 'no'}{value}")
    return 0


def _show_manifest(manifest: dict[str, Any]) -> None:
    """Print a (MAC-verified) manifest: counts, products, keys with KCVs, files."""
    c = manifest["counts"]
    print(
        f"batch {manifest['batch_id']} of issuer {manifest['issuer']}, created "
        f"{manifest['created_at']}, input {manifest['input']['name']} "
        f"({manifest['input']['records']} records, layout {manifest['input']['layout']})"
    )
    print(
        f"  {c['in']} in = {c['prepared']} prepared + {c['rejected']} rejected; "
        f"per product {json.dumps(c['per_product'], sort_keys=True)}"
    )
    print(f"  reasons {json.dumps(c['per_reason'], sort_keys=True)}")
    for product, info in manifest["products"].items():
        print(
            f"  product {product} v{info['version']} ({info['scheme']}), "
            f"CA {info['ca']['rid']}/{info['ca']['index']} = {info['ca']['key']}"
        )
    for k in manifest["keys"]:
        print(f"  key {k['ref']:<24} kcv {k['kcv']}")
    for f in manifest["files"]:
        print(
            f"  file {f['path']:<40} {f['kind']:<12} {f.get('rows', ''):>7} rows "
            f"{f['size']:>9} bytes  sha256 {f['sha256'][:16]}..."
        )
    print(f"  mac {manifest['mac']['key']} kcv {manifest['mac']['kcv']}")


def cmd_inspect(args: argparse.Namespace) -> int:
    """``cardprep inspect``: the manifest's MAC is checked first, so an edited one is refused."""
    from pipeline.keys import open_store  # noqa: PLC0415

    settings = load_settings(args.settings)
    if args.reveal and (settings.is_production or args.card is None):
        raise ConfigError("--reveal", "only with --card, and only when the environment is demo")
    path = args.batch_dir / "manifest.json"
    manifest = load_manifest(path)
    store = open_store(settings)
    try:
        verify_manifest_mac(manifest, store, str(path))  # VerificationError: exit 2, one line
        if args.card is None:
            _show_manifest(manifest)
            return 0
        return _show_card(store, args.batch_dir, manifest, args.card, args.reveal)
    finally:
        store.close()


def _demo_store(settings: Settings, config_dir: Path) -> KeyStore:
    """The demo store; created from ``<config_dir>/demo/keys.yaml`` (TEST keys) when absent."""
    from pipeline.keys import open_store  # noqa: PLC0415
    from pipeline.keys.demo import check_demo_store, init_demo_store  # noqa: PLC0415

    ks = settings.key_store
    if settings.is_production:
        raise ConfigError("environment", "cardprep demo runs only in the demo environment")
    if ks.path.exists():
        store = open_store(settings)
        try:
            check_demo_store(store, config_dir / "demo" / "keys.yaml")
        except BaseException:
            store.close()
            raise
        return store
    if ks.passphrase_file is None:
        raise ConfigError("key_store.hmk.passphrase_file", "the demo store needs a passphrase file")
    print(f"initialising the demo key store (TEST keys only) at {ks.path}")
    ks.path.parent.mkdir(parents=True, exist_ok=True)
    return init_demo_store(
        ks.path,
        config_dir / "demo" / "keys.yaml",
        passphrase_file=ks.passphrase_file,
        audit_path=ks.audit_path,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """``cardprep demo``: store -> sample -> run -> verify -> summary."""
    from pipeline.records.issuers import load_issuer  # noqa: PLC0415
    from pipeline.records.sample import write_sample  # noqa: PLC0415
    from pipeline.steps.batch import run_batch  # noqa: PLC0415
    from pipeline.steps.context import batch_settings  # noqa: PLC0415
    from pipeline.steps.verify import verify_batch  # noqa: PLC0415

    _logging()
    settings = load_settings(args.settings)
    bs = batch_settings(settings)
    store = _demo_store(settings, bs.config_dir)
    try:
        issuer = load_issuer("demo", bs.config_dir)
        inbound = bs.inbound(issuer.id, issuer.inbound)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        sample = write_sample(
            "demo",
            args.cards,
            inbound / f"demo-{stamp}-n{args.cards}.dat",
            error_rate=args.errors,
            seed=args.seed,
            config_dir=bs.config_dir,
        )
        print(
            f"sample: {sample.path} ({sample.records} records, "
            f"{len(sample.expected_rejects)} with injected validation errors)"
        )
        summary = run_batch(
            "demo",
            sample.path,
            settings,
            shard_size=args.shard_size,
            workers=args.workers,
            store=store,
        )
        result = verify_batch(summary["batch_dir"], settings, store=store)
    except VerificationError as exc:
        _print_failures(exc)
        return 1
    finally:
        store.close()
    print(format_summary(summary))
    print(
        f"  verify: OK, {result['cards_checked']} cards, every certificate chain and KCV "
        f"({result['seconds']} s)"
    )
    print(f"  next: cardprep verify {summary['batch_dir']}")
    print(f"        cardprep inspect {summary['batch_dir']} --card <input line>")
    return 0
