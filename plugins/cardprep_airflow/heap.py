"""Keep the garbage collector off Airflow's long-lived heap (issue 7, ``airflow dags test``).

A process that has imported Airflow and parsed the DAGs holds ~650,000
tracked objects (modules, classes, the execution API's generated models),
and every full collection walks all of them: ~0.35-0.45 s each here, nine
of them in a 1,000-card ``airflow dags test card_batch_demo``, and about
2 s of collections while the interpreter shuts down.  Almost none of those
objects ever becomes garbage.

:func:`settle_long_lived_heap` (called by each DAG file once its DAGs are
built) moves every object alive at that point into the collector's
permanent generation (:func:`gc.freeze`), so later collections only walk
what was allocated since; it also freezes once more at interpreter exit, so
the shutdown collections are skipped.  Objects are still freed by reference
counting; only cycles that were already garbage at a freeze stay until the
process ends.  Forked workers (the ``prepare`` pool) then do not touch the
frozen objects' pages either (the reason CPython documents ``gc.freeze``).

Under an executor a task process ends with ``os._exit`` (no shutdown
collection at all) and DAG-file processors are short-lived children: this
only changes when their collections run, never what they compute.

Example::

    settle_long_lived_heap()   # at the end of a DAG file
"""

from __future__ import annotations

import atexit
import gc

__all__ = ["settle_long_lived_heap"]

_EXIT_HOOK: list[bool] = []


def settle_long_lived_heap() -> None:
    """Freeze the objects alive now (:func:`gc.freeze`) and once more at interpreter exit."""
    gc.freeze()
    if not _EXIT_HOOK:
        atexit.register(gc.freeze)
        _EXIT_HOOK.append(True)
