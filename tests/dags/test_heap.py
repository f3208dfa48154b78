"""settle_long_lived_heap: gc.freeze now, and once more at interpreter exit (registered once)."""

from __future__ import annotations

import gc
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cardprep_airflow import heap


@pytest.fixture
def thawed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[..., Any]]]:
    """No frozen objects and no exit hook yet; exit hooks recorded instead of registered.

    The DAG files already froze the heap when the session's DagBag parsed
    them: start from an unfrozen heap so the freeze seen is this test's, and
    unfreeze again afterwards so the rest of the suite is unaffected.
    """
    registered: list[Callable[..., Any]] = []
    monkeypatch.setattr(heap, "_EXIT_HOOK", [])
    monkeypatch.setattr(heap, "atexit", types.SimpleNamespace(register=registered.append))
    gc.unfreeze()
    try:
        yield registered
    finally:
        gc.unfreeze()


def test_the_heap_alive_now_is_frozen(thawed: list[Callable[..., Any]]) -> None:
    assert gc.get_freeze_count() == 0
    heap.settle_long_lived_heap()
    assert gc.get_freeze_count() > 0


def test_the_exit_freeze_is_registered_once(thawed: list[Callable[..., Any]]) -> None:
    heap.settle_long_lived_heap()
    heap.settle_long_lived_heap()  # a second DAG file
    assert thawed == [gc.freeze]
    assert heap._EXIT_HOOK == [True]
