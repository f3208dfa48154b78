"""Shared fixtures of the reliability suite (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.keys.demo import init_demo_store
from pipeline.keys.soft import SoftKeyStore

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftKeyStore]:
    """One demo key store (TEST keys, demo PKIs) for the whole reliability session."""
    path = tmp_path_factory.mktemp("reliability-store")
    store = init_demo_store(
        path / "keys.db",
        CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=path / "audit.jsonl",
    )
    yield store
    store.close()
