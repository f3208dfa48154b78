"""``cardprep keys``: key store initialisation, ceremonies and the key lifecycle.

Subcommands (issue 4 "CLI"): ``init | ceremony | generate | import | export |
list | show | rotate | suspend | resume | destroy | restore``.

Every key-management subcommand runs under dual control (``--by`` and
``--witness``: two different active custodians from the registry) and is
carried out as a one-step ceremony (:mod:`pipeline.keys.ceremony`), so the
same custodian, KCV and audit rules apply as in a planned ceremony.  Every
prompt can be answered from files: ``--component-file`` for components,
``--answers FILE`` for KCV confirmations (otherwise a hidden prompt /
interactive confirmation).  Listings show label, version, algorithm, usage,
state and KCV, never key material.

The soft store's HMK comes from the demo passphrase file named in the
settings, or, when ``key_store.hmk.source: components``, from
``--hmk-component-file`` (two or three files).

Example:
    $ cardprep keys ceremony --plan config/demo/ceremony-plan.yaml --files DIR \\
          --answers answers.yaml --rehearse
    $ cardprep keys list
    $ cardprep keys export --as-components --custodian alice --custodian bob \\
          --custodian carol --by km1 --witness aud1 --out DIR demo-tk@v1
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import CapabilityError, CeremonyError, ConfigError
from pipeline.keys.ceremony import (
    AnswersPrompter,
    Ceremony,
    CeremonyContext,
    CeremonyPlan,
    ConsolePrompter,
    DeferredAudit,
    DiscrepancyLog,
    Prompter,
    StepAction,
    load_answers,
    load_plan,
    parse_plan,
    rehearsal_dir,
)
from pipeline.keys.components import parse_component, xor_combine
from pipeline.keys.custodians import AuditSink, CustodianRegistry, ceremony_db_path
from pipeline.keys.envelopes import EnvelopeLog
from pipeline.keys.model import KeyAlgorithm, KeyRecord, KeyRef, KeyRole, KeyUsage
from pipeline.keys.settings import Backend, HmkSource, Settings, load_settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.keys.store import KeyStore

__all__ = [
    "format_record",
    "open_registry",
    "open_store",
    "register",
]


# --- shared helpers (also used by pipeline.cli.custodians and pipeline.cli.audit) -----------


def common_options() -> argparse.ArgumentParser:
    """Options every command that opens the key store takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--settings", type=Path, default=None, help="settings file (default: config/settings.yaml)"
    )
    parent.add_argument(
        "--hmk-component-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="an HMK component (hex) when the HMK enters as components; give 2 or 3",
    )
    return parent


def dual_control_options() -> argparse.ArgumentParser:
    """``--by`` and ``--witness``: the two custodians of a key-management action."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--by", required=True, help="custodian id performing the action")
    parent.add_argument("--witness", required=True, help="second custodian (dual control)")
    parent.add_argument(
        "--answers", type=Path, default=None, help="YAML answers to prompts (unattended)"
    )
    return parent


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings named by ``--settings`` (else ``$CARDPREP_SETTINGS`` / the default)."""
    return load_settings(getattr(args, "settings", None))


def _hmk_from_files(files: Sequence[Path]) -> bytes:
    if not 2 <= len(files) <= 3:
        raise CeremonyError(
            "hmk-component-file", f"the HMK enters from 2..3 components, got {len(files)}"
        )
    parts = []
    for f in files:
        try:
            parts.append(parse_component(Path(f).read_text(encoding="utf-8"), str(f)))
        except OSError as exc:
            raise ConfigError(
                "hmk-component-file", f"cannot read {f} ({type(exc).__name__})"
            ) from None
    return xor_combine(parts)


def open_store(args: argparse.Namespace) -> SoftKeyStore:
    """Open the configured key store (soft backend).

    The PKCS#11 backend needs an audit trail sealed by the token; this CLI
    does not open it yet (:class:`~pipeline.errors.CapabilityError`).
    """
    settings = settings_of(args)
    ks = settings.key_store
    if ks.backend is Backend.PKCS11:
        raise CapabilityError("key_store.backend", "the keys CLI drives the soft store only")
    if ks.hmk_source is HmkSource.COMPONENTS:
        hmk = _hmk_from_files(getattr(args, "hmk_component_file", []))
        return SoftKeyStore(ks.path, hmk, audit_path=ks.audit_path, settings=settings)
    return SoftKeyStore.from_settings(settings)


def registry_path(settings: Settings) -> Path:
    """The custodian / envelope database beside the key store."""
    return ceremony_db_path(settings.key_store.path.parent)


