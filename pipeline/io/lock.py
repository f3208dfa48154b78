"""Exclusive batch and shard locks (``fcntl.flock`` on a lock file).

Issue 8 "Concurrency": the same file triggered twice at once prepares once;
the other run waits or refuses with a clear message.  A lock is an
``flock(LOCK_EX)`` on a small file beside the batch (``<batch>/.lock``, or
``parts/.part-NNNNN.lock`` for one shard).  The kernel releases it when the
holder dies (even on SIGKILL), so a crashed run never leaves a stale lock.

Locks are re-entrant *within one process*: ``run_batch`` holds the batch lock
and calls steps that take it again; the nested acquisition is a no-op.  The
holder writes its pid and a short description into the file so that the
refusal message can say who holds it.

A run refused before it wrote anything (wrong issuer in the header, a
duplicate delivery, a bad trailer...) would leave a batch directory holding
only ``.lock``.  With ``discard_unused=True`` the outermost holder removes the
lock file and the directory when the block fails, *if* it created the
directory and nothing but the lock is in it, while it still holds the lock.
Every acquisition therefore checks, once it has the ``flock``, that its file
is still the one at ``path`` (same inode); a run that was waiting on a lock
file removed this way starts over with a new one, so two runs never both
"hold" a lock on two different files.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / ".lock"
    >>> with exclusive_lock(p, "demo batch"):
    ...     with exclusive_lock(p, "nested"):   # same process: re-entrant
    ...         held_locks() == [str(p)]
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import BatchLockedError

__all__ = ["exclusive_lock", "held_locks", "lock_holder"]

_POLL_SECONDS = 0.2
_held: dict[str, int] = {}  # path -> depth, this process only
_guard = threading.Lock()


def held_locks() -> list[str]:
    """Paths of the locks this process holds (for tests and diagnostics)."""
    with _guard:
        return sorted(_held)


def lock_holder(path: Path) -> str:
    """What the current holder wrote into the lock file ("pid N: what"), or ""."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """Open (creating) ``path`` and its directory; return (fd, whether this call made the dir).

    Retries when the directory disappears between ``mkdir`` and ``open`` (a
    refused run just removed it, see :func:`_discard_unused`).
    """
    while True:
        try:
            path.parent.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), created
        except FileNotFoundError:
            continue


def _still_linked(fd: int, path: Path) -> bool:
    """True when ``path`` is still the file open as ``fd`` (not removed or replaced)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _discard_unused(path: Path) -> bool:
    """Remove lock file ``path`` and its directory if nothing else is in it; True if removed.

    Called with the lock held.  Unlinking first makes a waiter on this file
    start over (:func:`_still_linked`); ``rmdir`` fails harmlessly when a file
    appeared meanwhile (another run's new lock file), and that run goes on.
    """
    directory = path.parent
    try:
        if os.listdir(directory) != [path.name]:
            return False
        path.unlink()
    except OSError:
        return False
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(
    path: Path, what: str, *, wait: float = 0.0, discard_unused: bool = False
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block.

    ``wait`` is how many seconds to wait for another holder (0 = refuse at
    once).  Raises :class:`~pipeline.errors.BatchLockedError` naming the lock
    file and its holder when the lock cannot be had.  ``discard_unused``: when
    the block raises, remove ``path`` and its directory if this acquisition
    created that directory and it holds nothing but ``path`` (see the module
    docstring); a nested (re-entrant) acquisition never removes anything.
    """
    key = str(path)
    with _guard:
        if key in _held:
            _held[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        fd, created = _open_lock_file(path)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    holder = lock_holder(path) or "another process"
                    raise BatchLockedError(
                        str(path),
                        f"{what} is being processed by {holder}; "
                        + (
                            "refused (try again when it finishes)"
                            if wait <= 0
                            else f"gave up after waiting {wait:g} s"
                        ),
                    )
                time.sleep(_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        if _still_linked(fd, path):
            break
        os.close(fd)  # removed by a refused run while we waited: start over
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        except BaseException:
            if discard_unused and created:
                _discard_unused(path)
            raise
        finally:
            with _guard:
                _held.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
