"""Every docstring example in ``pipeline`` runs and holds (house style: examples are tested).

Examples that need a live store, file or token are marked ``# doctest: +SKIP``
where they stand; everything else runs here.  ``tests/unit/prep/test_doctests.py``
additionally requires the prep modules to *have* examples.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pipeline

MODULES = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."))


def test_every_module_is_walked() -> None:
    assert {"pipeline.crypto.emv_certs", "pipeline.steps.retention"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