def open_registry(settings: Settings, audit: AuditSink | None) -> CustodianRegistry:
    """The custodian registry of the configured store, auditing to ``audit``."""
    return CustodianRegistry(registry_path(settings), audit=audit)


def prompter_of(args: argparse.Namespace) -> Prompter:
    """``--answers FILE`` answers prompts; otherwise ask on the terminal."""
    answers = getattr(args, "answers", None)
    if answers is not None:
        return AnswersPrompter(load_answers(answers), base=Path(answers).parent)
    return ConsolePrompter()


def format_record(record: KeyRecord) -> str:
    """One listing line: label, version, algorithm, usage, state, KCV — never key material.

    Example:
        >>> from pipeline.keys.model import Exportability, KeyState
        >>> r = KeyRecord(KeyRef("demo-tk", 2), KeyAlgorithm.TDES2, 128, KeyUsage.K0,
        ...     KeyRole.TK, "B", Exportability.E, "bureau:demo", KeyState.ACTIVE,
        ...     bytes.fromhex("08D7B4"), "tdes", (), "t", "t", "t")
        >>> format_record(r)
        'demo-tk                     2  tdes2    K0  active           08D7B4  bureau:demo'
    """
    return (
        f"{record.ref.label:<26} {record.ref.version:>2}  {record.algorithm.value:<8} "
        f"{record.usage.value:<3} {record.state.value:<16} {record.kcv.hex().upper():<6}  "
        f"{record.owner}"
    )


@contextmanager
def _context(
    args: argparse.Namespace,
    store: KeyStore | None,
    audit: DeferredAudit,
    *,
    db: Path,
    files_dir: Path,
    out_dir: Path,
    rehearsal: bool = False,
) -> Iterator[CeremonyContext]:
    registry = CustodianRegistry(db, audit=audit)
    envelopes = EnvelopeLog(db, registry, audit=audit)
    discrepancies = DiscrepancyLog(db, audit=audit)
    try:
        yield CeremonyContext(
            registry=registry,
            envelopes=envelopes,
            discrepancies=discrepancies,
            audit=audit,
            prompter=prompter_of(args),
            files_dir=files_dir,
            out_dir=out_dir,
            store=store,
            rehearsal=rehearsal,
        )
    finally:
        envelopes.close()
        discrepancies.close()
        registry.close()


#: Plan step fields whose command-line option is not simply ``--field-name``.
_OPTION_OF = {
    "expected_kcv": "--kcv", "custodians": "--custodian", "export": "--exportability",
    "components": "--component-file", "file": "--key-block", "label": "LABEL",
}  # fmt: skip


def _option(field: str) -> str:
    """The option that sets plan step field ``field``.

    Example:
        >>> _option("expected_kcv"), _option("wait_days"), _option("'owner'")
        ('--kcv', '--wait-days', '--owner')
    """
    name = field.strip(" '")
    return _OPTION_OF.get(name, "--" + name.replace("_", "-"))


def _as_options(exc: ConfigError) -> ConfigError:
    """An error about the command's one-step plan, in terms of the command's options.

    Example:
        >>> str(_as_options(ConfigError("steps[1]", "enter-key needs ['owner', 'expected_kcv']")))
        'options: enter-key needs --owner, --kcv'
        >>> str(_as_options(ConfigError("steps[1].wait_days", "not an integer: 'x'")))
        "--wait-days: not an integer: 'x'"
    """
    where = exc.field.removeprefix("steps[1]")
    if where == exc.field:
        return exc
    if where.startswith("."):
        return ConfigError(_option(where[1:].split("[")[0]), exc.detail)
    head, sep, names = exc.detail.partition(" needs [")
    if not sep:
        return ConfigError("options", exc.detail)
    return ConfigError("options", f"{head} needs " + ", ".join(map(_option, names[:-1].split(","))))


def _run_one(args: argparse.Namespace, step: dict[str, Any], *, out_dir: Path | None = None) -> int:
    """Run one key-management step as a one-step ceremony under ``--by`` / ``--witness``."""
    given = {k: v for k, v in step.items() if v is not None}  # an option not given: "needs --x"
    try:
        plan = parse_plan(
            {"ceremony": f"cli-{step['action']}", "officer": args.by, "witness": args.witness,
             "steps": [given]}
        )  # fmt: skip
    except ConfigError as exc:
        raise _as_options(exc) from None
    settings = settings_of(args)
    store = open_store(args)
    try:
        audit = DeferredAudit(store.audit_trail)
        with _context(
            args, store, audit, db=registry_path(settings), files_dir=Path(),
            out_dir=out_dir or Path(),
        ) as ctx:  # fmt: skip
            for result in Ceremony(plan, ctx).run():
                print(result.outcome)
    finally:
        store.close()
    return 0


