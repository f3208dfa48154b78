"""Crash and re-run: SIGKILL ``cardprep run`` at random points, re-run, nothing lost or doubled.

Issue 8 "Crash and re-run".  The engine offers no kill-point hook, so each
kill is a real ``SIGKILL`` of a ``cardprep run`` subprocess after a random
delay drawn over the measured duration of an uninterrupted run (so kills
land in start-up, parse, prepare, publish and reconcile alike).  Several
chains, each a fresh input file: kill, kill again, ..., then run to the end.
After every kill:

* a batch directory either has no ``manifest.json`` (not published: nothing
  looks complete) or is complete and verifies (the manifest is the commit
  marker, written last);

and after the final run:

* ``cardprep verify`` passes; records in = prepared + rejected = the file's
  record count; the manifest lists exactly the Parquet parts on disk (no
  temporary or leftover file counted);
* no card twice: input line numbers unique across parts and rejects, every
  ICC public key (SHA-256) unique;
* ``cardprep audit verify`` passes (the key-management trail survived the kills).

Seeded (``CARDPREP_CRASH_SEED`` to replay); at least ``KILLS`` real kills, at most
``KILLS_PER_CHAIN`` per file (a kill after the commit marker moves on to a new file).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from pipeline.errors import AuditError
from pipeline.io.parts import iter_part_batches
from pipeline.io.paths import batch_id_for, sha256_file
from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.reliability.enginekit import World

KILLS_PER_CHAIN = 7
KILLS = 21
CARDS = 30
#: Fixed (pipeline/audit/trail.py): the one MAC-valid line a kill between an append's line
#: and its head seal leaves is accepted by `audit verify` and re-sealed by the next append.
UNSEALED_TAIL = (
    "a SIGKILL between AuditTrail.append's line write and its head-seal write must not "
    "break `audit verify` nor refuse later appends"
)
SEED = int(os.environ.get("CARDPREP_CRASH_SEED", "20250115"))


def _kill_after(world: World, sample: Path, delay: float) -> tuple[str, str, float]:
    """Start ``cardprep run``, SIGKILL it after ``delay`` s; (how it ended, stderr tail, seconds).

    The seconds are how long the run lasted when it finished before the kill.
    """
    started = time.monotonic()
    proc = world.popen("run", "--issuer", "demo", "--file", str(sample))
    try:
        proc.wait(timeout=delay)
        ended = f"finished (rc {proc.returncode}) before the kill"
    except Exception:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ended = "killed"
    lasted = time.monotonic() - started
    _, err = proc.communicate()
    return ended, err[-400:], lasted


#: Fixed (pipeline/steps/publish.py): the reports are written before the manifest, which
#: lists and hashes them; a kill after the manifest leaves a complete, verifiable batch and
#: the re-run finishes the idempotent reconcile step (audit once, staging removed).
REPORT_AFTER_MANIFEST = (
    "a SIGKILL around the manifest must never leave report.json and report.html out of "
    "step with a published batch, nor make `cardprep verify` fail after the re-run"
)


def _main(world: World, *args: str) -> int:
    return main([*args, "--settings", str(world.settings)])


def _check_consistent(world: World) -> None:
    """After any kill: a batch is either unpublished or complete and verifiable."""
    for batch in world.batches():
        if (batch / "manifest.json").exists():
            assert _main(world, "verify", str(batch), "--no-rederive") == 0, batch.name


def _parts(batch: Path, manifest: dict[str, Any]) -> tuple[list[int], list[str]]:
    lines: list[int] = []
    keys: list[str] = []
    for f in manifest["files"]:
        if f["kind"] == "part":
            for cols in iter_part_batches(batch / f["path"]):
                lines += cols["line_no"]
                keys += cols["icc_pk_sha256"]
    return lines, keys


_CAPTURE: list[pytest.CaptureFixture[str]] = []


def capsys_text() -> str:
    out = _CAPTURE[-1].readouterr() if _CAPTURE else None
    return (out.out + out.err) if out is not None else ""


def _check_final(world: World, sample: Path, records: int) -> None:
    batch = world.storage / "batches" / "demo" / batch_id_for(sha256_file(sample))
    if _main(world, "verify", str(batch)) != 0:
        pytest.fail(f"{batch.name} does not verify after the re-run:\n{capsys_text()}")
    manifest = json.loads((batch / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["in"] == records == c["prepared"] + c["rejected"]
    lines, keys = _parts(batch, manifest)
    assert len(lines) == c["prepared"] and len(set(lines)) == len(lines), "a card twice"
    assert len(set(keys)) == len(keys), "an ICC key pair used twice"
    listed = {f["path"] for f in manifest["files"] if f["kind"] == "part"}
    on_disk = {p.relative_to(batch).as_posix() for p in (batch / "parts").glob("part-*.parquet")
               if not p.name.endswith(".rejects.parquet")}  # fmt: skip
    assert on_disk == listed, f"parts on disk {sorted(on_disk)} != manifest {sorted(listed)}"
    for f in manifest["files"]:
        assert ".tmp" not in f["path"] and not Path(f["path"]).name.startswith(".")
    reports = sorted(f["path"] for f in manifest["files"] if f["kind"].startswith("report"))
    assert reports == ["report.html", "report.json"], REPORT_AFTER_MANIFEST
    assert not (batch / "staging").exists(), "published and re-run, yet staging is left"
    assert _published_events(world, batch.name) == 1, "batch.published audited != once"
    rejects = json.loads(json.dumps(c.get("per_reason", {})))
    assert sum(rejects.values()) == c["rejected"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    _CAPTURE.append(capsys)
    rng = random.Random(SEED)
    calibrate = world.sample(CARDS, seed=1, errors=0.1, name="calibrate.dat")
    started = time.monotonic()
    r = world.cli("run", "--issuer", "demo", "--file", str(calibrate.path))
    duration = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    _check_final(world, calibrate.path, CARDS)
    kills: list[tuple[float, str]] = []
    chain = 0
    while sum(1 for _, ended in kills if ended == "killed") < KILLS and chain < 20:
        sample = world.sample(CARDS, seed=100 + chain, errors=0.1, name=f"chain-{chain}.dat")
        batch = world.storage / "batches" / "demo" / batch_id_for(sha256_file(sample.path))
        chain += 1
        for _ in range(KILLS_PER_CHAIN):
            delay = rng.uniform(0.3, 0.95) * duration
            ended, err, lasted = _kill_after(world, sample.path, delay)
            kills.append((round(delay, 3), ended))
            if ended != "killed":  # runs got faster than the calibration (a quieter machine)
                duration = min(duration, lasted)
            assert "head seal" not in err, f"{UNSEALED_TAIL}:\n{err}"
            assert "Traceback" not in err or ended == "killed", err
            _check_consistent(world)
            if (batch / "manifest.json").exists():
                break  # killed after the commit marker: published; next file
        r = world.cli("run", "--issuer", "demo", "--file", str(sample.path))
        if r.returncode != 0:  # the last kill may have come after the manifest: published
            assert "head seal" not in r.stderr, f"{UNSEALED_TAIL}:\n{r.stderr}"
            assert "published" in r.stderr, r.stderr
        _check_final(world, sample.path, CARDS)
        if chain == 1:  # a published batch is never prepared twice without --force
            again = world.cli("run", "--issuer", "demo", "--file", str(sample.path))
            assert again.returncode != 0 and "publish" in again.stderr.lower(), again.stderr
    assert sum(1 for _, ended in kills if ended == "killed") >= KILLS, kills
    capsys.readouterr()
    if _main(world, "audit", "verify") != 0:
        text = capsys.readouterr().out
        pytest.fail(f"audit trail broken after the kills: {text}")


def test_audit_trail_survives_a_kill_between_line_and_seal(tmp_path: Path) -> None:
    """Deterministic replay of that kill: the line is on disk, the head still the old one."""
    store = SoftKeyStore.create(tmp_path / "keys.db", bytes(range(32)), actor="officer-1")
    head = store.audit_trail.head_path
    before = head.read_bytes()
    store.generate("k1", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:t",
                   actor="officer-1")  # fmt: skip
    head.write_bytes(before)  # what SIGKILL after the line's fsync, before os.replace, leaves
    report = store.audit_trail.verify()
    assert report.ok and report.notes, report
    try:
        store.generate("k2", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "issuer:t",
                       actor="officer-1")  # fmt: skip
    except AuditError as exc:
        pytest.fail(f"the store is bricked by one interrupted append: {exc}")
    actions = [e.action for e in store.audit_trail.events()]
    assert actions[-3:] == ["key.generate", "audit.recovered", "key.generate"], actions
    report = store.audit_trail.verify()
    assert report.ok and not report.notes, report
    # ... while a line dropped after that is still truncation (the head moved on).
    lines = store.audit_trail.path.read_text().splitlines(keepends=True)
    store.audit_trail.path.write_text("".join(lines[:-1]))
    assert not store.audit_trail.verify().ok


def _published_events(world: World, batch_id: str) -> int:
    events = [json.loads(line) for line in world.audit.read_text().splitlines() if line.strip()]
    return sum(1 for e in events
               if e["action"] == "batch.published" and e["subject"] == f"batch {batch_id}")


class _Killed(BaseException):
    """Stands for a SIGKILL at an exact point: no handler catches it, nothing more is written."""


def _die(*_: Any, **__: Any) -> None:
    raise _Killed


def _killed_run(world: World, monkeypatch: pytest.MonkeyPatch, target: str) -> Path:
    """``cardprep run`` in-process, killed when it calls ``target``; returns the batch dir."""
    sample = world.sample(CARDS, seed=1, errors=0.1, name="replay.dat")
    with monkeypatch.context() as m:
        m.setattr(target, _die)
        with pytest.raises(_Killed):
            _main(world, "run", "--issuer", "demo", "--file", str(sample.path))
    return world.storage / "batches" / "demo" / batch_id_for(sha256_file(sample.path))


def _rerun_and_check(world: World, batch: Path) -> None:
    sample = str(world.inbound / "replay.dat")
    r = world.cli("run", "--issuer", "demo", "--file", sample)
    assert r.returncode == 0, r.stderr
    assert _main(world, "verify", str(batch)) == 0
    assert not (batch / "staging").exists()
    assert _published_events(world, batch.name) == 1
    again = world.cli("run", "--issuer", "demo", "--file", sample)
    assert again.returncode != 0 and "already published" in again.stderr, again.stderr


def test_kill_after_the_reports_before_the_manifest(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both reports are on disk, the manifest is not: not published; the re-run publishes."""
    batch = _killed_run(world, monkeypatch, "pipeline.steps.publish.write_manifest")
    assert (batch / "report.json").exists() and (batch / "report.html").exists()
    assert not (batch / "manifest.json").exists()
    assert _main(world, "verify", str(batch)) != 0  # not published: nothing looks complete
    _rerun_and_check(world, batch)


