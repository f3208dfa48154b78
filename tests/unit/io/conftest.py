"""Fixtures for the pipeline.io unit tests: one small demo key store (no PKI) per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.keys.demo import init_demo_store
from pipeline.keys.model import KeyRef
from pipeline.keys.soft import SoftKeyStore

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftKeyStore]:
    path = tmp_path_factory.mktemp("iostore") / "keys.db"
    ks = init_demo_store(
        path,
        ROOT / "config/demo/keys.yaml",
        passphrase_file=ROOT / "config/demo/hmk-passphrase.txt",
        with_pki=False,
    )
    yield ks
    ks.close()


@pytest.fixture(scope="session")
def data_key(store: SoftKeyStore) -> KeyRef:
    return store.active("demo-data")


@pytest.fixture(scope="session")
def tk(store: SoftKeyStore) -> KeyRef:
    return store.active("demo-tk")
