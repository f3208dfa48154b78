"""A SIGKILLed parent leaves no pool worker behind (pipeline/io/workers.py).

Before the fix both workers of a ``cardprep run`` killed mid-prepare were
still alive minutes later, re-parented to init, each holding an open key
store.  Each test starts the real pool in a child interpreter, waits until
its workers run, SIGKILLs the child and expects every worker gone within a
few poll periods.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.io.workers import POLL_SECONDS, parent_is
from pipeline.keys.demo import init_demo_store

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
GONE_WITHIN = 10 * POLL_SECONDS + 2.0


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; zombies excluded)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_and_watch(argv: list[str], workers: int, *, start_within: float = 60.0) -> list[int]:
    """Run ``argv``; once it has ``workers`` children, SIGKILL it; return the children left."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + start_within
        kids: list[int] = []
        while len(kids) < workers:
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                pytest.fail(f"{argv[:3]} ended (rc {proc.returncode}) before its workers: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {workers} workers after {start_within} s")
            time.sleep(0.05)
            kids = _children(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + GONE_WITHIN
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [k for k in kids if _alive(k)]


def test_parent_is() -> None:
    assert parent_is(os.getppid())
    assert not parent_is(os.getpid())


def test_prepare_pool_workers_end_with_a_killed_parent() -> None:
    code = (
        "import time\n"
        "from pipeline.steps.prepare import WorkerPool\n"
        "pool = WorkerPool(2)\n"
        "pool.warm(__import__('pathlib').Path('config'), ('demo-pboc-sm2',))\n"
        "time.sleep(120)\n"
    )
    left = _kill_and_watch([sys.executable, "-c", code], workers=2)
    assert left == [], f"orphaned prepare workers {left}"


def test_keypool_fill_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    init_demo_store(
        tmp_path / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=tmp_path / "audit.jsonl", with_pki=False,
    ).close()  # fmt: skip
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "environment: demo\nkey_store:\n  backend: soft\n"
        f"  path: {tmp_path / 'keys.db'}\n  audit_path: {tmp_path / 'audit.jsonl'}\n"
        f"  pool_path: {tmp_path / 'keypool.db'}\n"
        f"  hmk:\n    source: passphrase_file\n"
        f"    passphrase_file: {CONFIG / 'demo' / 'hmk-passphrase.txt'}\n"
    )
    cli = [sys.executable, "-m", "pipeline.cli.main", "keypool", "fill", "--settings",
           str(settings), "--algorithm", "rsa", "--bits", "1152", "--exponent", "3",
           "--count", "20000", "--workers", "2"]  # fmt: skip
    left = _kill_and_watch(cli, workers=2)
    assert left == [], f"orphaned keypool fill workers {left}"
