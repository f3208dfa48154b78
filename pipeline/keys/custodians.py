"""Key custodians: who may hold a component, who appointed them, who backs them up.

Rules (issue 4 "Ceremonies, custodians, personnel", after the seed's sections
3-5 and the PCI PIN / PCI Card Production logical-security principles of
DOMAIN.md section 2: split knowledge, dual control, documented custodians):

* every custodian has an id, a name, a :class:`CustodianRole`, an
  :class:`EmploymentType` and an :class:`Appointment` record (appointed by,
  date);
* **temporary staff and consultants cannot be appointed**;
* an appointment is made by an active key manager (the very first key
  manager, when none exists, is appointed by a named outside authority);
  nobody appoints or revokes themselves;
* **every custodian has a backup**, another custodian; a custodian whose
  backup is not (or no longer) an active custodian may not act until a backup
  is set;
* only key managers, custodians and backups hold components; auditors and
  operators never do (segregation of duties);
* **a custodian never holds two components of the same key label, across
  versions too**: each custodian is bound to one component slot of a label
  for ever (:meth:`CustodianRegistry.check_may_hold`).

The registry is a small SQLite database of its own (default
``ceremony.sqlite`` beside the key store, :func:`ceremony_db_path`) with
tables owned by this module; :mod:`pipeline.keys.envelopes` keeps its tables
in the same file.  Every change is appended to the audit trail (when one is
given) inside the database transaction: if the audit write fails, nothing is
changed (fail closed).

Example:
    >>> import tempfile, pathlib
    >>> reg = CustodianRegistry(pathlib.Path(tempfile.mkdtemp()) / "c.sqlite")
    >>> km = reg.appoint("km1", "Kim", CustodianRole.KEY_MANAGER, EmploymentType.EMPLOYEE,
    ...                  backup="km2", appointed_by="board:2024-01")
    >>> km.may_act  # its backup is not appointed yet
    False
    >>> _ = reg.appoint("km2", "Lee", CustodianRole.KEY_MANAGER, EmploymentType.EMPLOYEE,
    ...                 backup="km1", appointed_by="km1")
    >>> reg.get("km1").may_act
    True
"""

from __future__ import annotations

import builtins
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import date as date_type
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import AuditError, CustodianError, InvalidInputError
from pipeline.io.atomic import ensure_private_file

__all__ = [
    "COMPONENT_HOLDER_ROLES",
    "ELIGIBLE_EMPLOYMENT",
    "Appointment",
    "AuditSink",
    "Custodian",
    "CustodianRegistry",
    "CustodianRole",
    "CustodianStatus",
    "EmploymentType",
    "Holding",
    "ceremony_db_path",
    "check_appointment_date",
    "check_custodian_id",
    "utc_now",
]

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


class CustodianRole(Enum):
    """What a person does in key management."""

    KEY_MANAGER = "key-manager"  # appoints custodians, oversees ceremonies, may hold a component
    CUSTODIAN = "custodian"  # holds one component of a key
    BACKUP = "backup"  # stands in for a custodian
    AUDITOR = "auditor"  # witnesses and reviews; never holds a component
    OPERATOR = "operator"  # runs the system; never holds a component


class EmploymentType(Enum):
    """The person's relation to the organisation."""

    EMPLOYEE = "employee"
    CONTRACTOR = "contractor"
    TEMPORARY = "temporary"
    CONSULTANT = "consultant"


#: Employment types that may be appointed (temporary staff and consultants never).
ELIGIBLE_EMPLOYMENT: frozenset[EmploymentType] = frozenset(
    {EmploymentType.EMPLOYEE, EmploymentType.CONTRACTOR}
)

#: Roles that may hold a key component or share.
COMPONENT_HOLDER_ROLES: frozenset[CustodianRole] = frozenset(
    {CustodianRole.KEY_MANAGER, CustodianRole.CUSTODIAN, CustodianRole.BACKUP}
)


class CustodianStatus(Enum):
    """Whether the appointment stands."""

    ACTIVE = "active"
    REVOKED = "revoked"


class AuditSink(Protocol):
    """What this module needs of :class:`pipeline.audit.trail.AuditTrail`."""

    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> object:
        """Append one event; raise :class:`~pipeline.errors.AuditError` if it cannot."""
        ...


def utc_now() -> str:
    """The current UTC time as ISO-8601 seconds, e.g. ``2024-05-01T10:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_custodian_id(value: str, field: str = "custodian") -> str:
    """Validate a custodian id: 1..32 of ``a-z 0-9 . _ -``, starting alphanumeric.

    Example:
        >>> check_custodian_id("alice")
        'alice'
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInputError(field, f"invalid custodian id {value!r}")
    return value


