"""Component envelopes: one file per key component, and the envelope log.

When a key leaves the key store as components (issue 4, "Key output as
components"; DOMAIN.md section 2: a clear key exists only as >= 2
full-length components or m-of-n shares, each in the sole custody of one
custodian), every component is written to its own *envelope* file: the
printable stand-in for a tamper-evident envelope.  The file carries the
envelope serial, the key (label, version, algorithm), which component it is
("2 of 3", XOR, or share 2 with threshold m), the custodian it is addressed
to, the component's own KCV and the combined key's KCV, and the component
value.  Files are created 0600 and atomically (:mod:`pipeline.io.atomic`).

The **envelope log** (SQLite tables ``envelopes`` and ``envelope_events``
in the ceremony database, :func:`pipeline.keys.custodians.ceremony_db_path`)
records each envelope's life, every step signed off by a custodian:

``created`` -> ``handed-over`` (signed by the receiving custodian) ->
``opened`` (by the addressee or their backup) -> ``destroyed`` (by the
holder, with a witness who is another active custodian; the file is
overwritten and removed).  An envelope may also be destroyed unopened.

Every step is appended to the audit trail (serial, key, component number and
KCV; never the value) inside the database transaction (fail closed).

Example:
    >>> text = render_envelope(EnvelopeContent(
    ...     serial="ENV000001", key="demo-tk@v1", algorithm="tdes2", scheme="xor",
    ...     slot=1, count=2, threshold=2, custodian="alice",
    ...     component_kcv="D5D44F", key_kcv="08D7B4", kcv_method="tdes",
    ...     created_at="2024-05-01T10:00:00Z", value=bytes(16)))
    >>> parse_envelope(text).serial
    'ENV000001'
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pipeline.errors import CeremonyError, CustodianError, InvalidInputError
from pipeline.io.atomic import write_text_atomic
from pipeline.keys.components import parse_component
from pipeline.keys.custodians import (
    AuditSink,
    CustodianRegistry,
    audit_or_refuse,
    connect,
    transaction,
    utc_now,
)

__all__ = [
    "EnvelopeContent",
    "EnvelopeEvent",
    "EnvelopeLog",
    "EnvelopeRecord",
    "EnvelopeState",
    "parse_envelope",
    "read_envelope",
    "render_envelope",
]

_HEADER = "CARDPREP KEY COMPONENT ENVELOPE"
_FIELDS = (
    "serial",
    "key",
    "algorithm",
    "scheme",
    "component",
    "threshold",
    "custodian",
    "component-kcv",
    "key-kcv",
    "kcv-method",
    "created",
    "value",
)


class EnvelopeState(Enum):
    """Where an envelope is in its life."""

    CREATED = "created"
    HANDED_OVER = "handed-over"
    OPENED = "opened"
    DESTROYED = "destroyed"


#: Allowed transitions of the envelope log.
_NEXT: dict[EnvelopeState, frozenset[EnvelopeState]] = {
    EnvelopeState.CREATED: frozenset({EnvelopeState.HANDED_OVER, EnvelopeState.DESTROYED}),
    EnvelopeState.HANDED_OVER: frozenset({EnvelopeState.OPENED, EnvelopeState.DESTROYED}),
    EnvelopeState.OPENED: frozenset({EnvelopeState.DESTROYED}),
    EnvelopeState.DESTROYED: frozenset(),
}


@dataclass(frozen=True)
class EnvelopeContent:
    """What one envelope file says.  ``repr`` never shows ``value``."""

    serial: str
    key: str  # "label@vN"
    algorithm: str
    scheme: str  # "xor" or "shamir"
    slot: int
    count: int
    threshold: int
    custodian: str
    component_kcv: str
    key_kcv: str
    kcv_method: str
    created_at: str
    value: bytes

    def __repr__(self) -> str:
        return (
            f"EnvelopeContent(serial={self.serial!r}, key={self.key!r}, "
            f"component={self.slot} of {self.count}, custodian={self.custodian!r}, "
            f"component_kcv={self.component_kcv!r})"
        )


def _grouped(value: bytes) -> str:
    text = value.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def render_envelope(content: EnvelopeContent) -> str:
    """The text of an envelope file (one ``name: value`` line per field).

    Example:
        >>> "component: 2 of 3" in render_envelope(EnvelopeContent("E1", "k@v1", "tdes2",
        ...     "xor", 2, 3, 3, "bob", "000000", "111111", "tdes", "t", bytes(16)))
        True
    """
    lines = [
        _HEADER,
        f"serial: {content.serial}",
        f"key: {content.key}",
        f"algorithm: {content.algorithm}",
        f"scheme: {content.scheme}",
        f"component: {content.slot} of {content.count}",
        f"threshold: {content.threshold}",
        f"custodian: {content.custodian}",
        f"component-kcv: {content.component_kcv}",
        f"key-kcv: {content.key_kcv}",
        f"kcv-method: {content.kcv_method}",
        f"created: {content.created_at}",
        f"value: {_grouped(content.value)}",
        "",
    ]
    return "\n".join(lines)


def parse_envelope(text: str) -> EnvelopeContent:
    """Parse an envelope file's text (the inverse of :func:`render_envelope`)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != _HEADER:
        raise InvalidInputError("envelope", "not a cardprep component envelope")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or name.strip() not in _FIELDS:
            raise InvalidInputError("envelope", f"unexpected line starting {name.strip()[:20]!r}")
        fields[name.strip()] = value.strip()
    missing = [f for f in _FIELDS if f not in fields]
    if missing:
        raise InvalidInputError("envelope", f"missing fields {missing}")
    slot_text, _, count_text = fields["component"].partition(" of ")
    if not slot_text.isdigit() or not count_text.isdigit() or not fields["threshold"].isdigit():
        raise InvalidInputError("envelope.component", "expected '<n> of <count>'")
    return EnvelopeContent(
        serial=fields["serial"],
        key=fields["key"],
        algorithm=fields["algorithm"],
        scheme=fields["scheme"],
        slot=int(slot_text),
        count=int(count_text),
        threshold=int(fields["threshold"]),
        custodian=fields["custodian"],
        component_kcv=fields["component-kcv"],
        key_kcv=fields["key-kcv"],
        kcv_method=fields["kcv-method"],
        created_at=fields["created"],
        value=parse_component(fields["value"], "envelope.value"),
    )


