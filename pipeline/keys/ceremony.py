"""Key ceremonies under dual control, described in one YAML plan.

Issue 4 "Ceremonies, custodians, personnel" (seed sections 3-5; DOMAIN.md
section 2: split knowledge, dual control, a KCV checked on every entry):

* **Key entry from components**: 2..3 full-length XOR components or m-of-n
  Shamir shares (:mod:`pipeline.keys.components`).  Each component is entered
  by a *different* custodian (hidden prompt, or a file for rehearsals and
  tests); its KCV is shown and the custodian confirms it (and, where the
  sender's KCV is in the plan, it must match); the combined key's KCV must
  equal the expected one.  A custodian never holds two components of the
  same key label, in any version (:meth:`CustodianRegistry.check_may_hold`).
  Any KCV mismatch aborts the step, records a :class:`Discrepancy` for the
  sender, and stores nothing.
* **HMK entry** from components, the same way (AES-256, 5-byte AES-CMAC KCV,
  :mod:`pipeline.keys.hmk`); the key store is opened with the entered HMK.
* **Key output as components**: a new key is generated as random components,
  each written to its own envelope (:mod:`pipeline.keys.envelopes`) with its
  KCV and serial, and entered into the store as their combination
  (``generate-components``); an existing exportable key is split by the
  store itself (:meth:`KeyStore.export_components`) and its components go
  to envelopes the same way (``export-components``).  Either way every
  custodian gets one envelope and the holding ledger refuses anyone who
  holds another component of the same label.
* **Dual control**: every plan names an ``officer`` and a ``witness``, two
  different active custodians; a ceremony in which fewer than two people
  take part is refused ("a single custodian cannot complete a ceremony").
* **Plans**: a ceremony is one YAML file (``config/demo/ceremony-plan.yaml``
  is a complete example) run by ``cardprep keys ceremony --plan PLAN``;
  ``--rehearse`` runs every step against a throwaway store and registry and
  prints what would happen.

Every step appends audit events with the custodian ids, the key label,
version and KCV, never a key or component value.  Events raised before the
HMK is entered (when there is no audit key yet) are held by a
:class:`DeferredAudit` and written, in order, as soon as the trail exists.

Example (plan parsing is pure):
    >>> plan = parse_plan({"ceremony": "c1", "officer": "km1", "witness": "aud1",
    ...     "steps": [{"action": "rotate", "label": "demo-tk"}]})
    >>> plan.steps[0].action, plan.steps[0].label
    (<StepAction.ROTATE: 'rotate'>, 'demo-tk')
"""

from __future__ import annotations

import contextlib
import getpass
import hmac
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from pipeline.crypto.kcv import kcv as compute_kcv
from pipeline.errors import (
    AuditError,
    CardprepError,
    CeremonyError,
    ConfigError,
    InvalidInputError,
    KeyStoreError,
)
from pipeline.io.atomic import write_text_atomic
from pipeline.keys.components import (
    Share,
    parse_component,
    parse_share,
    shamir_combine,
    shamir_split,
    xor_combine,
    xor_split,
)
from pipeline.keys.custodians import (
    AuditSink,
    CustodianRegistry,
    CustodianRole,
    EmploymentType,
    audit_or_refuse,
    ceremony_db_path,
    connect,
    transaction,
    utc_now,
)
from pipeline.keys.envelopes import EnvelopeLog
from pipeline.keys.hmk import HMK_KCV_LENGTH, HMK_KCV_METHOD, HMK_LENGTH
from pipeline.keys.model import Exportability, KeyAlgorithm, KeyRecord, KeyRef, KeyRole, KeyUsage
from pipeline.keys.store import KeyStore
from pipeline.yamlconf import safe_load

__all__ = [
    "AnswersPrompter",
    "AppointmentSpec",
    "Ceremony",
    "CeremonyContext",
    "CeremonyPlan",
    "ComponentSpec",
    "ConsolePrompter",
    "DeferredAudit",
    "Discrepancy",
    "DiscrepancyLog",
    "Prompter",
    "Scheme",
    "Step",
    "StepAction",
    "StepResult",
    "dual_actor",
    "kcv_method_of",
    "key_kcv",
    "load_answers",
    "load_plan",
    "parse_kcv",
    "parse_plan",
]

HMK_LABEL = "hmk"

# --- KCVs -----------------------------------------------------------------------


def kcv_method_of(algorithm: KeyAlgorithm) -> str:
    """The project KCV method for a symmetric key algorithm (:mod:`pipeline.crypto.kcv`).

    Example:
        >>> kcv_method_of(KeyAlgorithm.TDES2), kcv_method_of(KeyAlgorithm.AES256)
        ('tdes', 'aes-cmac')
    """
    if algorithm in (KeyAlgorithm.TDES2, KeyAlgorithm.TDES3):
        return "tdes"
    if algorithm in (KeyAlgorithm.AES128, KeyAlgorithm.AES192, KeyAlgorithm.AES256):
        return "aes-cmac"
    if algorithm is KeyAlgorithm.SM4:
        return "sm4"
    raise InvalidInputError("algorithm", f"{algorithm.value} keys are not entered as components")


def key_kcv(algorithm: KeyAlgorithm | None, value: bytes, length: int = 3) -> bytes:
    """KCV of a key, component or share value; ``algorithm=None`` means the HMK.

    Example:
        >>> key_kcv(KeyAlgorithm.TDES2, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex()
        '08d7b4'
    """
    if algorithm is None:
        return compute_kcv(value, HMK_KCV_METHOD, length)
    return compute_kcv(value, kcv_method_of(algorithm), length)


