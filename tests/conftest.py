"""Shared pytest configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"


def load_vectors(name: str) -> Any:
    """Load ``tests/vectors/<name>.json`` (each vector carries its source)."""
    return json.loads((VECTORS / f"{name}.json").read_text())


@pytest.fixture
def vectors() -> Any:
    return load_vectors
