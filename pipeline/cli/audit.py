"""``cardprep audit``: show and verify the key-management audit trail.

``verify`` checks the whole hash chain, every MAC under the audit key and the
sealed head (:meth:`pipeline.audit.trail.AuditTrail.verify`); it exits 0
when the trail is intact and 1, listing every problem, when any line was
edited, deleted, reordered, forged or truncated.

Example:
    $ cardprep audit verify
    audit trail OK: 42 entries, head seq 42
    $ cardprep audit show --tail 5
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.keys import common_options, open_store

__all__ = ["register"]


def _cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        events = list(store.audit_trail.events())
    finally:
        store.close()
    if args.action:
        events = [e for e in events if e.action.startswith(args.action)]
    if args.actor:
        events = [e for e in events if args.actor in e.actor.split("+")]
    if args.tail:
        events = events[-args.tail :]
    for e in events:
        details = json.dumps(e.details, sort_keys=True, separators=(",", ":"))
        print(f"{e.seq:>5} {e.ts} {e.actor:<16} {e.action:<24} {e.subject} {e.result} {details}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        report = store.audit_trail.verify()
    finally:
        store.close()
    print(report)
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add ``cardprep audit ...`` to the top-level parser."""
    top = subparsers.add_parser("audit", help="the key-management audit trail")
    sub = top.add_subparsers(dest="audit_command", required=True)
    common = common_options()

    p = sub.add_parser("show", parents=[common], help="print audit events")
    p.add_argument("--tail", type=int, help="only the last N events")
    p.add_argument("--action", help="only actions starting with this (e.g. key.)")
    p.add_argument("--actor", help="only events by this custodian")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("verify", parents=[common], help="verify chain, MACs and head seal")
    p.set_defaults(func=_cmd_verify)