def parse_kcv(text: object, field_name: str = "kcv") -> bytes:
    """Parse a KCV written as 4..10 hex digits (2..5 bytes).

    Example:
        >>> parse_kcv("08d7b4").hex().upper()
        '08D7B4'
    """
    if not isinstance(text, str):
        raise ConfigError(field_name, f"expected hex digits, got {type(text).__name__}")
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(field_name, f"expected hex digits, got {text!r}") from None
    if not 2 <= len(value) <= 5:
        raise ConfigError(field_name, f"a KCV is 2..5 bytes, got {len(value)}")
    return value


def dual_actor(by: str, witness: str) -> str:
    """The actor string recorded for an action under dual control.

    Example:
        >>> dual_actor("alice", "bob")
        'alice+bob'
    """
    return f"{by}+{witness}"


# --- the plan -----------------------------------------------------------------------


class StepAction(Enum):
    """What one plan step does."""

    APPOINT = "appoint"
    ENTER_HMK = "enter-hmk"
    ENTER_KEY = "enter-key"
    IMPORT_KEY_BLOCK = "import-key-block"
    GENERATE = "generate"
    GENERATE_COMPONENTS = "generate-components"
    EXPORT_KEY_BLOCK = "export-key-block"
    EXPORT_COMPONENTS = "export-components"
    ROTATE = "rotate"
    SUSPEND = "suspend"
    RESUME = "resume"
    RETIRE = "retire"
    SCHEDULE_DESTRUCTION = "schedule-destruction"
    RESTORE = "restore"
    DESTROY = "destroy"


class Scheme(Enum):
    """How a key is split: XOR components or Shamir shares."""

    XOR = "xor"
    SHAMIR = "shamir"


@dataclass(frozen=True)
class ComponentSpec:
    """One component to enter: its number, custodian, optional file and sender's KCV."""

    slot: int
    custodian: str
    file: str | None = None
    kcv: bytes | None = None


@dataclass(frozen=True)
class AppointmentSpec:
    """A custodian appointment made by an ``appoint`` step."""

    id: str
    name: str
    role: CustodianRole
    employment: EmploymentType
    backup: str
    appointed_by: str
    date: str | None = None


@dataclass(frozen=True)
class Step:
    """One step of a plan; which fields matter depends on ``action``."""

    number: int
    action: StepAction
    label: str | None = None
    key: str | None = None  # "label" or "label@vN" of an existing key
    algorithm: KeyAlgorithm | None = None
    usage: KeyUsage | None = None
    role: KeyRole | None = None
    owner: str | None = None
    exportability: Exportability = Exportability.E
    mode_of_use: str = "N"
    bits: int | None = None
    expected_kcv: bytes | None = None
    sender: str | None = None
    scheme: Scheme = Scheme.XOR
    threshold: int | None = None
    components: tuple[ComponentSpec, ...] = ()
    custodians: tuple[str, ...] = ()
    file: str | None = None
    kbpk: str | None = None
    wait_days: int = 7
    reason: str = ""
    by: str | None = None
    witness: str | None = None
    appointments: tuple[AppointmentSpec, ...] = ()

    @property
    def subject(self) -> str:
        """The key the step acts on, for reports."""
        if self.action is StepAction.ENTER_HMK:
            return HMK_LABEL
        if self.action is StepAction.APPOINT:
            return ",".join(a.id for a in self.appointments)
        return self.label or self.key or "?"


@dataclass(frozen=True)
class CeremonyPlan:
    """A whole ceremony: id, the officer and witness (dual control), and the steps."""

    ceremony: str
    officer: str
    witness: str
    steps: tuple[Step, ...]
    description: str = ""


_STEP_FIELDS = frozenset(
    {
        "action", "label", "key", "algorithm", "usage", "role", "owner", "exportability",
        "mode_of_use", "bits", "expected_kcv", "sender", "scheme", "threshold",
        "components", "custodians", "file", "kbpk", "wait_days", "reason", "by", "witness",
        "appointments",
    }
)  # fmt: skip
_PLAN_FIELDS = frozenset({"ceremony", "officer", "witness", "steps", "description"})


