"""The key-management audit trail: a hash-chained, MACed JSON-lines file.

Each line is one :class:`AuditEvent`::

    {"seq": 7, "ts": "2025-01-01T00:00:00Z", "actor": "cust-alice",
     "action": "key.rotate", "subject": "demo-imk-ac@v2 kcv=08D7B4",
     "result": "ok", "details": {...}, "prev_hash": "<hex>",
     "mac_key": "audit-mac@v1", "hash": "<hex>", "mac": "<hex>"}

* ``hash`` = SHA-256(prev_hash || canonical JSON of every field but
  ``hash`` and ``mac``) (canonical: sorted keys, no spaces, UTF-8); the first
  event's ``prev_hash`` is 64 zeros.  Editing, deleting or reordering a line
  breaks the chain (PCI DSS 10.3.2 / 10.5: audit logs protected from
  modification; ISO 27001 A.8.15).
* ``mac`` = the key store's MAC over ``hash`` under the audit key named in
  ``mac_key`` (``store.mac(ref, data, "audit")``): a forger who can rewrite
  the whole chain still cannot produce the MACs.
* A sealed **head** sidecar (``<trail>.head``: last seq and hash, MACed)
  detects truncation (dropping the newest lines) and forged appends.
* Crash between the line and its seal: an append writes (and fsyncs) the
  line, then replaces the head.  A process killed in between leaves exactly
  one *unsealed* line: seq = head seq + 1, ``prev_hash`` = the head's hash,
  its own hash and MAC valid.  Such a line was written by the audit-key
  holder (a forger cannot MAC it), so :meth:`AuditTrail.verify` accepts it
  (reported as a note) and the next append re-seals the head and records an
  ``audit.recovered`` event before its own.  Anything else past the head
  (two unsealed lines, a line whose chain or MAC fails, a torn line) still
  fails, and a trail shorter than its head still reads as truncated.  The
  head never proved more than this: replaying an older (validly MACed) head
  file was, and is, the one way to hide dropped lines, so the window adds no
  new forgery.

Events never contain key bytes, components, PINs or full PANs: subjects are
``label@vN`` with the (public) KCV, PANs at most masked.  Writing fails closed:
any I/O error raises :class:`~pipeline.errors.AuditError`, and callers refuse
the operation.

Example:
    >>> trail = AuditTrail(tmp / "audit.jsonl", sealer)          # doctest: +SKIP
    >>> trail.append("cust-alice", "key.generate", "demo-tk@v1 kcv=ABCDEF", "ok")  # doctest: +SKIP
    >>> trail.verify().ok                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import AuditError
from pipeline.io.atomic import ensure_private_file

__all__ = [
    "GENESIS_HASH",
    "RECOVERED_ACTION",
    "AuditEvent",
    "AuditSealer",
    "AuditTrail",
    "VerifyReport",
    "unsealed_tail",
]

GENESIS_HASH = "0" * 64
#: Action of the event an append records after re-sealing an interrupted append's line.
RECOVERED_ACTION = "audit.recovered"
_RECOVERY_ACTOR = "cardprep-audit"
_HEX_KEYISH = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")


class AuditSealer(Protocol):
    """What the trail needs from the key store: MACs under the audit key."""

    def key_id(self) -> str:
        """``label@vN`` of the audit key new events are MACed under."""
        ...

    def seal(self, key_id: str, data: bytes) -> bytes:
        """MAC ``data`` under audit key ``key_id``."""
        ...

    def check(self, key_id: str, data: bytes, mac: bytes) -> bool:
        """True when ``mac`` over ``data`` verifies under audit key ``key_id``."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` with its