def check_appointment_date(value: str, field: str = "date") -> str:
    """Validate an appointment date: a real calendar date written ``YYYY-MM-DD``.

    Example:
        >>> check_appointment_date("2024-02-29")
        '2024-02-29'
        >>> check_appointment_date("2026-02-30")
        Traceback (most recent call last):
        pipeline.errors.InvalidInputError: date: '2026-02-30' is not a YYYY-MM-DD calendar date
    """
    try:
        ok = isinstance(value, str) and date_type.fromisoformat(value).isoformat() == value
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInputError(field, f"{value!r} is not a YYYY-MM-DD calendar date")
    return value


def ceremony_db_path(store_dir: Path) -> Path:
    """The custodian / envelope database kept beside a key store in ``store_dir``.

    Example:
        >>> ceremony_db_path(Path("/var/keys")).as_posix()
        '/var/keys/ceremony.sqlite'
    """
    return Path(store_dir) / "ceremony.sqlite"


@dataclass(frozen=True)
class Appointment:
    """Who appointed the custodian, and when (ISO date)."""

    appointed_by: str
    date: str


@dataclass(frozen=True)
class Custodian:
    """One person in the registry.  ``may_act`` is computed by the registry."""

    id: str
    name: str
    role: CustodianRole
    employment: EmploymentType
    backup: str
    appointment: Appointment
    status: CustodianStatus
    revoked_by: str | None = None
    revoked_at: str | None = None
    revocation_reason: str | None = None
    may_act: bool = False

    @property
    def active(self) -> bool:
        """True while the appointment stands."""
        return self.status is CustodianStatus.ACTIVE


@dataclass(frozen=True)
class Holding:
    """One component (or share) slot of one key version held by one custodian."""

    label: str
    version: int
    slot: int
    custodian: str
    kind: str  # "entry" or "output"
    ceremony: str
    recorded_at: str


