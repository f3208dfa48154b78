"""Files opened in place are private to their owner (mode 0600), whatever the umask.

QA found ``keys.db``, ``audit.jsonl`` and the ceremony database created 0644
(the umask's default): key metadata and wrapped keys readable by every local
account.  Atomically written files (manifests, reports) were already 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.keys.custodians import connect
from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.pool import KeyPool
from tests.unit.keys.storekit import new_store


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def test_key_store_its_wal_and_audit_trail_are_owner_only(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.generate("tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo", actor="o")
    files = [store.path, Path(f"{store.path}-wal"), store.audit_trail.path]
    assert all(p.exists() for p in files)
    assert [p.name for p in files if _open_to_others(p)] == []
    store.close()


def test_pool_and_ceremony_databases_are_owner_only(tmp_path: Path) -> None:
    with KeyPool(tmp_path / "keypool.db") as pool:
        assert not _open_to_others(pool.path)
    conn = connect(tmp_path / "ceremony.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert not _open_to_others(tmp_path / "ceremony.sqlite")