#: encoder built once: ``json.dumps`` builds one per call, and every prepared card's
#: sealed header goes through :func:`canonical` (issue 7).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical(obj: object) -> bytes:
    """Canonical JSON (sorted keys, compact, UTF-8) used for hashing.

    Example:
        >>> canonical({"b": 1, "a": [1, "x"]})
        b'{"a":[1,"x"],"b":1}'
    """
    return _CANONICAL(obj).encode()


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """SHA-256(prev_hash bytes || canonical(body)) as hex.

    Example:
        >>> len(chain_hash(GENESIS_HASH, {"seq": 1}))
        64
    """
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit line (see the module docstring for the fields)."""

    seq: int
    ts: str
    actor: str
    action: str
    subject: str
    result: str
    details: dict[str, Any]
    prev_hash: str
    mac_key: str
    hash: str
    mac: str

    def body(self) -> dict[str, Any]:
        """Every field the hash covers."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "result": self.result,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "mac_key": self.mac_key,
        }

    def to_json(self) -> str:
        """The event as one JSON line (no trailing newline)."""
        return json.dumps(
            {**self.body(), "hash": self.hash, "mac": self.mac},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> AuditEvent:
        """Parse one line; :class:`AuditError` when fields are missing or mistyped."""
        try:
            raw = json.loads(line)
            event = cls(
                seq=int(raw["seq"]),
                ts=str(raw["ts"]),
                actor=str(raw["actor"]),
                action=str(raw["action"]),
                subject=str(raw["subject"]),
                result=str(raw["result"]),
                details=dict(raw["details"]),
                prev_hash=str(raw["prev_hash"]),
                mac_key=str(raw["mac_key"]),
                hash=str(raw["hash"]),
                mac=str(raw["mac"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError("audit line", f"malformed ({type(exc).__name__})") from None
        return event


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :meth:`AuditTrail.verify`: ``ok`` and every problem found."""

    ok: bool
    entries: int
    last_seq: int
    last_hash: str
    problems: tuple[str, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        if self.ok:
            text = f"audit trail OK: {self.entries} entries, head seq {self.last_seq}"
            return "; ".join((text, *self.notes))
        return f"audit trail FAILED ({len(self.problems)} problems): " + "; ".join(self.problems)


_DIGEST_SUFFIXES = ("sha256", "_hash", "digest")


def _check_no_secrets(subject: str, details: dict[str, Any]) -> None:
    """Refuse events that look like they carry key material (>= 32 hex digits).

    Values of details named ``*sha256`` / ``*_hash`` / ``*digest`` (public
    digests of files or erased key blocks) are exempt.
    """
    kept = {k: v for k, v in details.items() if not k.endswith(_DIGEST_SUFFIXES)}
    text = subject + " " + canonical(kept).decode()
    if _HEX_KEYISH.search(text):
        raise AuditError(
            "audit event", "refused: subject/details contain a long hex string (key material?)"
        )


class AuditTrail:
    """Append-only, hash-chained, MACed audit file (see the module docstring).

    ``sealer`` provides MACs under the audit key (the key store);
    ``clock`` can be injected for tests.  Appends take an exclusive
    ``flock`` so several processes may append to the same trail.
    """

    def __init__(
        self,
        path: Path,
        sealer: AuditSealer,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._sealer = sealer
        self._clock = clock

    # --- writing ------------------------------------------------------------------

    def append(
        self, actor: str, action: str, subject: str, result: str, **details: Any
    ) -> AuditEvent:
        """Append one event and reseal the head; :class:`AuditError` if it cannot be written.

        ``details`` must be JSON-serialisable, non-secret values.
        """
        if not actor or not action:
            raise AuditError("audit event", "actor and action are required")
        _check_no_secrets(subject, details)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ensure_private_file(self.path)
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    seq, prev, unsealed = self._tail(fh)
                    if unsealed:
                        seq, prev = self._recover(fh, seq, prev)
                    event = self._make(
                        seq=seq + 1,
                        prev_hash=prev,
                        actor=actor,
                        action=action,
                        subject=subject,
                        result=result,
                        details=details,
                    )
                    self._write_line(fh, event)
                    self._write_head(event.seq, event.hash)
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except AuditError:
            raise
        except (OSError, TypeError, ValueError) as exc:
            raise AuditError(
                "audit trail", f"cannot append to {self.path} ({type(exc).__name__}): refused"
            ) from None
        return event

    def _make(
        self,
        *,
        seq: int,
        prev_hash: str,
        actor: str,
        action: str,
        subject: str,
        result: str,
        details: dict[str, Any],
    ) -> AuditEvent:
        ts = self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        key_id = self._sealer.key_id()
        body = {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "subject": subject,
            "result": result,
            "details": json.loads(canonical(details)),
            "prev_hash": prev_hash,
            "mac_key": key_id,
        }
        digest = chain_hash(prev_hash, body)
        mac = self._sealer.seal(key_id, bytes.fromhex(digest))
        return AuditEvent(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            subject=subject,
            result=result,
            details=body["details"],
            prev_hash=prev_hash,
            mac_key=key_id,
            hash=digest,
            mac=mac.hex(),
        )

    @staticmethod
    def _write_line(fh: Any, event: AuditEvent) -> None:
        """Append one line and fsync it (before the head is re-sealed over it)."""
        fh.seek(0, os.SEEK_END)
        fh.write(event.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    def _recover(self, fh: Any, seq: int, digest: str) -> tuple[int, str]:
        """Seal the line an interrupted append left, then record that; the new (seq, hash)."""
        self._write_head(seq, digest)
        event = self._make(
            seq=seq + 1,
            prev_hash=digest,
            actor=_RECOVERY_ACTOR,
            action=RECOVERED_ACTION,
            subject=f"seq {seq}",
            result="ok",
            details={
                "unsealed_seq": seq,
                "unsealed_hash": digest,
                "cause": "an append was interrupted after its line, before its head seal; "
                "the line's chain and MAC verified, head re-sealed",
            },
        )
        self._write_line(fh, event)
        self._write_head(event.seq, event.hash)
        return event.seq, event.hash

    def _tail(self, fh: Any) -> tuple[int, str, bool]:
        """(seq, hash) of the last event, checked against the sealed head.

        The flag is True when the last line is the one an interrupted append
        left past the head (:func:`unsealed_tail`); any other mismatch refuses.
        """
        fh.seek(0)
        before: tuple[int, str] = (0, GENESIS_HASH)
        last: AuditEvent | None = None
        for line in fh:
            if line.strip():
                if last is not None:
                    before = (last.seq, last.hash)
                last = AuditEvent.from_json(line)
        head = self._read_head()
        seq, digest = (last.seq, last.hash) if last else (0, GENESIS_HASH)
        if head == (seq, digest) or (head is None and last is None):
            return seq, digest, False
        if last is not None and unsealed_tail(head, before, last, self._mac_ok):
            return seq, digest, True
        if head is None:
            raise AuditError("audit trail", f"head seal {self.head_path.name} missing; refused")
        raise AuditError(
            "audit trail",
            f"head seal (seq {head[0]}) does not match the last line (seq {seq}): "
            "trail truncated or tampered; run `cardprep audit verify`; refused",
        )

    def _write_head(self, seq: int, digest: str) -> None:
        key_id = self._sealer.key_id()
        mac = self._sealer.seal(key_id, _head_data(seq, digest))
        text = json.dumps({"seq": seq, "hash": digest, "mac_key": key_id, "mac": mac.hex()})
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head_path)

    def _read_head(self) -> tuple[int, str] | None:
        """The sealed (seq, hash), ``None`` when absent; AuditError if its MAC fails."""
        if not self.head_path.exists():
            return None
        try:
            raw = json.loads(self.head_path.read_text(encoding="utf-8"))
            seq, digest = int(raw["seq"]), str(raw["hash"])
            key_id, mac = str(raw["mac_key"]), bytes.fromhex(raw["mac"])
        except (OSError, ValueError, KeyError, TypeError):
            raise AuditError("audit head", f"{self.head_path.name} unreadable") from None
        if not self._sealer.check(key_id, _head_data(seq, digest), mac):
            raise AuditError("audit head", f"{self.head_path.name} MAC does not verify")
        return seq, digest

    # --- reading ------------------------------------------------------------------

    def events(self) -> Iterator[AuditEvent]:
        """Every event in file order (no verification; see :meth:`verify`)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield AuditEvent.from_json(line)

    def verify(self) -> VerifyReport:
        """Check sequence, chain, every hash and MAC, and the sealed head.

        Detects edited (hash), deleted or reordered (seq / prev_hash),
        forged (MAC), truncated and appended-without-seal (head) entries.
        The one exception (module docstring): a single valid line just past
        the head, left by an append killed before its seal, is reported as a
        note, not a problem.  Never raises for a bad trail: problems are
        listed in the report.
        """
        problems: list[str] = []
        prev, expected_seq, count = GENESIS_HASH, 1, 0
        before: tuple[int, str] = (0, GENESIS_HASH)
        last: AuditEvent | None = None
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        except OSError as exc:
            return VerifyReport(False, 0, 0, GENESIS_HASH, (f"unreadable: {type(exc).__name__}",))
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                problems.append(f"line {lineno}: empty line")
                continue
            try:
                event = AuditEvent.from_json(line)
            except AuditError:
                problems.append(f"line {lineno}: malformed")
                continue
            count += 1
            if event.seq != expected_seq:
                problems.append(f"line {lineno}: seq {event.seq}, expected {expected_seq}")
            if event.prev_hash != prev:
                problems.append(f"line {lineno} (seq {event.seq}): chain broken (prev_hash)")
            if chain_hash(event.prev_hash, event.body()) != event.hash:
                problems.append(f"line {lineno} (seq {event.seq}): content edited (hash)")
            if not self._mac_ok(event):
                problems.append(f"line {lineno} (seq {event.seq}): MAC does not verify")
            if last is not None:
                before = (last.seq, last.hash)
            last = event
            prev, expected_seq = event.hash, event.seq + 1
        last_seq = expected_seq - 1
        notes: list[str] = []
        try:
            head = self._read_head()
        except AuditError as exc:
            problems.append(str(exc))
            head = (last_seq, prev)
        if head == (last_seq, prev) or (head is None and not count):
            pass
        elif not problems and last is not None and unsealed_tail(head, before, last, self._mac_ok):
            notes.append(
                f"seq {last.seq} written but not sealed (append interrupted before its head "
                "seal; chain and MAC verify): the next append re-seals it"
            )
        elif head is None:
            problems.append("head seal missing")
        else:
            problems.append(
                f"head seal says seq {head[0]}, trail ends at seq {last_seq}: "
                "truncated or appended without seal"
            )
        return VerifyReport(not problems, count, last_seq, prev, tuple(problems), tuple(notes))

    def _mac_ok(self, event: AuditEvent) -> bool:
        try:
            return self._sealer.check(
                event.mac_key, bytes.fromhex(event.hash), bytes.fromhex(event.mac)
            )
        except Exception:  # bad hex, unknown or destroyed audit key: a failure, not a crash
            return False


def unsealed_tail(
    head: tuple[int, str] | None,
    before: tuple[int, str],
    last: AuditEvent,
    mac_ok: Callable[[AuditEvent], bool],
) -> bool:
    """True when ``last`` is the one line an append left past the sealed head before dying.

    ``head`` is the sealed (seq, hash) (``None``: no head yet, i.e. seq 0 and
    the genesis hash); ``before`` the (seq, hash) of the line before ``last``
    ((0, genesis) when it is the first).  The line must follow the head
    directly (seq + 1, ``prev_hash`` = head hash, the head sealing the line
    before it), hash correctly, and carry a valid MAC under the audit key, so
    it cannot be forged by someone without that key (PCI DSS 10.5).

    Example:
        >>> body = {"seq": 1, "ts": "t", "actor": "a", "action": "x", "subject": "s",
        ...         "result": "ok", "details": {}, "prev_hash": GENESIS_HASH, "mac_key": "k@v1"}
        >>> e = AuditEvent(**body, hash=chain_hash(GENESIS_HASH, body), mac="00")
        >>> unsealed_tail(None, (0, GENESIS_HASH), e, lambda _: True)
        True
        >>> unsealed_tail(None, (0, GENESIS_HASH), e, lambda _: False)
        False
    """
    sealed = head if head is not None else (0, GENESIS_HASH)
    return (
        sealed == before
        and last.seq == sealed[0] + 1
        and last.prev_hash == sealed[1]
        and chain_hash(last.prev_hash, last.body()) == last.hash
        and mac_ok(last)
    )


def _head_data(seq: int, digest: str) -> bytes:
    return b"cardprep-audit-head|" + str(seq).encode() + b"|" + digest.encode()
