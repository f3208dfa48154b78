"""Read a mapped task's results without probing past the end.

Iterating Airflow 3's lazy XCom sequence asks for one item more than there
is and logs an ``XCom not found`` *error* for it; auditors reading the task
log should not see errors that are not.  ``as_list`` asks for the length
first, then for each item.

Example::

    as_list(shard_results)   # [] for None or an empty expansion
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["as_list"]


def as_list(values: Sequence[Any] | None) -> list[Any]:
    """The items of a (lazy) XCom sequence as a plain list."""
    if values is None:
        return []
    return [values[i] for i in range(len(values))]