# --- subcommands ---------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    ks = settings.key_store
    if ks.path.exists():
        raise CeremonyError("key_store.path", f"{ks.path} already exists; refusing to overwrite")
    if not args.component_file:
        if ks.hmk_source is not HmkSource.PASSPHRASE_FILE:
            raise CeremonyError(
                "component-file", "the HMK enters as components: give --component-file 2..3 times"
            )
        store = SoftKeyStore.from_settings(settings, create=True)
        print(f"created demo key store {ks.path} (HMK from the passphrase file; DEMO ONLY)")
        store.close()
        return 0
    if args.by is None or args.witness is None or args.kcv is None:
        raise CeremonyError("init", "HMK entry from components needs --by, --witness and --kcv")
    if len(args.custodian) != len(args.component_file):
        raise CeremonyError("custodian", "give one --custodian per --component-file, in order")
    plan = parse_plan({
        "ceremony": "cli-init", "officer": args.by, "witness": args.witness,
        "steps": [{"action": "enter-hmk", "expected_kcv": args.kcv, "components": [
            {"custodian": c, "file": str(f)}
            for c, f in zip(args.custodian, args.component_file, strict=True)]}],
    })  # fmt: skip
    return _run_plan(args, plan, settings, files_dir=Path(), out_dir=Path(), rehearse=False)


def _run_plan(
    args: argparse.Namespace,
    plan: CeremonyPlan,
    settings: Settings,
    *,
    files_dir: Path,
    out_dir: Path,
    rehearse: bool,
) -> int:
    ks = settings.key_store
    has_hmk = any(s.action is StepAction.ENTER_HMK for s in plan.steps)
    opened: list[SoftKeyStore] = []

    def open_with_hmk(
        hmk: bytes, kcv: bytes, custodians: Sequence[str], *, path: Path, audit_path: Path
    ) -> tuple[KeyStore, AuditSink]:
        actor = "+".join((plan.officer, plan.witness))
        if path.exists():
            store = SoftKeyStore(path, hmk, audit_path=audit_path, settings=settings)
        else:
            store = SoftKeyStore.create(
                path, hmk, actor=actor, hmk_custodians=custodians, audit_path=audit_path,
                settings=settings,
            )  # fmt: skip
        opened.append(store)
        return store, store.audit_trail

    def go(db: Path, path: Path, audit_path: Path, out: Path) -> None:
        store: SoftKeyStore | None = None
        audit = DeferredAudit()
        if not has_hmk:
            if rehearse:
                store = SoftKeyStore.create(path, secrets.token_bytes(32), actor="rehearsal",
                                            audit_path=audit_path)  # fmt: skip
            else:
                store = open_store(args)
            opened.append(store)
            audit = DeferredAudit(store.audit_trail)
        with _context(args, store, audit, db=db, files_dir=files_dir, out_dir=out,
                      rehearsal=rehearse) as ctx:  # fmt: skip
            ctx.open_with_hmk = lambda h, k, c: open_with_hmk(
                h, k, c, path=path, audit_path=audit_path
            )
            Ceremony(plan, ctx).run()

    try:
        if rehearse:
            with rehearsal_dir(registry_path(settings)) as tmp:
                go(ceremony_db_path(tmp), tmp / "keys.db", tmp / "audit.jsonl", tmp / "out")
                for store in opened:
                    store.close()
                opened.clear()
            print(f"[rehearsal] all {len(plan.steps)} steps would succeed; nothing was changed")
        else:
            go(registry_path(settings), ks.path, ks.audit_path, out_dir)
    finally:
        for store in opened:
            store.close()
    return 0