def read_envelope(path: Path) -> EnvelopeContent:
    """Read and parse an envelope file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError("envelope", f"cannot read {path}: {exc.strerror}") from None
    return parse_envelope(text)


@dataclass(frozen=True)
class EnvelopeRecord:
    """An envelope in the log (no value)."""

    serial: str
    key: str
    slot: int
    count: int
    custodian: str
    component_kcv: str
    key_kcv: str
    path: str
    state: EnvelopeState
    ceremony: str
    created_at: str


@dataclass(frozen=True)
class EnvelopeEvent:
    """One signed-off step of an envelope's life."""

    serial: str
    event: EnvelopeState
    by: str
    witness: str | None
    at: str
    note: str


_DDL = """
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    count INTEGER NOT NULL,
    custodian TEXT NOT NULL,
    component_kcv TEXT NOT NULL,
    key_kcv TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    ceremony TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS envelope_events (
    serial TEXT NOT NULL REFERENCES envelopes(serial),
    event TEXT NOT NULL,
    by_custodian TEXT NOT NULL,
    witness TEXT,
    at TEXT NOT NULL,
    note TEXT NOT NULL
);
"""


def _shred(path: Path) -> None:
    """Overwrite a file with zeros, then remove it (best effort on journaling filesystems)."""
    try:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
    except FileNotFoundError:
        return


