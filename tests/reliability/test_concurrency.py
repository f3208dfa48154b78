"""Concurrency: the same file triggered twice at once is prepared once.

Issue 8 "Concurrency".  Two ``cardprep run`` processes start together on one
input file.  Exactly one publishes; the other refuses with a clear message
(``batch <id>`` held by another run, or already published) and exit status
2; the batch has one manifest, verifies, and holds every card once.  With
``batch.lock_wait`` set, the second run waits for the lock instead, then
finds the batch published and refuses without preparing anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.io.parts import iter_part_batches
from pipeline.io.paths import batch_id_for, sha256_file
from tests.reliability.enginekit import World

ROUNDS = 3


def _race(world: World, path: str) -> list[tuple[int, str]]:
    procs = [world.popen("run", "--issuer", "demo", "--file", path) for _ in range(2)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        out.append((p.returncode, err))
    return out


def _check_once(world: World, path: str, records: int) -> None:
    batch = world.storage / "batches" / "demo" / batch_id_for(sha256_file(Path(path)))
    manifest = json.loads((batch / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["in"] == records == c["prepared"] + c["rejected"]
    lines: list[int] = []
    for f in manifest["files"]:
        if f["kind"] == "part":
            for cols in iter_part_batches(batch / f["path"]):
                lines += cols["line_no"]
    assert len(lines) == len(set(lines)) == c["prepared"]
    r = world.cli("verify", str(batch), "--no-rederive")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_same_file_twice_at_once_prepares_once(world: World) -> None:
    for n in range(ROUNDS):
        sample = world.sample(30, seed=200 + n, errors=0.1, name=f"race-{n}.dat")
        results = sorted(_race(world, str(sample.path)), key=lambda r: r[0])
        (ok_rc, _), (refused_rc, message) = results
        assert ok_rc == 0, results
        assert refused_rc == 2, results
        assert "cardprep: error:" in message and "Traceback" not in message, message
        bid = batch_id_for(sha256_file(sample.path))
        assert bid in message, message
        assert any(w in message.lower() for w in ("lock", "another run", "published")), message
        _check_once(world, str(sample.path), 30)


@pytest.mark.slow
def test_second_run_waits_then_refuses_the_published_batch(world: World) -> None:
    world.write_settings(lock_wait=60)
    sample = world.sample(30, seed=300, errors=0.1, name="wait.dat")
    first = world.popen("run", "--issuer", "demo", "--file", str(sample.path))
    time.sleep(0.3)
    second = world.popen("run", "--issuer", "demo", "--file", str(sample.path))
    _, err1 = first.communicate(timeout=120)
    _, err2 = second.communicate(timeout=120)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (err1, err2)
    refused = err2 if second.returncode == 2 else err1
    assert "published" in refused.lower() and "Traceback" not in refused, refused
    _check_once(world, str(sample.path), 30)
