"""Shared fixtures of the reliability suite (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.keys.demo import init_demo_store
from pipeline.keys.soft import SoftKeyStore
from tests.reliability.enginekit import World, make_template

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


@pytest.fixture(scope="session")
def template_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A demo installation (settings, key store, storage) to clone per test."""
    return make_template(tmp_path_factory.mktemp("world") / "template")


@pytest.fixture
def world(template_world: World, tmp_path: Path) -> World:
    """A private copy of the template installation."""
    return template_world.clone(tmp_path / "world")