class EnvelopeLog:
    """Envelope files and their signed-off log, in the ceremony database at ``db_path``."""

    def __init__(
        self,
        db_path: Path,
        registry: CustodianRegistry,
        *,
        audit: AuditSink | None = None,
        now: Callable[[], str] = utc_now,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self._now = now
        self._conn = connect(db_path)
        self._conn.executescript(_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def create(
        self,
        out_dir: Path,
        *,
        key: str,
        algorithm: str,
        scheme: str,
        slot: int,
        count: int,
        threshold: int,
        custodian: str,
        value: bytes,
        component_kcv: str,
        key_kcv: str,
        kcv_method: str,
        actor: str,
        ceremony: str,
    ) -> EnvelopeRecord:
        """Write one envelope file into ``out_dir`` and log it as ``created``.

        The file is named after its serial (``ENV000123.envelope``).
        """
        when = self._now()
        with transaction(self._conn):
            cur = self._conn.execute(
                "INSERT INTO envelopes (serial, key, slot, count, custodian, component_kcv,"
                " key_kcv, path, state, ceremony, created_at)"
                " VALUES ('pending', ?, ?, ?, ?, ?, ?, '', ?, ?, ?)",
                (
                    key,
                    slot,
                    count,
                    custodian,
                    component_kcv,
                    key_kcv,
                    EnvelopeState.CREATED.value,
                    ceremony,
                    when,
                ),
            )
            serial = f"ENV{cur.lastrowid:06d}"
            path = Path(out_dir) / f"{serial}.envelope"
            self._conn.execute(
                "UPDATE envelopes SET serial = ?, path = ? WHERE seq = ?",
                (serial, str(path), cur.lastrowid),
            )
            self._event(serial, EnvelopeState.CREATED, actor, None, at=when, note="")
            content = EnvelopeContent(
                serial,
                key,
                algorithm,
                scheme,
                slot,
                count,
                threshold,
                custodian,
                component_kcv,
                key_kcv,
                kcv_method,
                when,
                value,
            )
            write_text_atomic(path, render_envelope(content))
            try:
                audit_or_refuse(
                    self.audit,
                    actor,
                    "envelope.create",
                    key,
                    "ok",
                    serial=serial,
                    component=f"{slot} of {count}",
                    custodian=custodian,
                    component_kcv=component_kcv,
                    ceremony=ceremony,
                )
            except BaseException:
                _shred(path)
                raise
        return self.get(serial)

    def _event(
        self, serial: str, event: EnvelopeState, by: str, witness: str | None, *, at: str, note: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO envelope_events VALUES (?, ?, ?, ?, ?, ?)",
            (serial, event.value, by, witness, at, note),
        )

    def get(self, serial: str) -> EnvelopeRecord:
        """The log record of envelope ``serial``."""
        row = self._conn.execute("SELECT * FROM envelopes WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            raise CeremonyError("envelope", f"unknown envelope {serial!r}")
        return EnvelopeRecord(
            row["serial"],
            row["key"],
            row["slot"],
            row["count"],
            row["custodian"],
            row["component_kcv"],
            row["key_kcv"],
            row["path"],
            EnvelopeState(row["state"]),
            row["ceremony"],
            row["created_at"],
        )

    def list(self, key: str | None = None) -> builtins.list[EnvelopeRecord]:
        """Every envelope (optionally of one ``label@vN``), by serial."""
        sql = "SELECT serial FROM envelopes"
        params: tuple[str, ...] = ()
        if key is not None:
            sql, params = sql + " WHERE key = ?", (key,)
        rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [self.get(r["serial"]) for r in rows]

    def events(self, serial: str) -> builtins.list[EnvelopeEvent]:
        """The signed-off steps of one envelope, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM envelope_events WHERE serial = ? ORDER BY rowid", (serial,)
        ).fetchall()
        return [
            EnvelopeEvent(
                r["serial"],
                EnvelopeState(r["event"]),
                r["by_custodian"],
                r["witness"],
                r["at"],
                r["note"],
            )
            for r in rows
        ]

    def sign_off(
        self,
        serial: str,
        event: EnvelopeState,
        *,
        by: str,
        witness: str | None = None,
        note: str = "",
    ) -> EnvelopeRecord:
        """Record the next step of an envelope, signed off by custodian ``by``.

        * ``handed-over``: ``by`` is the addressee receiving it;
        * ``opened``: ``by`` is the addressee or the addressee's backup;
        * ``destroyed``: ``by`` is the addressee or backup, and ``witness`` is
          another active custodian; the file is overwritten and removed.
        """
        record = self.get(serial)
        if event not in _NEXT[record.state]:
            raise CeremonyError(
                "envelope",
                f"{serial} is {record.state.value}; cannot record {event.value}",
            )
        signer = self.registry.check_may_act(by)
        addressee = self.registry.get(record.custodian)
        if event is EnvelopeState.HANDED_OVER and by != record.custodian:
            raise CustodianError(
                "by", f"{serial} is addressed to {record.custodian!r}; {by!r} cannot receive it"
            )
        if event is not EnvelopeState.HANDED_OVER and by not in (addressee.id, addressee.backup):
            raise CustodianError(
                "by", f"only {addressee.id!r} or their backup may sign off {serial} {event.value}"
            )
        if event is EnvelopeState.DESTROYED:
            if witness is None or witness == by:
                raise CustodianError("witness", f"destroying {serial} needs a second custodian")
            self.registry.check_may_act(witness)
        when = self._now()
        with transaction(self._conn):
            self._conn.execute(
                "UPDATE envelopes SET state = ? WHERE serial = ?", (event.value, serial)
            )
            self._event(serial, event, signer.id, witness, at=when, note=note)
            audit_or_refuse(
                self.audit,
                signer.id,
                f"envelope.{event.value}",
                record.key,
                "ok",
                serial=serial,
                component=f"{record.slot} of {record.count}",
                witness=witness,
            )
        if event is EnvelopeState.DESTROYED:
            _shred(Path(record.path))
        return self.get(serial)
