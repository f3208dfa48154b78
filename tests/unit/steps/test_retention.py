"""pipeline.steps.retention: purge published batches past retention, with audit evidence.

Batches are laid out by hand here (manifest with ``published_at``, parts,
bureau file, input file in the inbound folder) so that each rule is tested
on its own; the end-to-end purge of a real published batch is in
tests/dags/test_card_batch.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import AuditError, ConfigError
from pipeline.io.paths import batch_id_for
from pipeline.keys.demo import init_demo_store
from pipeline.keys.settings import Settings, parse_settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.steps.retention import TOMBSTONE, is_due, purge_expired

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SoftKeyStore:
    path = tmp_path_factory.mktemp("ret") / "keys.db"
    return init_demo_store(
        path, REPO / "config/demo/keys.yaml",
        passphrase_file=REPO / "config/demo/hmk-passphrase.txt", with_pki=False,
    )  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return parse_settings({
        "environment": "demo",
        "storage": {"root": str(tmp_path / "store"), "inbound": str(tmp_path / "inbound")},
        "config_dir": str(REPO / "config"),
    })  # fmt: skip


def _batch(settings: Settings, name: str, content: bytes, published: datetime | None,
           issuer: str = "demo") -> tuple[Path, Path]:  # fmt: skip
    """An input file in the inbound folder and its batch directory (published or not)."""
    inbound = Path(settings.raw["storage"]["inbound"]) / issuer
    inbound.mkdir(parents=True, exist_ok=True)
    source = inbound / name
    source.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    base = Path(settings.raw["storage"]["root"]) / "batches" / issuer / batch_id_for(digest)
    for rel in ("parts/part-00000.parquet", "bureau/x.cps", "staging/segment-00000.sealed",
                "rejects.csv", "report.html"):  # fmt: skip
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"sealed data")
    if published is not None:
        manifest = {"batch_id": base.name, "created_at": published.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "input": {"name": source.name, "sha256": digest}}  # fmt: skip
        (base / "manifest.json").write_text(json.dumps(manifest))
    return source, base


def _events(store: SoftKeyStore, action: str) -> list[Any]:
    return [e for e in store.audit_trail.events() if e.action == action]


def test_is_due_boundaries() -> None:
    assert is_due("2026-05-02T12:00:00Z", 30, NOW)  # exactly 30 days
    assert not is_due("2026-05-02T12:00:01Z", 30, NOW)
    assert is_due("2026-06-01T12:00:00+00:00", 0, NOW)
    with pytest.raises(ConfigError, match="retention_days"):
        is_due("2026-05-02T12:00:00Z", -1, NOW)
    with pytest.raises(ConfigError, match="published_at"):
        is_due("yesterday", 30, NOW)


def test_purges_a_batch_past_retention_and_audits_it(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, base = _batch(settings, "old.dat", b"old file", NOW - timedelta(days=31))
    before = len(_events(store, "retention.purge"))
    result = purge_expired(settings, store=store, now=NOW)
    assert [p["batch_id"] for p in result["purged"]] == [base.name]
    evidence = result["purged"][0]
    assert evidence["input_removed"] is True and evidence["files"] == 5
    assert evidence["retention_days"] == 30 and evidence["age_days"] == 31
    assert not source.exists()
    assert sorted(p.name for p in base.iterdir()) == [".lock", "manifest.json", TOMBSTONE]
    tomb = json.loads((base / TOMBSTONE).read_text())
    assert tomb["batch_id"] == base.name
    manifest_digest = hashlib.sha256((base / "manifest.json").read_bytes()).hexdigest()
    assert tomb["manifest_sha256"] == manifest_digest
    events = _events(store, "retention.purge")
    assert len(events) == before + 1
    assert events[-1].subject == f"batch {base.name}" and events[-1].details["files"] == 5
    assert store.audit_trail.verify().ok
    again = purge_expired(settings, store=store, now=NOW + timedelta(days=1))
    assert again["purged"] == [] and again["already_purged"] == 1
    assert len(_events(store, "retention.purge")) == before + 1


def test_keeps_young_unpublished_and_other_files(settings: Settings, store: SoftKeyStore) -> None:
    young_src, young = _batch(settings, "young.dat", b"young", NOW - timedelta(days=29))
    _, unpublished = _batch(settings, "wip.dat", b"in progress", None)
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"] == [] and result["kept"] == 1
    assert result["unpublished"] == [f"demo/{unpublished.name}"]
    assert young_src.exists() and (young / "parts/part-00000.parquet").exists()
    assert (unpublished / "parts/part-00000.parquet").exists()


def test_a_different_file_with_the_input_name_is_not_deleted(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, _ = _batch(settings, "reused.dat", b"first delivery", NOW - timedelta(days=40))
    source.write_bytes(b"a new file that reuses the name")
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"][0]["input_removed"] is False
    assert source.read_bytes() == b"a new file that reuses the name"


def test_dry_run_deletes_nothing_and_audits_nothing(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, base = _batch(settings, "old.dat", b"dry", NOW - timedelta(days=60))
    before = len(_events(store, "retention.purge"))
    result = purge_expired(settings, store=store, now=NOW, dry_run=True)
    assert result["dry_run"] is True and result["purged"][0]["dry_run"] is True
    assert source.exists() and (base / "bureau/x.cps").exists() and not (base / TOMBSTONE).exists()
    assert len(_events(store, "retention.purge")) == before


class _NoTrail:
    """A store without an audit trail: the purge must fail closed."""

    def close(self) -> None:
        pass


def test_no_audit_trail_means_nothing_is_deleted(settings: Settings) -> None:
    source, base = _batch(settings, "old.dat", b"fail closed", NOW - timedelta(days=60))
    store: Any = _NoTrail()
    with pytest.raises(AuditError, match="audit trail"):
        purge_expired(settings, store=store, now=NOW)
    assert source.exists() and (base / "parts/part-00000.parquet").exists()
    assert not (base / TOMBSTONE).exists()


def test_an_interrupted_purge_is_finished_without_a_second_event(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, base = _batch(settings, "crash.dat", b"crashed purge", NOW - timedelta(days=45))
    (base / TOMBSTONE).write_text("{}")  # crashed after the audit event and the tombstone
    before = len(_events(store, "retention.purge"))
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"][0]["input_removed"] is True and not source.exists()
    assert not (base / "parts").exists()
    assert len(_events(store, "retention.purge")) == before


def test_stale_unpublished_inputs_are_reported_not_deleted(
    settings: Settings, store: SoftKeyStore
) -> None:
    inbound = Path(settings.raw["storage"]["inbound"]) / "demo"
    inbound.mkdir(parents=True)
    stale = inbound / "never-published.dat"
    stale.write_bytes(b"rejected at verify")
    old = (NOW - timedelta(days=31)).timestamp()
    os.utime(stale, (old, old))
    (inbound / "fresh.dat").write_bytes(b"just landed")
    root = Path(settings.raw["storage"]["root"]) / "batches" / "demo"
    root.mkdir(parents=True)
    result = purge_expired(settings, store=store, now=NOW)
    assert result["stale_inputs"] == {"demo": ["never-published.dat"]}
    assert stale.exists()


def test_issuer_without_config_uses_the_default(settings: Settings, store: SoftKeyStore) -> None:
    _, base = _batch(settings, "x.dat", b"gone issuer", NOW - timedelta(days=12), issuer="gone")
    assert purge_expired(settings, store=store, now=NOW)["kept"] == 1
    result = purge_expired(settings, store=store, now=NOW, default_retention_days=10)
    assert [p["batch_id"] for p in result["purged"]] == [base.name]