def _cmd_ceremony(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    settings = settings_of(args)
    files_dir = args.files or Path(args.plan).parent
    out_dir = args.out or settings.key_store.path.parent / "ceremonies" / plan.ceremony
    return _run_plan(
        args, plan, settings, files_dir=files_dir, out_dir=out_dir, rehearse=args.rehearse
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    step: dict[str, Any] = {
        "action": "generate-components" if args.as_components else "generate",
        "label": args.label, "algorithm": args.algorithm, "usage": args.usage,
        "role": args.role, "owner": args.owner, "exportability": args.exportability,
        "mode_of_use": args.mode_of_use,
    }  # fmt: skip
    if args.bits is not None:
        step["bits"] = args.bits
    if args.as_components:
        step["custodians"] = args.custodian
        if args.threshold is not None:
            step["scheme"], step["threshold"] = "shamir", args.threshold
    elif args.custodian:
        raise CeremonyError("custodian", "--custodian goes with --as-components")
    return _run_one(args, step, out_dir=args.out)


def _cmd_import(args: argparse.Namespace) -> int:
    if args.key_block is not None:
        if args.component_file:
            raise CeremonyError("import", "give either --key-block or --component-file, not both")
        step: dict[str, Any] = {
            "action": "import-key-block", "label": args.label, "file": str(args.key_block),
            "kbpk": args.kbpk, "role": args.role, "owner": args.owner, "sender": args.sender,
        }  # fmt: skip
        if args.kcv:
            step["expected_kcv"] = args.kcv
        return _run_one(args, step)
    if len(args.custodian) != len(args.component_file):
        raise CeremonyError("custodian", "give one --custodian per --component-file, in order")
    step = {
        "action": "enter-key", "label": args.label, "algorithm": args.algorithm,
        "usage": args.usage, "role": args.role, "owner": args.owner, "sender": args.sender,
        "expected_kcv": args.kcv, "exportability": args.exportability,
        "mode_of_use": args.mode_of_use,
        "components": [
            {"custodian": c, "file": str(f), "slot": i}
            for i, (c, f) in enumerate(zip(args.custodian, args.component_file, strict=True), 1)
        ],
    }  # fmt: skip
    if args.threshold is not None:
        step["scheme"], step["threshold"] = "shamir", args.threshold
        for spec, slot in zip(step["components"], args.share_index or [], strict=False):
            spec["slot"] = slot
    return _run_one(args, step)


def _cmd_export(args: argparse.Namespace) -> int:
    """A TR-31 key block under ``--kbpk`` to the file ``--out``, or components to envelopes.

    ``--as-components``: one envelope per ``--custodian`` (2..3 XOR
    components, or n Shamir shares with ``--threshold m``) in the directory
    ``--out`` (default: the current directory), under ``envelopes/label@vN/``.
    """
    if args.as_components:
        if args.kbpk is not None:
            raise CeremonyError("kbpk", "--as-components writes envelopes: no --kbpk")
        step: dict[str, Any] = {
            "action": "export-components", "key": args.key, "custodians": args.custodian,
        }  # fmt: skip
        if args.threshold is not None:
            step["scheme"], step["threshold"] = "shamir", args.threshold
        return _run_one(args, step, out_dir=args.out)
    if args.custodian or args.threshold is not None:
        raise CeremonyError("custodian", "--custodian and --threshold go with --as-components")
    if args.kbpk is None or args.out is None:
        raise CeremonyError("export", "a key block export needs --kbpk and --out FILE")
    out = Path(args.out)
    return _run_one(
        args,
        {"action": "export-key-block", "key": args.key, "kbpk": args.kbpk, "file": out.name},
        out_dir=out.parent,
    )


def _cmd_lifecycle(args: argparse.Namespace) -> int:
    action = args.lifecycle
    if action == "destroy":
        action = "destroy" if args.now else "schedule-destruction"
    step: dict[str, Any] = {"action": action}
    if action == "rotate":
        step["label"] = args.key
    else:
        step["key"] = args.key
    if action == "suspend" and args.reason:
        step["reason"] = args.reason
    if action == "schedule-destruction":
        step["wait_days"] = args.wait_days
    return _run_one(args, step)


def _cmd_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        records = store.list(owner=args.owner)
    finally:
        store.close()
    print(f"{'label':<26} {'v':>2}  {'algo':<8} {'use':<3} {'state':<16} {'kcv':<6}  owner")
    for record in records:
        print(format_record(record))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        record = store.get(KeyRef.parse(args.key)) if "@v" in args.key else store.get(args.key)
    finally:
        store.close()
    fields = {
        "key": str(record.ref),
        "algorithm": f"{record.algorithm.value} ({record.bits} bits)",
        "usage": record.usage.value,
        "role": record.role.value,
        "mode of use": record.mode_of_use,
        "exportability": record.exportability.value,
        "owner": record.owner,
        "state": record.state.value,
        "kcv": f"{record.kcv.hex().upper()} ({record.kcv_method})",
        "custodians": ", ".join(record.custodians) or "-",
        "created": record.created_at,
        "activated": record.activated_at or "-",
        "updated": record.updated_at,
        "destroy after": record.destroy_after or "-",
        "destroyed": record.destroyed_at or "-",
    }
    for name, value in fields.items():
        print(f"{name + ':':<15} {value}")
    return 0


# --- parser ----------------------------------------------------------------------------------


def _key_attributes(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--algorithm", choices=[a.value for a in KeyAlgorithm], required=required)
    p.add_argument("--usage", choices=[u.value for u in KeyUsage], required=required)
    p.add_argument("--role", choices=[r.value for r in KeyRole], required=required)
    p.add_argument("--owner", required=required, help="e.g. issuer:demo, bin:476173, bureau:demo")
    p.add_argument("--exportability", choices=["E", "N", "S"], default="E")
    p.add_argument("--mode-of-use", default="N", help="TR-31 mode of use (default N)")


def register(subparsers: Any) -> None:
    """Add ``cardprep keys ...`` to the top-level parser."""
    keys = subparsers.add_parser("keys", help="key store, ceremonies and key lifecycle")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    common, dual = common_options(), dual_control_options()

    p = sub.add_parser("init", parents=[common], help="create the key store (HMK entry)")
    p.add_argument("--component-file", type=Path, action="append", default=[])
    p.add_argument("--custodian", action="append", default=[])
    p.add_argument("--kcv", help="expected HMK KCV (AES-CMAC, 5 bytes hex)")
    p.add_argument("--by")
    p.add_argument("--witness")
    p.add_argument("--answers", type=Path)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("ceremony", parents=[common], help="run a ceremony from a YAML plan")
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--rehearse", action="store_true", help="run against a throwaway store")
    p.add_argument("--files", type=Path, help="directory of the plan's component/block files")
    p.add_argument("--out", type=Path, help="directory for exported blocks and envelopes")
    p.add_argument("--answers", type=Path, help="YAML answers to prompts (unattended)")
    p.set_defaults(func=_cmd_ceremony)

    p = sub.add_parser("generate", parents=[common, dual], help="generate a key")
    p.add_argument("label")
    _key_attributes(p)
    p.add_argument("--bits", type=int, help="RSA modulus size")
    p.add_argument("--as-components", action="store_true",
                   help="generate as components, one envelope per --custodian")  # fmt: skip
    p.add_argument("--custodian", action="append", default=[])
    p.add_argument("--threshold", type=int, help="Shamir m (with --as-components)")
    p.add_argument("--out", type=Path, help="directory for envelopes")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("import", parents=[common, dual], help="enter a key from components "
                       "or import a TR-31 key block")  # fmt: skip
    p.add_argument("label")
    _key_attributes(p, required=False)
    p.add_argument("--component-file", type=Path, action="append", default=[])
    p.add_argument("--custodian", action="append", default=[])
    p.add_argument("--threshold", type=int, help="Shamir m: the files hold shares")
    p.add_argument("--share-index", type=int, action="append", help="share x per file")
    p.add_argument("--key-block", type=Path, help="TR-31 key block file")
    p.add_argument("--kbpk", help="label of the key block protection key")
    p.add_argument("--kcv", help="expected KCV (hex)")
    p.add_argument("--sender", required=True, help="who sent the key (for discrepancies)")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("export", parents=[common, dual],
                       help="export a TR-31 key block, or components to envelopes")  # fmt: skip
    p.add_argument("key", help="label or label@vN")
    p.add_argument("--kbpk", help="label of the key block protection key")
    p.add_argument("--out", type=Path,
                   help="key block file; with --as-components the envelope directory")  # fmt: skip
    p.add_argument("--as-components", action="store_true",
                   help="split into components, one envelope per --custodian")  # fmt: skip
    p.add_argument("--custodian", action="append", default=[])
    p.add_argument("--threshold", type=int, help="Shamir m (with --as-components)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("list", parents=[common], help="list keys (never key material)")
    p.add_argument("--owner")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="show one key's record")
    p.add_argument("key", help="label or label@vN")
    p.set_defaults(func=_cmd_show)

    for name, text in (
        ("rotate", "new version; the old one only processes existing data"),
        ("suspend", "refuse all use until resumed"),
        ("resume", "undo a suspension"),
        ("destroy", "schedule destruction (default), or destroy after the wait (--now)"),
        ("restore", "cancel a scheduled destruction"),
    ):
        p = sub.add_parser(name, parents=[common, dual], help=text)
        p.add_argument("key", help="label" if name == "rotate" else "label or label@vN")
        if name == "suspend":
            p.add_argument("--reason", default="")
        if name == "destroy":
            p.add_argument("--wait-days", type=int, default=7)
            p.add_argument("--now", action="store_true", help="destroy (after the waiting period)")
        p.set_defaults(func=_cmd_lifecycle, lifecycle=name)