@pytest.mark.parametrize("target", [
    "pipeline.steps.batch.reconcile",  # right after the manifest: nothing audited yet
    "pipeline.steps.reconcile.shutil.rmtree",  # audited, staging not yet deleted
])  # fmt: skip
def test_kill_after_the_manifest_then_rerun(
    world: World, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """The window REPORT_AFTER_MANIFEST was about: published, reconcile unfinished.

    The batch verifies at once (its reports were written before the manifest,
    which hashes them); the re-run prepares nothing, finishes reconcile and
    audits ``batch.published`` exactly once; a further run is refused.
    """
    batch = _killed_run(world, monkeypatch, target)
    assert (batch / "manifest.json").exists() and (batch / "staging").exists()
    assert _main(world, "verify", str(batch)) == 0
    parts = {p.name: p.stat().st_mtime_ns for p in (batch / "parts").iterdir()}
    _rerun_and_check(world, batch)
    assert {p.name: p.stat().st_mtime_ns for p in (batch / "parts").iterdir()} == parts


def test_reports_lost_after_publication_are_detected(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report missing beside a manifest can no longer come from a crash; it is damage."""
    sample = world.sample(CARDS, seed=1, errors=0.1, name="report.dat")
    assert world.cli("run", "--issuer", "demo", "--file", str(sample.path)).returncode == 0
    batch = world.storage / "batches" / "demo" / batch_id_for(sha256_file(sample.path))
    (batch / "report.html").unlink()
    capsys.readouterr()
    assert _main(world, "verify", str(batch)) == 1
    assert "report.html [exists]" in capsys.readouterr().err
