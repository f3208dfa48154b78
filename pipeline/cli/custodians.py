"""``cardprep custodians``: the custodian registry and the envelope log.

Subcommands: ``appoint | list | show | revoke | set-backup`` for the
registry (:mod:`pipeline.keys.custodians`), and ``envelopes | sign-off`` for
the envelope log (:mod:`pipeline.keys.envelopes`): custodians sign off each
envelope's hand-over, opening and destruction here.

Every change is appended to the key store's audit trail, so the store must
be open (demo passphrase, or ``--hmk-component-file``); the very first
appointments, before a store exists, go in a ceremony plan's ``appoint``
step.

Example:
    $ cardprep custodians appoint erin --name "Erin Example" --role custodian \\
          --employment employee --backup dave --by km1
    $ cardprep custodians sign-off ENV000001 --event handed-over --by alice
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.keys import common_options, open_registry, open_store, settings_of
from pipeline.keys.custodians import Custodian, CustodianRole, EmploymentType
from pipeline.keys.envelopes import EnvelopeLog, EnvelopeState

__all__ = ["format_custodian", "register"]


def format_custodian(c: Custodian) -> str:
    """One listing line for a custodian.

    Example:
        >>> from pipeline.keys.custodians import Appointment, CustodianStatus
        >>> format_custodian(Custodian("alice", "Alice", CustodianRole.CUSTODIAN,
        ...     EmploymentType.EMPLOYEE, "bob", Appointment("km1", "2024-05-01"),
        ...     CustodianStatus.ACTIVE, may_act=True))
        'alice        custodian    employee    backup bob          active   by km1 on 2024-05-01'
    """
    state = c.status.value if c.may_act or not c.active else "no-backup"
    return (
        f"{c.id:<12} {c.role.value:<12} {c.employment.value:<11} backup {c.backup:<12} "
        f"{state:<8} by {c.appointment.appointed_by} on {c.appointment.date}"
    )


def _with_registry(args: argparse.Namespace, action: Any) -> int:
    settings = settings_of(args)
    store = open_store(args)
    try:
        registry = open_registry(settings, store.audit_trail)
        try:
            return int(action(registry, store))
        finally:
            registry.close()
    finally:
        store.close()


def _cmd_appoint(args: argparse.Namespace) -> int:
    def act(registry: Any, _store: Any) -> int:
        c = registry.appoint(
            args.id, args.name, CustodianRole(args.role), EmploymentType(args.employment),
            backup=args.backup, appointed_by=args.by, date=args.date,
        )  # fmt: skip
        print(format_custodian(c))
        return 0

    return _with_registry(args, act)


def _cmd_list(args: argparse.Namespace) -> int:
    def act(registry: Any, _store: Any) -> int:
        for c in registry.list(include_revoked=args.all):
            print(format_custodian(c))
        return 0

    return _with_registry(args, act)


def _cmd_show(args: argparse.Namespace) -> int:
    def act(registry: Any, _store: Any) -> int:
        c = registry.get(args.id)
        print(format_custodian(c))
        print(f"name: {c.name}")
        if c.revoked_at:
            print(f"revoked: {c.revoked_at} by {c.revoked_by} ({c.revocation_reason})")
        for h in registry.holdings():
            if h.custodian == c.id:
                print(
                    f"holds component {h.slot} of {h.label}@v{h.version} ({h.kind}, {h.ceremony})"
                )
        return 0

    return _with_registry(args, act)


def _cmd_revoke(args: argparse.Namespace) -> int:
    def act(registry: Any, _store: Any) -> int:
        print(format_custodian(registry.revoke(args.id, by=args.by, reason=args.reason)))
        return 0

    return _with_registry(args, act)


def _cmd_set_backup(args: argparse.Namespace) -> int:
    def act(registry: Any, _store: Any) -> int:
        print(format_custodian(registry.set_backup(args.id, args.backup, by=args.by)))
        return 0

    return _with_registry(args, act)


def _cmd_envelopes(args: argparse.Namespace) -> int:
    def act(registry: Any, store: Any) -> int:
        log = EnvelopeLog(registry.path, registry, audit=store.audit_trail)
        try:
            for e in log.list(args.key):
                print(f"{e.serial}  {e.key:<24} component {e.slot} of {e.count}  for "
                      f"{e.custodian:<10} kcv {e.component_kcv}  {e.state.value}")  # fmt: skip
                if args.events:
                    for ev in log.events(e.serial):
                        witness = f" witness {ev.witness}" if ev.witness else ""
                        print(f"    {ev.at}  {ev.event.value:<12} by {ev.by}{witness}  {ev.note}")
        finally:
            log.close()
        return 0

    return _with_registry(args, act)


def _cmd_sign_off(args: argparse.Namespace) -> int:
    def act(registry: Any, store: Any) -> int:
        log = EnvelopeLog(registry.path, registry, audit=store.audit_trail)
        try:
            e = log.sign_off(
                args.serial, EnvelopeState(args.event), by=args.by, witness=args.witness,
                note=args.note,
            )  # fmt: skip
        finally:
            log.close()
        print(f"{e.serial} {e.state.value} (signed off by {args.by})")
        return 0

    return _with_registry(args, act)


def register(subparsers: Any) -> None:
    """Add ``cardprep custodians ...`` to the top-level parser."""
    top = subparsers.add_parser("custodians", help="custodian registry and envelope log")
    sub = top.add_subparsers(dest="custodians_command", required=True)
    common = common_options()

    p = sub.add_parser("appoint", parents=[common], help="appoint a custodian")
    p.add_argument("id")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=[r.value for r in CustodianRole])
    p.add_argument("--employment", required=True, choices=[e.value for e in EmploymentType])
    p.add_argument("--backup", required=True, help="custodian id of the backup")
    p.add_argument("--by", required=True, help="appointing key manager")
    p.add_argument("--date", help="appointment date (default: today, UTC)")
    p.set_defaults(func=_cmd_appoint)

    p = sub.add_parser("list", parents=[common], help="list custodians")
    p.add_argument("--all", action="store_true", help="include revoked appointments")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="one custodian and what they hold")
    p.add_argument("id")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("revoke", parents=[common], help="revoke an appointment")
    p.add_argument("id")
    p.add_argument("--by", required=True)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("set-backup", parents=[common], help="name a new backup")
    p.add_argument("id")
    p.add_argument("--backup", required=True)
    p.add_argument("--by", required=True)
    p.set_defaults(func=_cmd_set_backup)

    p = sub.add_parser("envelopes", parents=[common], help="the envelope log")
    p.add_argument("--key", help="only envelopes of label@vN")
    p.add_argument("--events", action="store_true", help="show every signed-off step")
    p.set_defaults(func=_cmd_envelopes)

    p = sub.add_parser("sign-off", parents=[common], help="sign off an envelope step")
    p.add_argument("serial")
    p.add_argument(
        "--event", required=True, choices=[s.value for s in EnvelopeState if s.value != "created"]
    )
    p.add_argument("--by", required=True)
    p.add_argument("--witness", help="second custodian (required to destroy)")
    p.add_argument("--note", default="")
    p.set_defaults(func=_cmd_sign_off)
