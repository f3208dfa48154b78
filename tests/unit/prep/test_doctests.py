"""The docstring examples of the prep, profile and DGI modules run and hold."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from pipeline.prep import card, certs, emv_data, static_data
from pipeline.profiles import model
from pipeline.records import dgi


@pytest.mark.parametrize("module", [dgi, emv_data, static_data, certs, card, model])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0
