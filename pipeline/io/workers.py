"""Worker processes that end with the process that started them.

A ``ProcessPoolExecutor`` worker blocks on its call queue until the pool
shuts down.  When the parent is killed outright (``SIGKILL`` from an
operator, the OOM killer, Airflow killing a task that overran its timeout),
nothing shuts the pool down: the workers are re-parented to init and sleep
there for ever, each holding an open key store (its HMK and unwrapped
working keys in memory), claimed ICC pool entries and ~100 MB.  Measured
before this module: both workers of a ``cardprep run`` killed mid-prepare
were still alive, parent pid 1.

:func:`exit_with_parent`, called from a pool initializer, starts a daemon
thread that checks every :data:`POLL_SECONDS` whether the worker still has
the parent it was started by, and ends the worker with ``os._exit`` (no
clean-up handlers: nothing of a half-done task is written) when it does not.
The parent's pid is taken in the parent and passed in, so a parent that died
before the initializer ran is noticed too.  A thread rather than Linux's
``PR_SET_PDEATHSIG``: that signal fires when the *thread* that forked the
worker ends, which for a pool started from a short-lived thread would kill
healthy workers.

Example:
    >>> ProcessPoolExecutor(2, initializer=exit_with_parent, initargs=(os.getpid(),))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["ORPHAN_EXIT_CODE", "POLL_SECONDS", "exit_with_parent", "parent_is"]

#: Seconds between two checks of the parent (the longest an orphan lives).
POLL_SECONDS = 0.5
#: Exit status of a worker that outlived its parent (EX_SOFTWARE, sysexits.h).
ORPHAN_EXIT_CODE = 70


def parent_is(pid: int) -> bool:
    """True while this process's parent is ``pid`` (False once re-parented).

    Example:
        >>> parent_is(os.getppid()), parent_is(-1)
        (True, False)
    """
    return os.getppid() == pid


def _watch(parent: int, poll: float) -> None:
    while parent_is(parent):
        time.sleep(poll)
    os._exit(ORPHAN_EXIT_CODE)


def exit_with_parent(parent: int, poll: float = POLL_SECONDS) -> None:
    """End this process within ``poll`` seconds of ``parent`` going away (see module docstring).

    Call it in the worker (a pool's ``initializer``) with the pool owner's
    pid, taken in the owner (``os.getpid()`` when the pool is built).
    """
    watcher = threading.Thread(
        target=_watch, args=(parent, poll), name="cardprep-exit-with-parent", daemon=True
    )
    watcher.start()
