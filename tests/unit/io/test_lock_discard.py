"""exclusive_lock(discard_unused=True): a refused run removes the batch directory it made, safely.

Removed only when this acquisition created the directory, the block failed,
and nothing but the lock file is in it; a run waiting on a lock file removed
that way starts over with a new one (never two holders on two files).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pipeline.io.lock import exclusive_lock, lock_holder

FORK = multiprocessing.get_context("fork")


class Refused(Exception):
    pass


def test_a_failed_block_removes_the_directory_it_created(tmp_path: Path) -> None:
    lock = tmp_path / "batches" / "demo" / "b1" / ".lock"
    with pytest.raises(Refused), exclusive_lock(lock, "batch b1", discard_unused=True):
        assert lock.exists()
        raise Refused
    assert not lock.parent.exists()
    assert lock.parent.parent.is_dir()  # only the batch directory goes


def test_without_the_flag_or_on_success_nothing_is_removed(tmp_path: Path) -> None:
    lock = tmp_path / "b1" / ".lock"
    with pytest.raises(Refused), exclusive_lock(lock, "batch b1"):
        raise Refused
    assert lock.exists()
    other = tmp_path / "b2" / ".lock"
    with exclusive_lock(other, "batch b2", discard_unused=True):
        pass
    assert other.exists()


def test_a_directory_with_content_or_made_by_someone_else_stays(tmp_path: Path) -> None:
    lock = tmp_path / "b1" / ".lock"
    with pytest.raises(Refused), exclusive_lock(lock, "batch b1", discard_unused=True):
        (lock.parent / "staging").mkdir()
        raise Refused
    assert sorted(p.name for p in lock.parent.iterdir()) == [".lock", "staging"]
    existing = tmp_path / "b2"
    existing.mkdir()
    with pytest.raises(Refused), exclusive_lock(existing / ".lock", "b2", discard_unused=True):
        raise Refused
    assert (existing / ".lock").exists()


def test_a_nested_acquisition_never_removes(tmp_path: Path) -> None:
    lock = tmp_path / "b1" / ".lock"
    with exclusive_lock(lock, "outer"):
        with pytest.raises(Refused), exclusive_lock(lock, "inner", discard_unused=True):
            raise Refused
        assert lock.exists()
    assert lock.exists()


def _refuse_after(path: str, ready, go) -> None:  # child process
    try:
        with exclusive_lock(Path(path), "refused run", discard_unused=True):
            ready.set()
            go.wait(10)
            time.sleep(0.5)  # the parent is blocked in flock on this very file by now
            raise Refused
    except Refused:
        pass


def test_a_waiter_on_a_removed_lock_file_takes_a_new_one(tmp_path: Path) -> None:
    """The waiter's flock succeeds on the unlinked file: it must notice and start over."""
    lock = tmp_path / "b1" / ".lock"
    ready, go = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_refuse_after, args=(str(lock), ready, go))
    child.start()
    try:
        assert ready.wait(10)
        go.set()
        with exclusive_lock(lock, "waiting run", wait=10):
            # this process holds the lock on the file now at `lock`, not on a ghost
            assert lock.exists()
            assert lock_holder(lock) == f"pid {os.getpid()}: waiting run"
            assert _locked_by_someone(lock)  # the file at `lock` is the one held
    finally:
        go.set()
        child.join(10)
    assert child.exitcode == 0


def _locked_by_someone(lock: Path) -> bool:
    """True when a new open file description of ``lock`` cannot get the flock (it is held)."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
