"""Audit trail: hash chain + MAC + sealed head; tamper detection; fail closed; no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.audit.trail import RECOVERED_ACTION, AuditEvent, AuditTrail, chain_hash
from pipeline.errors import AuditError
from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import new_store


@pytest.fixture
def store(tmp_path: Path) -> SoftKeyStore:
    s = new_store(tmp_path)
    for i in range(4):
        s.generate(f"tk{i}", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo",
                   actor=f"cust-{i}")  # fmt: skip
    return s


def lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text().splitlines()


def write(trail: AuditTrail, new_lines: list[str]) -> None:
    trail.path.write_text("".join(line + "\n" for line in new_lines))


def test_clean_trail_verifies(store: SoftKeyStore) -> None:
    report = store.audit_trail.verify()
    assert report.ok and report.entries == 6 and report.last_seq == 6, report.problems
    first = next(store.audit_trail.events())
    assert first.action == "store.create" and first.prev_hash == "0" * 64


def test_edited_entry_detected(store: SoftKeyStore) -> None:
    trail = store.audit_trail
    content = lines(trail)
    content[3] = content[3].replace('"actor":"cust-1"', '"actor":"cust-9"')
    write(trail, content)
    report = trail.verify()
    assert not report.ok and any("seq 4" in p and "edited" in p for p in report.problems)


def test_edited_entry_with_recomputed_hash_fails_on_mac(store: SoftKeyStore) -> None:
    """An attacker without the audit key recomputes the chain: the MACs still fail."""
    trail = store.audit_trail
    events = [AuditEvent.from_json(x) for x in lines(trail)]
    forged, prev = [], "0" * 64
    for e in events:
        body = e.body() | {"prev_hash": prev}
        if e.seq == 3:
            body["actor"] = "intruder"
        digest = chain_hash(prev, body)
        forged.append(json.dumps(body | {"hash": digest, "mac": e.mac}, sort_keys=True,
                                 separators=(",", ":")))  # fmt: skip
        prev = digest
    write(trail, forged)
    report = trail.verify()
    assert not report.ok and any("MAC does not verify" in p for p in report.problems)


def test_deleted_entry_detected(store: SoftKeyStore) -> None:
    content = lines(store.audit_trail)
    del content[2]
    write(store.audit_trail, content)
    problems = store.audit_trail.verify().problems
    assert any("seq 4, expected 3" in p for p in problems)
    assert any("chain broken" in p for p in problems)


def test_reordered_entries_detected(store: SoftKeyStore) -> None:
    content = lines(store.audit_trail)
    content[2], content[3] = content[3], content[2]
    write(store.audit_trail, content)
    assert not store.audit_trail.verify().ok


def test_truncated_trail_detected_by_the_head(store: SoftKeyStore) -> None:
    write(store.audit_trail, lines(store.audit_trail)[:-1])
    report = store.audit_trail.verify()
    assert not report.ok and any("head seal says seq 6, trail ends at seq 5" in p
                                 for p in report.problems)  # fmt: skip
    # ... and the store refuses further key management until it is resolved (fail closed).
    with pytest.raises(AuditError, match="truncated or tampered"):
        store.generate("x", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    with pytest.raises(Exception, match="no such key"):
        store.get("x")


def test_appended_forged_entry_detected(store: SoftKeyStore) -> None:
    trail = store.audit_trail
    last = AuditEvent.from_json(lines(trail)[-1])
    body = last.body() | {"seq": last.seq + 1, "prev_hash": last.hash, "action": "key.forged"}
    digest = chain_hash(last.hash, body)
    extra = json.dumps(body | {"hash": digest, "mac": "00" * 16}, sort_keys=True,
                       separators=(",", ":"))  # fmt: skip
    write(trail, [*lines(trail), extra])
    problems = trail.verify().problems
    assert any("seq 7" in p and "MAC" in p for p in problems)
    assert any("head seal" in p for p in problems)


def test_head_mac_edit_detected(store: SoftKeyStore) -> None:
    head = json.loads(store.audit_trail.head_path.read_text())
    head["seq"] = 5
    store.audit_trail.head_path.write_text(json.dumps(head))
    assert any("MAC does not verify" in p for p in store.audit_trail.verify().problems)


def test_unwritable_trail_refuses_the_operation(store: SoftKeyStore) -> None:
    """Fail closed: if the event cannot be written, the key is not stored."""
    path = store.audit_trail.path
    os.chmod(path, 0o444)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("running as root: file permissions are not enforced")
        with pytest.raises(AuditError, match="cannot append"):
            store.generate("lost", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo",
                           actor="o")  # fmt: skip
    finally:
        os.chmod(path, 0o644)
    with pytest.raises(Exception, match="no such key"):
        store.get("lost")
    assert store.audit_trail.verify().ok


def test_trail_path_is_a_directory_refuses(tmp_path: Path) -> None:
    """Works as root too: a directory where the trail file should be cannot be appended to."""
    s = new_store(tmp_path)
    s.close()
    bad = tmp_path / "trail-dir"
    bad.mkdir()
    s2 = SoftKeyStore(s.path, bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2),
                      audit_path=bad)  # fmt: skip
    with pytest.raises(AuditError, match="cannot append"):
        s2.generate("lost", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    with pytest.raises(Exception, match="no such key"):
        s2.get("lost")


def test_events_with_key_like_hex_are_refused(store: SoftKeyStore) -> None:
    with pytest.raises(AuditError, match="long hex"):
        store.audit_trail.append("o", "test", "k", "ok", value="0123456789ABCDEFFEDCBA9876543210")
    store.audit_trail.append("o", "test", "k", "ok", file_sha256="ab" * 32)
    assert store.audit_trail.verify().ok


# --- an append killed between its line and its head seal (issue 8 "Crash and re-run") ------


def _tdes_tk(store: SoftKeyStore, label: str) -> None:
    store.generate(label, KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")


def _kill_before_seal(store: SoftKeyStore, label: str) -> None:
    """What SIGKILL after the line's fsync and before the head's os.replace leaves on disk."""
    head = store.audit_trail.head_path
    before = head.read_bytes()
    _tdes_tk(store, label)
    head.write_bytes(before)


def test_one_unsealed_valid_line_verifies_with_a_note(store: SoftKeyStore) -> None:
    _kill_before_seal(store, "k1")
    report = store.audit_trail.verify()
    assert report.ok and report.last_seq == 7, report.problems
    assert len(report.notes) == 1 and "seq 7 written but not sealed" in report.notes[0]
    assert "not sealed" in str(report)


def test_next_append_reseals_and_records_the_recovery(store: SoftKeyStore) -> None:
    _kill_before_seal(store, "k1")
    _tdes_tk(store, "k2")
    events = list(store.audit_trail.events())
    assert [e.action for e in events[-3:]] == ["key.generate", RECOVERED_ACTION, "key.generate"]
    recovered = events[-2]
    assert recovered.details["unsealed_seq"] == 7 and recovered.subject == "seq 7"
    assert recovered.details["unsealed_hash"] == events[-3].hash
    report = store.audit_trail.verify()
    assert report.ok and report.entries == 9 and not report.notes, report
    assert json.loads(store.audit_trail.head_path.read_text())["seq"] == 9


def test_two_unsealed_lines_fail_and_refuse(store: SoftKeyStore) -> None:
    """Only the single line one append can leave is accepted; two means a replayed head."""
    head = store.audit_trail.head_path
    before = head.read_bytes()
    _tdes_tk(store, "k1")
    _tdes_tk(store, "k2")
    head.write_bytes(before)
    report = store.audit_trail.verify()
    assert not report.ok and any("head seal says seq 6, trail ends at seq 8" in p
                                 for p in report.problems)  # fmt: skip
    with pytest.raises(AuditError, match="does not match the last line"):
        _tdes_tk(store, "k3")


def test_unsealed_line_with_edited_content_fails(store: SoftKeyStore) -> None:
    _kill_before_seal(store, "k1")
    content = lines(store.audit_trail)
    content[-1] = content[-1].replace('"actor":"o"', '"actor":"m"')
    write(store.audit_trail, content)
    report = store.audit_trail.verify()
    assert not report.ok and any("seq 7" in p and "edited" in p for p in report.problems)
    assert any("head seal says seq 6" in p for p in report.problems)
    with pytest.raises(AuditError, match="does not match the last line"):
        _tdes_tk(store, "k2")


def test_unsealed_line_with_a_forged_mac_fails(store: SoftKeyStore) -> None:
    """Rehashed after editing: the chain holds but without the audit key the MAC cannot."""
    _kill_before_seal(store, "k1")
    content = lines(store.audit_trail)
    last = AuditEvent.from_json(content[-1])
    body = last.body() | {"actor": "mallory"}
    content[-1] = json.dumps(body | {"hash": chain_hash(last.prev_hash, body), "mac": last.mac},
                             sort_keys=True, separators=(",", ":"))  # fmt: skip
    write(store.audit_trail, content)
    report = store.audit_trail.verify()
    assert not report.ok and any("seq 7" in p and "MAC" in p for p in report.problems)
    with pytest.raises(AuditError, match="does not match the last line"):
        _tdes_tk(store, "k2")


def test_torn_unsealed_line_fails(store: SoftKeyStore) -> None:
    _kill_before_seal(store, "k1")
    text = store.audit_trail.path.read_text()
    store.audit_trail.path.write_text(text[: len(text) - 40])
    assert not store.audit_trail.verify().ok
    with pytest.raises(AuditError, match="malformed"):
        _tdes_tk(store, "k2")


def test_truncation_still_detected_after_a_recovery(store: SoftKeyStore) -> None:
    _kill_before_seal(store, "k1")
    _tdes_tk(store, "k2")
    write(store.audit_trail, lines(store.audit_trail)[:-1])
    report = store.audit_trail.verify()
    assert not report.ok and any("head seal says seq 9, trail ends at seq 8" in p
                                 for p in report.problems)  # fmt: skip


def test_real_sigkill_between_line_and_seal(store: SoftKeyStore, tmp_path: Path) -> None:
    """A real SIGKILL at that exact point (the head write), in a child process."""
    script = tmp_path / "kill.py"
    script.write_text(
        "import os, signal, sys\n"
        "from pipeline.audit import trail\n"
        "from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage\n"
        "from pipeline.keys.soft import SoftKeyStore\n"
        "from tests.unit.keys.storekit import HMK\n"
        "store = SoftKeyStore(sys.argv[1], HMK)\n"
        "trail.AuditTrail._write_head = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "store.generate('killed', KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK,\n"
        "               'bureau:demo', actor='o')\n"
    )
    child = subprocess.run([sys.executable, str(script), str(store.path)], check=False,
                           cwd=Path(__file__).parents[3], capture_output=True)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-400:]
    report = store.audit_trail.verify()
    assert report.ok and report.notes and report.last_seq == 7, report
    _tdes_tk(store, "after")
    assert store.audit_trail.verify().ok and store.audit_trail.verify().entries == 9