def _enum(cls: type[Any], value: object, where: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise ConfigError(where, f"{value!r} is not one of {allowed}") from None


def _str(raw: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{name}", "is required")
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{name}", f"expected a string, got {type(value).__name__}")
    return str(value)


def _parse_components(raw: object, where: str) -> tuple[ComponentSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}.components", "expected a non-empty list")
    specs = []
    for i, item in enumerate(raw, 1):
        at = f"{where}.components[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(at, "expected a mapping")
        unknown = set(item) - {"custodian", "file", "kcv", "slot"}
        if unknown:
            raise ConfigError(at, f"unknown fields {sorted(unknown)}")
        custodian = _str(item, "custodian", at, required=True)
        assert custodian is not None
        slot = item.get("slot", i)
        if not isinstance(slot, int) or slot < 1:
            raise ConfigError(f"{at}.slot", f"expected a positive integer, got {slot!r}")
        kcv_text = item.get("kcv")
        specs.append(
            ComponentSpec(
                slot=slot,
                custodian=custodian,
                file=_str(item, "file", at),
                kcv=parse_kcv(kcv_text, f"{at}.kcv") if kcv_text is not None else None,
            )
        )
    return tuple(specs)


def _parse_appointments(raw: object, where: str) -> tuple[AppointmentSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}.appointments", "expected a non-empty list")
    out = []
    for i, item in enumerate(raw, 1):
        at = f"{where}.appointments[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(at, "expected a mapping")
        unknown = set(item) - {"id", "name", "role", "employment", "backup", "appointed_by", "date"}
        if unknown:
            raise ConfigError(at, f"unknown fields {sorted(unknown)}")
        names = ("id", "name", "backup", "appointed_by", "date")
        values = {k: _str(item, k, at, required=k != "date") for k in names}
        out.append(
            AppointmentSpec(
                id=str(values["id"]),
                name=str(values["name"]),
                role=_enum(CustodianRole, item.get("role"), f"{at}.role"),
                employment=_enum(EmploymentType, item.get("employment"), f"{at}.employment"),
                backup=str(values["backup"]),
                appointed_by=str(values["appointed_by"]),
                date=values["date"],
            )
        )
    return tuple(out)


def _require(step: Step, *names: str) -> None:
    missing = [n for n in names if getattr(step, n) in (None, (), "")]
    if missing:
        raise ConfigError(f"steps[{step.number}]", f"{step.action.value} needs {missing}")


def parse_step(raw: Mapping[str, Any], number: int) -> Step:
    """Validate one plan step (a mapping from YAML).  Unknown fields are refused."""
    where = f"steps[{number}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "expected a mapping")
    unknown = set(raw) - _STEP_FIELDS
    if unknown:
        raise ConfigError(where, f"unknown fields {sorted(unknown)}")
    action = _enum(StepAction, raw.get("action"), f"{where}.action")
    kwargs: dict[str, Any] = {"number": number, "action": action}
    for name in ("label", "key", "owner", "sender", "file", "kbpk", "by", "witness", "reason"):
        value = _str(raw, name, where)
        if value is not None:
            kwargs[name] = value
    if "mode_of_use" in raw:
        kwargs["mode_of_use"] = _str(raw, "mode_of_use", where)
    if "algorithm" in raw:
        kwargs["algorithm"] = _enum(KeyAlgorithm, raw["algorithm"], f"{where}.algorithm")
    if "usage" in raw:
        kwargs["usage"] = _enum(KeyUsage, raw["usage"], f"{where}.usage")
    if "role" in raw:
        kwargs["role"] = _enum(KeyRole, raw["role"], f"{where}.role")
    if "exportability" in raw:
        kwargs["exportability"] = _enum(Exportability, raw["exportability"], f"{where}.export")
    if "scheme" in raw:
        kwargs["scheme"] = _enum(Scheme, raw["scheme"], f"{where}.scheme")
    for name in ("bits", "threshold", "wait_days"):
        if name in raw:
            value = raw[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{name}", f"expected a non-negative integer: {value!r}")
            kwargs[name] = value
    if "expected_kcv" in raw:
        kwargs["expected_kcv"] = parse_kcv(raw["expected_kcv"], f"{where}.expected_kcv")
    if "components" in raw:
        kwargs["components"] = _parse_components(raw["components"], where)
    if "custodians" in raw:
        names = raw["custodians"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.custodians", "expected a list of custodian ids")
        kwargs["custodians"] = tuple(names)
    if "appointments" in raw:
        kwargs["appointments"] = _parse_appointments(raw["appointments"], where)
    step = Step(**kwargs)
    _check_step(step)
    return step


def _check_step(step: Step) -> None:
    a = StepAction
    needs: dict[StepAction, tuple[str, ...]] = {
        a.APPOINT: ("appointments",),
        a.ENTER_HMK: ("components", "expected_kcv"),
        a.ENTER_KEY: ("label", "algorithm", "usage", "role", "owner", "components",
                      "expected_kcv", "sender"),
        a.IMPORT_KEY_BLOCK: ("label", "file", "kbpk", "role", "owner", "sender"),
        a.GENERATE: ("label", "algorithm", "usage", "role", "owner"),
        a.GENERATE_COMPONENTS: ("label", "algorithm", "usage", "role", "owner", "custodians"),
        a.EXPORT_KEY_BLOCK: ("key", "kbpk", "file"),
        a.EXPORT_COMPONENTS: ("key", "custodians"),
        a.ROTATE: ("label",),
        a.SUSPEND: ("key",),
        a.RESUME: ("key",),
        a.RETIRE: ("key",),
        a.SCHEDULE_DESTRUCTION: ("key",),
        a.RESTORE: ("key",),
        a.DESTROY: ("key",),
    }  # fmt: skip
    _require(step, *needs[step.action])
    if step.scheme is Scheme.SHAMIR:
        if step.threshold is None or step.threshold < 2:
            raise ConfigError(f"steps[{step.number}].threshold", "Shamir needs a threshold >= 2")
    elif step.threshold is not None:
        raise ConfigError(f"steps[{step.number}].threshold", "only Shamir shares have a threshold")


def parse_plan(raw: object) -> CeremonyPlan:
    """Validate a whole plan (the mapping loaded from YAML).

    The officer and the witness must be two different people: dual control.
    """
    if not isinstance(raw, dict):
        raise ConfigError("plan", f"expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _PLAN_FIELDS
    if unknown:
        raise ConfigError("plan", f"unknown fields {sorted(unknown)}")
    ceremony = _str(raw, "ceremony", "plan", required=True)
    officer = _str(raw, "officer", "plan", required=True)
    witness = _str(raw, "witness", "plan", required=True)
    assert ceremony is not None and officer is not None and witness is not None
    if officer == witness:
        raise CeremonyError(
            "witness", f"dual control: the witness must not be the officer ({officer!r})"
        )
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError("plan.steps", "expected a non-empty list")
    return CeremonyPlan(
        ceremony=ceremony,
        officer=officer,
        witness=witness,
        steps=tuple(parse_step(s, i) for i, s in enumerate(steps, 1)),
        description=str(raw.get("description", "")),
    )


def load_plan(path: Path) -> CeremonyPlan:
    """Read and validate a plan file."""
    try:
        raw = safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("plan", f"cannot read {path} ({type(exc).__name__})") from None
    except yaml.YAMLError:
        raise ConfigError("plan", f"{path} is not valid YAML") from None
    return parse_plan(raw)


# --- prompts ---------------------------------------------------------------------------


class Prompter(Protocol):
    """Where component values and confirmations come from, and where messages go."""

    def secret(self, prompt_id: str, prompt: str) -> str:
        """A hidden answer (a component value)."""
        ...

    def confirm(self, prompt_id: str, prompt: str) -> bool:
        """A yes/no answer."""
        ...

    def show(self, text: str) -> None:
        """Print a message (never a secret)."""
        ...


_YES = frozenset({"y", "yes", "true", "1"})


class ConsolePrompter:
    """Interactive prompts: component values by :func:`getpass.getpass` (hidden).

    When stdin is not a terminal, answers are read line by line from it
    (``secret`` still never echoes).
    """

    def __init__(self, out: IO[str] | None = None, stdin: IO[str] | None = None) -> None:
        self._out = out or sys.stdout
        self._in = stdin or sys.stdin

    def _line(self, prompt: str) -> str:
        self._out.write(prompt)
        self._out.flush()
        line = self._in.readline()
        if not line:
            raise CeremonyError("prompt", f"no answer (end of input) to {prompt.strip()!r}")
        return line.rstrip("\n")

    def secret(self, prompt_id: str, prompt: str) -> str:
        if self._in.isatty():
            return getpass.getpass(prompt + ": ")
        return self._line(prompt + ": ")

    def confirm(self, prompt_id: str, prompt: str) -> bool:
        return self._line(prompt + " [y/N] ").strip().lower() in _YES

    def show(self, text: str) -> None:
        print(text, file=self._out)


class AnswersPrompter:
    """Unattended prompts answered from a mapping (``--answers FILE``).

    Keys are prompt ids (``component:<label>:<n>``, ``confirm:<label>:<n>``)
    or a prefix ending in ``*`` (``confirm:*``).  A secret answer is hex, or
    ``file:PATH`` (relative to ``base``).
    """

    def __init__(
        self, answers: Mapping[str, str], *, base: Path = Path(), out: IO[str] | None = None
    ) -> None:
        self._answers = dict(answers)
        self._base = base
        self._out = out or sys.stdout

    def _answer(self, prompt_id: str) -> str:
        if prompt_id in self._answers:
            return self._answers[prompt_id]
        for key in sorted(self._answers, key=len, reverse=True):
            if key.endswith("*") and prompt_id.startswith(key[:-1]):
                return self._answers[key]
        raise CeremonyError("answers", f"no answer for {prompt_id!r}")

    def secret(self, prompt_id: str, prompt: str) -> str:
        value = self._answer(prompt_id)
        if value.startswith("file:"):
            return _read_text(self._base / value[5:], prompt_id)
        return value

    def confirm(self, prompt_id: str, prompt: str) -> bool:
        answer = self._answer(prompt_id).strip().lower() in _YES
        self._out.write(f"{prompt} [y/N] {'y' if answer else 'n'} (from answers)\n")
        return answer

    def show(self, text: str) -> None:
        print(text, file=self._out)


def load_answers(path: Path) -> dict[str, str]:
    """Read an answers file: a YAML mapping of prompt id -> answer."""
    try:
        raw = safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError("answers", f"cannot read {path} ({type(exc).__name__})") from None
    except yaml.YAMLError:
        raise ConfigError("answers", f"{path} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError("answers", "expected a mapping of prompt id -> answer")
    return {
        str(k): ("yes" if v is True else "no" if v is False else str(v)) for k, v in raw.items()
    }


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CeremonyError(what, f"cannot read {path} ({type(exc).__name__})") from None


# --- audit before the trail exists -------------------------------------------------


class DeferredAudit:
    """An audit sink that holds events until the trail can be written.

    Before the HMK is entered there is no audit key, so no trail; the events
    of the first steps (appointments, component KCV confirmations) wait here
    and are written in order by :meth:`attach`.  Once attached, events go
    straight through (fail closed).  Events never carry secrets, so holding
    them in memory is harmless.
    """

    def __init__(self, sink: AuditSink | None = None) -> None:
        self._sink = sink
        self._pending: list[tuple[str, str, str, str, dict[str, Any]]] = []

    @property
    def attached(self) -> bool:
        """True once a real trail receives events."""
        return self._sink is not None

    @property
    def pending(self) -> int:
        """How many events wait for the trail."""
        return len(self._pending)

    def append(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        if self._sink is None:
            self._pending.append((actor, action, subject, result, dict(details)))
            return
        self._sink.append(actor, action, subject, result, **details)

    def attach(self, sink: AuditSink) -> None:
        """Write every held event to ``sink``, then send new events there."""
        while self._pending:
            actor, action, subject, result, details = self._pending[0]
            audit_or_refuse(sink, actor, action, subject, result, deferred=True, **details)
            self._pending.pop(0)
        self._sink = sink


# --- discrepancies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Discrepancy:
    """A failed check reported back to the sender of a key (KCVs only)."""

    ceremony: str
    step: int
    key: str
    sender: str
    kind: str  # component-kcv | combined-kcv | not-confirmed | key-block
    expected: str
    actual: str
    recorded_by: str
    recorded_at: str


_DISCREPANCY_DDL = """
CREATE TABLE IF NOT EXISTS discrepancies (
    ceremony TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, sender TEXT NOT NULL,
    kind TEXT NOT NULL, expected TEXT NOT NULL, actual TEXT NOT NULL,
    recorded_by TEXT NOT NULL, recorded_at TEXT NOT NULL
);
"""


class DiscrepancyLog:
    """Discrepancies to report to senders, in the ceremony database."""

    def __init__(self, db_path: Path, *, audit: AuditSink | None = None) -> None:
        self.audit = audit
        self._conn = connect(db_path)
        self._conn.executescript(_DISCREPANCY_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def record(self, d: Discrepancy) -> Discrepancy:
        """Store ``d`` and audit it; committed even though the step itself aborts."""
        with transaction(self._conn):
            self._conn.execute(
                "INSERT INTO discrepancies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (d.ceremony, d.step, d.key, d.sender, d.kind, d.expected, d.actual,
                 d.recorded_by, d.recorded_at),
            )  # fmt: skip
            audit_or_refuse(
                self.audit, d.recorded_by, "ceremony.discrepancy", d.key, "recorded",
                ceremony=d.ceremony, step=d.step, sender=d.sender, kind=d.kind,
                expected_kcv=d.expected, actual_kcv=d.actual,
            )  # fmt: skip
        return d

    def list(self, sender: str | None = None) -> list[Discrepancy]:
        """Recorded discrepancies (optionally for one sender), oldest first."""
        sql = "SELECT * FROM discrepancies"
        params: tuple[str, ...] = ()
        if sender is not None:
            sql, params = sql + " WHERE sender = ?", (sender,)
        rows = self._conn.execute(sql + " ORDER BY rowid", params).fetchall()
        return [Discrepancy(*tuple(r)) for r in rows]


# --- running a ceremony -----------------------------------------------------------------------


@dataclass
class CeremonyContext:
    """What a ceremony acts on.

    ``store`` may be ``None`` until an ``enter-hmk`` step runs
    ``open_with_hmk(hmk, hmk_kcv, custodians)``, which returns the store and
    the audit sink (trail) that :attr:`audit` is then attached to.
    ``files_dir`` holds component and key block files named in the plan;
    ``out_dir`` receives exported key blocks and envelopes.
    """

    registry: CustodianRegistry
    envelopes: EnvelopeLog
    discrepancies: DiscrepancyLog
    audit: DeferredAudit
    prompter: Prompter
    files_dir: Path
    out_dir: Path
    store: KeyStore | None = None
    open_with_hmk: Callable[[bytes, bytes, Sequence[str]], tuple[KeyStore, AuditSink]] | None = None
    rehearsal: bool = False
    now: Callable[[], str] = utc_now


@dataclass(frozen=True)
class StepResult:
    """What one step did (for the printed report)."""

    number: int
    action: StepAction
    subject: str
    outcome: str


@dataclass
class _Entered:
    holders: list[tuple[int, str]] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)


class Ceremony:
    """Runs a :class:`CeremonyPlan` step by step in a :class:`CeremonyContext`."""

    def __init__(self, plan: CeremonyPlan, ctx: CeremonyContext) -> None:
        self.plan = plan
        self.ctx = ctx
        self.results: list[StepResult] = []

    # --- helpers ---------------------------------------------------------------------

    def _say(self, text: str) -> None:
        prefix = "[rehearsal] " if self.ctx.rehearsal else ""
        self.ctx.prompter.show(prefix + text)

    def _store(self, step: Step) -> KeyStore:
        if self.ctx.store is None:
            raise CeremonyError(
                f"steps[{step.number}]", "no key store is open: enter the HMK first"
            )
        return self.ctx.store

    def _pair(self, step: Step) -> tuple[str, str]:
        """(by, witness) for a step: two different active custodians (dual control)."""
        by = step.by or self.plan.officer
        witness = step.witness or self.plan.witness
        if by == witness:
            raise CeremonyError(
                f"steps[{step.number}].witness",
                f"dual control: {by!r} cannot witness their own action",
            )
        self.ctx.registry.check_may_act(by)
        self.ctx.registry.check_may_act(witness)
        return by, witness

    def _ref(self, store: KeyStore, text: str) -> KeyRef:
        return KeyRef.parse(text) if "@v" in text else store.active(text)

    def _audit(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        audit_or_refuse(
            self.ctx.audit, actor, action, subject, result, ceremony=self.plan.ceremony, **details
        )

    # --- the run ------------------------------------------------------------------------

    def check_dual_control(self) -> None:
        """Refuse a plan that one person could complete alone.

        Officer and witness differ (checked when parsing), and the people
        taking part (officer, witness, step signers, component holders) are
        at least two distinct custodians.
        """
        people = {self.plan.officer, self.plan.witness}
        for step in self.plan.steps:
            people.update(p for p in (step.by, step.witness) if p)
            people.update(c.custodian for c in step.components)
            people.update(step.custodians)
        if len(people) < 2:
            raise CeremonyError("custodians", "a single custodian cannot complete a ceremony")

    def run(self) -> list[StepResult]:
        """Run every step in order; the first failing step aborts the ceremony.

        Steps already completed stay done (each is atomic in the store);
        the failure is audited and re-raised.
        """
        self.check_dual_control()
        officer, witness = self.plan.officer, self.plan.witness
        self._say(
            f"ceremony {self.plan.ceremony}: officer {officer}, witness {witness}, "
            f"{len(self.plan.steps)} steps"
        )
        self._audit(dual_actor(officer, witness), "ceremony.start", self.plan.ceremony, "ok")
        for step in self.plan.steps:
            self._say(f"step {step.number}: {step.action.value} {step.subject}")
            try:
                outcome = self._run_step(step)
            except CardprepError as exc:
                self._say(f"step {step.number}: REFUSED: {exc}")
                self._audit_failure(step, exc)
                raise
            self._say(f"step {step.number}: {outcome}")
            self.results.append(StepResult(step.number, step.action, step.subject, outcome))
        self._audit(dual_actor(officer, witness), "ceremony.end", self.plan.ceremony, "ok",
                    steps=len(self.plan.steps))  # fmt: skip
        self._say(f"ceremony {self.plan.ceremony}: all {len(self.plan.steps)} steps done")
        return self.results

    def _audit_failure(self, step: Step, exc: CardprepError) -> None:
        if isinstance(exc, AuditError):
            return  # the trail itself failed: nothing more can be written
        with contextlib.suppress(AuditError):  # the original refusal is what the caller sees
            self._audit(
                dual_actor(self.plan.officer, self.plan.witness),
                f"ceremony.{step.action.value}",
                step.subject,
                "refused",
                step=step.number,
                reason=str(exc)[:200],
            )

    def _run_step(self, step: Step) -> str:
        handler: dict[StepAction, Callable[[Step], str]] = {
            StepAction.APPOINT: self._appoint,
            StepAction.ENTER_HMK: self._enter_hmk,
            StepAction.ENTER_KEY: self._enter_key,
            StepAction.IMPORT_KEY_BLOCK: self._import_key_block,
            StepAction.GENERATE: self._generate,
            StepAction.GENERATE_COMPONENTS: self._generate_components,
            StepAction.EXPORT_KEY_BLOCK: self._export_key_block,
            StepAction.EXPORT_COMPONENTS: self._export_components,
            StepAction.ROTATE: self._rotate,
            StepAction.SUSPEND: self._lifecycle,
            StepAction.RESUME: self._lifecycle,
            StepAction.RETIRE: self._lifecycle,
            StepAction.SCHEDULE_DESTRUCTION: self._lifecycle,
            StepAction.RESTORE: self._lifecycle,
            StepAction.DESTROY: self._lifecycle,
        }
        return handler[step.action](step)

    # --- steps ----------------------------------------------------------------------------

    def _appoint(self, step: Step) -> str:
        done = []
        for a in step.appointments:
            if any(c.id == a.id for c in self.ctx.registry.list()):
                existing = self.ctx.registry.get(a.id)
                if existing.role is a.role and existing.active:
                    done.append(f"{a.id} (already appointed)")
                    continue
            self.ctx.registry.appoint(
                a.id, a.name, a.role, a.employment, backup=a.backup,
                appointed_by=a.appointed_by, date=a.date,
            )  # fmt: skip
            done.append(f"{a.id} ({a.role.value}, backup {a.backup})")
        return "appointed " + ", ".join(done)

    def _collect(
        self, step: Step, label: str, algorithm: KeyAlgorithm | None, kcv_len: int
    ) -> _Entered:
        """Read and confirm each component; any failure records a discrepancy and aborts."""
        specs = step.components
        if step.scheme is Scheme.XOR and not 2 <= len(specs) <= 3:
            raise CeremonyError(
                "components", f"XOR entry takes 2..3 components, got {len(specs)} for {label}"
            )
        if step.scheme is Scheme.SHAMIR and len(specs) < (step.threshold or 2):
            raise CeremonyError(
                "components", f"{step.threshold} shares are needed for {label}, got {len(specs)}"
            )
        holders = [(c.slot, c.custodian) for c in specs]
        self.ctx.registry.check_distinct_holders(label, holders)
        entered = _Entered(holders=holders)
        for spec in specs:
            prompt_id = f"component:{label}:{spec.slot}"
            if spec.file is not None:
                text = _read_text(self.ctx.files_dir / spec.file, prompt_id)
            else:
                text = self.ctx.prompter.secret(
                    prompt_id, f"{spec.custodian}: enter component {spec.slot} of {label}"
                )
            if step.scheme is Scheme.SHAMIR:
                share = parse_share(text, prompt_id)
                if share.index != spec.slot:
                    raise CeremonyError(
                        prompt_id, f"share index {share.index} entered for share {spec.slot}"
                    )
                value = share.value
                entered.shares.append(share)
            else:
                value = parse_component(text, prompt_id)
            expected_len = HMK_LENGTH if algorithm is None else algorithm.key_length
            if len(value) != expected_len:
                raise CeremonyError(
                    prompt_id, f"must be {expected_len} bytes (full length), got {len(value)}"
                )
            shown = key_kcv(algorithm, value, kcv_len)
            self._say(
                f"  component {spec.slot} of {label} by {spec.custodian}: KCV {shown.hex().upper()}"
            )
            if spec.kcv is not None and not hmac.compare_digest(
                key_kcv(algorithm, value, len(spec.kcv)), spec.kcv
            ):
                self._discrepancy(step, label, "component-kcv", spec.kcv, shown, by=spec.custodian)
                raise CeremonyError(
                    prompt_id,
                    f"KCV mismatch: entered {shown.hex().upper()}, sender's "
                    f"{spec.kcv.hex().upper()}; nothing stored",
                )
            if not self.ctx.prompter.confirm(
                f"confirm:{label}:{spec.slot}",
                f"{spec.custodian}: does component {spec.slot} of {label} show KCV "
                f"{shown.hex().upper()} on your envelope?",
            ):
                self._discrepancy(
                    step, label, "not-confirmed", spec.kcv or b"", shown, by=spec.custodian
                )
                raise CeremonyError(
                    prompt_id, f"{spec.custodian} did not confirm KCV {shown.hex().upper()}"
                )
            self._audit(
                spec.custodian, "component.enter", label, "ok",
                component=spec.slot, component_kcv=shown.hex().upper(), step=step.number,
            )  # fmt: skip
            entered.values.append(value)
        return entered

    def _combine(self, step: Step, entered: _Entered) -> bytes:
        if step.scheme is Scheme.SHAMIR:
            return shamir_combine(entered.shares, step.threshold or 2)
        return xor_combine(entered.values)

    def _discrepancy(
        self, step: Step, key: str, kind: str, expected: bytes, actual: bytes, *, by: str
    ) -> None:
        self.ctx.discrepancies.record(
            Discrepancy(
                ceremony=self.plan.ceremony,
                step=step.number,
                key=key,
                sender=step.sender or "unknown",
                kind=kind,
                expected=expected.hex().upper(),
                actual=actual.hex().upper(),
                recorded_by=by,
                recorded_at=self.ctx.now(),
            )
        )
        self._say(f"  discrepancy recorded for sender {step.sender or 'unknown'}: {kind}")

    def _check_combined(
        self, step: Step, label: str, algorithm: KeyAlgorithm | None, key: bytes
    ) -> bytes:
        assert step.expected_kcv is not None
        actual = key_kcv(algorithm, key, len(step.expected_kcv))
        self._say(f"  combined {label}: KCV {actual.hex().upper()}, "
                  f"expected {step.expected_kcv.hex().upper()}")  # fmt: skip
        if not hmac.compare_digest(actual, step.expected_kcv):
            self._discrepancy(
                step, label, "combined-kcv", step.expected_kcv, actual,
                by=dual_actor(*self._pair(step)),
            )  # fmt: skip
            raise CeremonyError(
                "expected_kcv",
                f"KCV mismatch for {label}: combined {actual.hex().upper()}, expected "
                f"{step.expected_kcv.hex().upper()}; nothing stored",
            )
        return actual

    def _enter_hmk(self, step: Step) -> str:
        by, witness = self._pair(step)
        if self.ctx.open_with_hmk is None:
            raise CeremonyError("enter-hmk", "this ceremony cannot open a key store")
        if self.ctx.store is not None:
            raise CeremonyError("enter-hmk", "a key store is already open with an HMK")
        entered = self._collect(step, HMK_LABEL, None, HMK_KCV_LENGTH)
        hmk = self._combine(step, entered)
        actual = self._check_combined(step, HMK_LABEL, None, hmk)
        store, trail = self.ctx.open_with_hmk(hmk, actual, [c for _, c in entered.holders])
        self.ctx.store = store
        self.ctx.audit.attach(trail)
        self.ctx.registry.record_holdings(
            HMK_LABEL, 1, entered.holders, kind="entry", ceremony=self.plan.ceremony
        )
        self._audit(dual_actor(by, witness), "hmk.enter", f"{HMK_LABEL} kcv={actual.hex().upper()}",
                    "ok", custodians=[c for _, c in entered.holders])  # fmt: skip
        return f"HMK entered from {len(entered.holders)} components, KCV {actual.hex().upper()}"

    def _enter_key(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.label and step.algorithm and step.usage and step.role and step.owner
        entered = self._collect(step, step.label, step.algorithm, 3)
        key = self._combine(step, entered)
        self._check_combined(step, step.label, step.algorithm, key)
        parts, ids = _store_parts(step.scheme, entered.values, key, entered.holders)
        assert step.expected_kcv is not None
        record = store.import_components(
            step.label, step.algorithm, step.usage, step.role, step.owner, parts,
            step.expected_kcv, custodians=ids,
            actor=dual_actor(by, witness), exportability=step.exportability,
            mode_of_use=step.mode_of_use,
        )  # fmt: skip
        self.ctx.registry.record_holdings(
            step.label, record.version, entered.holders, kind="entry", ceremony=self.plan.ceremony
        )
        return f"entered {_describe(record)} from {len(entered.holders)} {step.scheme.value} parts"

    def _import_key_block(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.label and step.file and step.kbpk and step.role and step.owner
        block = _read_text(self.ctx.files_dir / step.file, "file").strip()
        kbpk = self._ref(store, step.kbpk)
        try:
            record = store.import_key_block(
                step.label, block, kbpk, step.role, step.owner,
                expected_kcv=step.expected_kcv, actor=dual_actor(by, witness),
            )  # fmt: skip
        except (CeremonyError, KeyStoreError) as exc:
            if exc.field == "expected_kcv" and step.expected_kcv is not None:
                self._discrepancy(
                    step, step.label, "key-block", step.expected_kcv, b"",
                    by=dual_actor(by, witness),
                )  # fmt: skip
            raise
        return f"imported {_describe(record)} under {kbpk}"

    def _generate(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.label and step.algorithm and step.usage and step.role and step.owner
        record = store.generate(
            step.label, step.algorithm, step.usage, step.role, step.owner,
            actor=dual_actor(by, witness), bits=step.bits, exportability=step.exportability,
            mode_of_use=step.mode_of_use,
        )  # fmt: skip
        return f"generated {_describe(record)}"

    def _generate_components(self, step: Step) -> str:
        """A new key born as components: one envelope per custodian, then entered."""
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.label and step.algorithm and step.usage and step.role and step.owner
        length = step.algorithm.key_length
        if length is None:
            raise CeremonyError("algorithm", f"{step.algorithm.value} has no components")
        holders = self._output_holders(step, step.label)
        key = secrets.token_bytes(length)
        if step.scheme is Scheme.XOR:
            values = list(xor_split(key, len(holders)))
            threshold = len(holders)
        else:
            threshold = step.threshold or 2
            values = [s.value for s in shamir_split(key, threshold, len(holders))]
        key_check = key_kcv(step.algorithm, key)
        parts, ids = _store_parts(step.scheme, values, key, holders)
        record = store.import_components(
            step.label, step.algorithm, step.usage, step.role, step.owner, parts, key_check,
            custodians=ids, actor=dual_actor(by, witness),
            exportability=step.exportability, mode_of_use=step.mode_of_use,
        )  # fmt: skip
        self._envelopes(step, record, holders, values, threshold, dual_actor(by, witness))
        return f"generated {_describe(record)} as {len(holders)} {step.scheme.value} envelopes"

    def _output_holders(self, step: Step, label: str) -> list[tuple[int, str]]:
        """``(slot, custodian)`` for a key output: the registry's holding rules checked.

        XOR: 2..3 custodians; Shamir: at least the threshold.  Each custodian
        gets one slot and must not hold another slot of ``label`` (any version).
        """
        holders = [(i, c) for i, c in enumerate(step.custodians, 1)]
        if step.scheme is Scheme.XOR and not 2 <= len(holders) <= 3:
            raise CeremonyError(
                "custodians", f"XOR output takes 2..3 custodians, got {len(holders)}"
            )
        if step.scheme is Scheme.SHAMIR and len(holders) < (step.threshold or 2):
            raise CeremonyError(
                "custodians", f"{step.threshold}-of-n output needs at least {step.threshold} "
                f"custodians, got {len(holders)}",
            )  # fmt: skip
        self.ctx.registry.check_distinct_holders(label, holders)
        return holders

    def _envelopes(  # noqa: PLR0917 (internal)
        self,
        step: Step,
        record: KeyRecord,
        holders: Sequence[tuple[int, str]],
        values: Sequence[bytes],
        threshold: int,
        actor: str,
    ) -> None:
        """One envelope per custodian (component, its KCV, serial), then the holding ledger."""
        out_dir = self.ctx.out_dir / "envelopes" / str(record.ref)
        method = kcv_method_of(record.algorithm)
        for (slot, custodian), value in zip(holders, values, strict=True):
            env = self.ctx.envelopes.create(
                out_dir, key=str(record.ref), algorithm=record.algorithm.value,
                scheme=step.scheme.value, slot=slot, count=len(holders), threshold=threshold,
                custodian=custodian, value=value,
                component_kcv=compute_kcv(value, method).hex().upper(),
                key_kcv=record.kcv.hex().upper(), kcv_method=method,
                actor=actor, ceremony=self.plan.ceremony,
            )  # fmt: skip
            self._say(f"  envelope {env.serial} for {custodian}: component {slot}, "
                      f"KCV {env.component_kcv}")  # fmt: skip
        self.ctx.registry.record_holdings(
            record.ref.label, record.version, holders, kind="output", ceremony=self.plan.ceremony
        )

    def _export_components(self, step: Step) -> str:
        """An existing key out as components: the store splits it, one envelope per custodian.

        The registry checks come first (a refused custodian means nothing
        leaves the store); the store checks usage, state and exportability
        and audits the export with every component's KCV.
        """
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.key
        ref = self._ref(store, step.key)
        holders = self._output_holders(step, ref.label)
        threshold = step.threshold if step.scheme is Scheme.SHAMIR else None
        values = store.export_components(
            ref, len(holders), custodians=[c for _, c in holders],
            actor=dual_actor(by, witness), threshold=threshold,
        )  # fmt: skip
        record = store.get(ref)
        self._envelopes(
            step, record, holders, values, threshold or len(holders), dual_actor(by, witness)
        )
        return f"exported {_describe(record)} as {len(holders)} {step.scheme.value} envelopes"

    def _export_key_block(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.key and step.kbpk and step.file
        key = self._ref(store, step.key)
        kbpk = self._ref(store, step.kbpk)
        block = store.export_key_block(key, kbpk, actor=dual_actor(by, witness))
        path = self.ctx.out_dir / step.file
        write_text_atomic(path, block + "\n")
        return f"exported {key} kcv={store.get(key).kcv.hex().upper()} under {kbpk} to {path.name}"

    def _rotate(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.label
        record = store.rotate(step.label, actor=dual_actor(by, witness))
        return f"rotated to {_describe(record)}"

    def _lifecycle(self, step: Step) -> str:
        by, witness = self._pair(step)
        store = self._store(step)
        assert step.key
        ref = KeyRef.parse(step.key) if "@v" in step.key else store.get(step.key).ref
        actor = dual_actor(by, witness)
        a = StepAction
        if step.action is a.SUSPEND:
            record = store.suspend(ref, actor=actor, reason=step.reason)
        elif step.action is a.RESUME:
            record = store.resume(ref, actor=actor)
        elif step.action is a.RETIRE:
            record = store.retire(ref, actor=actor)
        elif step.action is a.SCHEDULE_DESTRUCTION:
            record = store.schedule_destruction(ref, actor=actor, wait_days=step.wait_days)
        elif step.action is a.RESTORE:
            record = store.restore(ref, actor=actor)
        else:
            record = store.destroy(ref, actor=actor)
        extra = f", destroy after {record.destroy_after}" if record.destroy_after else ""
        return f"{_describe(record)}{extra}"


def _store_parts(
    scheme: Scheme, values: Sequence[bytes], key: bytes, holders: Sequence[tuple[int, str]]
) -> tuple[list[bytes], list[str]]:
    """What :meth:`KeyStore.import_components` receives: XOR components and the custodians.

    XOR: the components as entered, one custodian each.  Shamir: the store
    takes XOR components only, so the key (already recombined here for the
    KCV check) is re-split into the minimum of two fresh components, and
    *every* share holder is passed as a custodian, so the key record names
    all of them.

    Example:
        >>> parts, ids = _store_parts(Scheme.SHAMIR, [], bytes(16),
        ...     [(1, "a"), (2, "b"), (3, "c"), (4, "d")])
        >>> len(parts), ids
        (2, ['a', 'b', 'c', 'd'])
    """
    ids = [c for _, c in holders]
    if scheme is Scheme.XOR:
        return list(values), ids
    return list(xor_split(key, 2)), ids


def _describe(record: KeyRecord) -> str:
    """``label@vN (algorithm usage, state) kcv=XXXXXX`` — never key material."""
    return (
        f"{record.ref} ({record.algorithm.value} {record.usage.value}, {record.state.value}) "
        f"kcv={record.kcv.hex().upper()}"
    )


# --- rehearsal ---------------------------------------------------------------------------------


@contextmanager
def rehearsal_dir(registry_db: Path | None) -> Iterator[Path]:
    """A throwaway directory for a rehearsal, with a copy of the real registry if any.

    Removed afterwards, whatever happens.
    """
    tmp = Path(tempfile.mkdtemp(prefix="cardprep-rehearsal-"))
    try:
        if registry_db is not None and Path(registry_db).exists():
            shutil.copy2(registry_db, ceremony_db_path(tmp))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
