"""Shared fixtures of the step tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.keys.settings import Settings, parse_settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Demo settings with storage and inbound under the test's own temporary folder."""
    return parse_settings({
        "environment": "demo",
        "storage": {"root": str(tmp_path / "store"), "inbound": str(tmp_path / "inbound")},
        "config_dir": str(REPO / "config"),
    })  # fmt: skip