_DDL = """
CREATE TABLE IF NOT EXISTS custodians (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    employment TEXT NOT NULL,
    backup TEXT NOT NULL,
    appointed_by TEXT NOT NULL,
    appointed_on TEXT NOT NULL,
    status TEXT NOT NULL,
    revoked_by TEXT,
    revoked_at TEXT,
    revocation_reason TEXT
);
CREATE TABLE IF NOT EXISTS component_holdings (
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    custodian TEXT NOT NULL REFERENCES custodians(id),
    kind TEXT NOT NULL,
    ceremony TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (label, version, slot, custodian, kind)
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the ceremony database at ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ensure_private_file(Path(path))
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def audit_or_refuse(
    audit: AuditSink | None, actor: str, action: str, subject: str, result: str, **details: Any
) -> None:
    """Append an audit event; any failure becomes :class:`AuditError` (fail closed)."""
    if audit is None:
        return
    try:
        audit.append(actor, action, subject, result, **details)
    except AuditError:
        raise
    except Exception as exc:  # the trail could not be written: refuse the action
        raise AuditError("audit", f"{action} on {subject} refused: {type(exc).__name__}") from exc


class CustodianRegistry:
    """The custodian registry and the component-holding ledger (one SQLite file).

    ``now`` returns ISO-8601 UTC timestamps (injectable for tests).
    """

    def __init__(
        self, path: Path, *, audit: AuditSink | None = None, now: Callable[[], str] = utc_now
    ) -> None:
        self.path = Path(path)
        self.audit = audit
        self._now = now
        self._conn = connect(self.path)
        self._conn.executescript(_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> CustodianRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries -----------------------------------------------------------------

    def _row(self, custodian_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM custodians WHERE id = ?", (custodian_id,)
        ).fetchone()
        return row

    def _from_row(self, row: sqlite3.Row) -> Custodian:
        status = CustodianStatus(row["status"])
        backup = self._row(row["backup"])
        may_act = (
            status is CustodianStatus.ACTIVE
            and backup is not None
            and backup["status"] == CustodianStatus.ACTIVE.value
        )
        return Custodian(
            id=row["id"],
            name=row["name"],
            role=CustodianRole(row["role"]),
            employment=EmploymentType(row["employment"]),
            backup=row["backup"],
            appointment=Appointment(row["appointed_by"], row["appointed_on"]),
            status=status,
            revoked_by=row["revoked_by"],
            revoked_at=row["revoked_at"],
            revocation_reason=row["revocation_reason"],
            may_act=may_act,
        )

    def get(self, custodian_id: str) -> Custodian:
        """The custodian with ``custodian_id`` (CustodianError if unknown)."""
        row = self._row(custodian_id)
        if row is None:
            raise CustodianError("custodian", f"unknown custodian {custodian_id!r}")
        return self._from_row(row)

    def list(self, *, include_revoked: bool = True) -> list[Custodian]:
        """Every custodian, by id."""
        rows = self._conn.execute("SELECT * FROM custodians ORDER BY id").fetchall()
        found = [self._from_row(r) for r in rows]
        return [c for c in found if include_revoked or c.active]

    def _active_key_managers(self) -> builtins.list[str]:
        rows = self._conn.execute(
            "SELECT id FROM custodians WHERE role = ? AND status = ?",
            (CustodianRole.KEY_MANAGER.value, CustodianStatus.ACTIVE.value),
        ).fetchall()
        return [r["id"] for r in rows]

    # --- appointment -----------------------------------------------------------------

    def appoint(
        self,
        custodian_id: str,
        name: str,
        role: CustodianRole,
        employment: EmploymentType,
        *,
        backup: str,
        appointed_by: str,
        date: str | None = None,
    ) -> Custodian:
        """Appoint a custodian (refusals raise :class:`~pipeline.errors.CustodianError`).

        ``backup`` may name a custodian not appointed yet; until it is, the new
        custodian may not act.  ``date`` defaults to today (UTC).
        """
        check_custodian_id(custodian_id)
        check_custodian_id(backup, "backup")
        if not isinstance(role, CustodianRole) or not isinstance(employment, EmploymentType):
            raise InvalidInputError("role", "role and employment must be enum members")
        if not name or not name.strip():
            raise InvalidInputError("name", "must not be empty")
        if employment not in ELIGIBLE_EMPLOYMENT:
            raise CustodianError(
                "employment",
                f"{employment.value} staff cannot be appointed custodians "
                f"(custodian {custodian_id!r})",
            )
        if backup == custodian_id:
            raise CustodianError("backup", f"custodian {custodian_id!r} cannot be their own backup")
        if appointed_by == custodian_id:
            raise CustodianError("appointed_by", f"{custodian_id!r} cannot appoint themselves")
        when = check_appointment_date(date) if date is not None else self._now()[:10]
        with transaction(self._conn):
            if self._row(custodian_id) is not None:
                raise CustodianError("custodian", f"{custodian_id!r} is already in the registry")
            managers = self._active_key_managers()
            if managers:
                if appointed_by not in managers:
                    raise CustodianError(
                        "appointed_by",
                        f"{appointed_by!r} is not an active key manager",
                    )
            elif role is not CustodianRole.KEY_MANAGER:
                raise CustodianError(
                    "role",
                    "the first appointment must be a key manager "
                    f"(got {role.value} for {custodian_id!r})",
                )
            backup_row = self._row(backup)
            if backup_row is not None and backup_row["status"] != CustodianStatus.ACTIVE.value:
                raise CustodianError("backup", f"{backup!r} is not an active custodian")
            self._conn.execute(
                "INSERT INTO custodians (id, name, role, employment, backup, appointed_by,"
                " appointed_on, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    custodian_id,
                    name.strip(),
                    role.value,
                    employment.value,
                    backup,
                    appointed_by,
                    when,
                    CustodianStatus.ACTIVE.value,
                ),
            )
            audit_or_refuse(
                self.audit,
                appointed_by,
                "custodian.appoint",
                f"custodian:{custodian_id}",
                "ok",
                role=role.value,
                employment=employment.value,
                backup=backup,
                date=when,
            )
        return self.get(custodian_id)

    def set_backup(self, custodian_id: str, backup: str, *, by: str) -> Custodian:
        """Name a new backup for ``custodian_id`` (by an active key manager)."""
        check_custodian_id(backup, "backup")
        if backup == custodian_id:
            raise CustodianError("backup", f"custodian {custodian_id!r} cannot be their own backup")
        with transaction(self._conn):
            self.get(custodian_id)
            self._require_manager(by, custodian_id)
            backup_row = self._row(backup)
            if backup_row is None or backup_row["status"] != CustodianStatus.ACTIVE.value:
                raise CustodianError("backup", f"{backup!r} is not an active custodian")
            self._conn.execute(
                "UPDATE custodians SET backup = ? WHERE id = ?", (backup, custodian_id)
            )
            audit_or_refuse(
                self.audit,
                by,
                "custodian.set-backup",
                f"custodian:{custodian_id}",
                "ok",
                backup=backup,
            )
        return self.get(custodian_id)

    def revoke(self, custodian_id: str, *, by: str, reason: str) -> Custodian:
        """Revoke an appointment (by an active key manager other than the custodian)."""
        if not reason or not reason.strip():
            raise InvalidInputError("reason", "a revocation needs a reason")
        with transaction(self._conn):
            current = self.get(custodian_id)
            if not current.active:
                raise CustodianError("custodian", f"{custodian_id!r} is already revoked")
            self._require_manager(by, custodian_id)
            self._conn.execute(
                "UPDATE custodians SET status = ?, revoked_by = ?, revoked_at = ?,"
                " revocation_reason = ? WHERE id = ?",
                (CustodianStatus.REVOKED.value, by, self._now(), reason.strip(), custodian_id),
            )
            audit_or_refuse(
                self.audit,
                by,
                "custodian.revoke",
                f"custodian:{custodian_id}",
                "ok",
                reason=reason.strip(),
            )
        return self.get(custodian_id)

    def _require_manager(self, by: str, subject: str) -> None:
        if by == subject:
            raise CustodianError("by", f"{by!r} cannot act on their own appointment")
        if by not in self._active_key_managers():
            raise CustodianError("by", f"{by!r} is not an active key manager")

    # --- eligibility --------------------------------------------------------------------

    def check_may_act(self, custodian_id: str) -> Custodian:
        """The custodian, if active and backed up by an active custodian; else CustodianError."""
        custodian = self.get(custodian_id)
        if not custodian.active:
            raise CustodianError("custodian", f"{custodian_id!r} is revoked")
        if not custodian.may_act:
            raise CustodianError(
                "backup",
                f"custodian {custodian_id!r} has no active backup ({custodian.backup!r})",
            )
        return custodian

    def check_may_hold(self, custodian_id: str, label: str, slot: int) -> Custodian:
        """Check ``custodian_id`` may hold component ``slot`` of key ``label``.

        Refused for auditors and operators, for custodians who may not act, and
        for anyone who holds (or held, in any version) another slot of ``label``.
        """
        custodian = self.check_may_act(custodian_id)
        if custodian.role not in COMPONENT_HOLDER_ROLES:
            raise CustodianError(
                "custodian",
                f"{custodian_id!r} is an {custodian.role.value} and cannot hold a component",
            )
        other = self._conn.execute(
            "SELECT version, slot FROM component_holdings WHERE label = ? AND custodian = ?"
            " AND slot != ? ORDER BY version LIMIT 1",
            (label, custodian_id, slot),
        ).fetchone()
        if other is not None:
            raise CustodianError(
                "custodian",
                f"{custodian_id!r} holds component {other['slot']} of {label}@v{other['version']}"
                f" and cannot hold component {slot} of the same key",
            )
        return custodian

    def check_distinct_holders(self, label: str, holders: Sequence[tuple[int, str]]) -> None:
        """Check a whole set of ``(slot, custodian)`` for one key version.

        Every slot has a different custodian, and each may hold its slot.
        """
        ids = [c for _, c in holders]
        slots = [s for s, _ in holders]
        if len(set(slots)) != len(slots):
            raise CustodianError("components", f"component numbers repeat: {sorted(slots)}")
        if len(set(ids)) != len(ids):
            dup = sorted({c for c in ids if ids.count(c) > 1})
            raise CustodianError("custodian", f"{dup[0]!r} cannot hold two components of {label}")
        for slot, custodian_id in holders:
            self.check_may_hold(custodian_id, label, slot)

    def record_holdings(
        self,
        label: str,
        version: int,
        holders: Sequence[tuple[int, str]],
        *,
        kind: str,
        ceremony: str,
    ) -> None:
        """Record who holds which slot of ``label@v{version}`` (after a successful ceremony)."""
        when = self._now()
        with transaction(self._conn):
            for slot, custodian_id in holders:
                self._conn.execute(
                    "INSERT OR IGNORE INTO component_holdings VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (label, version, slot, custodian_id, kind, ceremony, when),
                )

    def holdings(self, label: str | None = None) -> builtins.list[Holding]:
        """Recorded holdings (optionally of one label), by label, version, slot."""
        sql = "SELECT * FROM component_holdings"
        params: tuple[str, ...] = ()
        if label is not None:
            sql += " WHERE label = ?"
            params = (label,)
        rows = self._conn.execute(sql + " ORDER BY label, version, slot, custodian", params)
        return [
            Holding(
                r["label"],
                r["version"],
                r["slot"],
                r["custodian"],
                r["kind"],
                r["ceremony"],
                r["recorded_at"],
            )
            for r in rows.fetchall()
        ]
