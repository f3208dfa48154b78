"""pipeline.steps.retention: purge published batches past retention, with audit evidence.

Batches are laid out by hand here (a manifest MACed by the store with its
``created_at``, parts, bureau file, input file in the inbound folder) so
that each rule is tested on its own; the end-to-end purge of a real
published batch is in tests/dags/test_maintenance_dags.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import AuditError, BatchPurgedError, ConfigError, VerificationError
from pipeline.io.manifest import seal_manifest
from pipeline.io.paths import BatchPaths, batch_id_for
from pipeline.keys import KeyRef
from pipeline.keys.demo import init_demo_store
from pipeline.keys.settings import Settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.steps import retention
from pipeline.steps.retention import (
    TOMBSTONE,
    is_due,
    purge_expired,
    purge_record,
    raise_if_purged,
)

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SoftKeyStore:
    path = tmp_path_factory.mktemp("ret") / "keys.db"
    return init_demo_store(
        path, REPO / "config/demo/keys.yaml",
        passphrase_file=REPO / "config/demo/hmk-passphrase.txt", with_pki=False,
    )  # fmt: skip


def _sealed(manifest: dict[str, Any], store: SoftKeyStore) -> str:
    """The manifest as publish writes it: MACed under the demo TK (batch.manifest_key)."""
    return json.dumps(seal_manifest(manifest, store, store.active("demo-tk")), indent=2)


def _batch(settings: Settings, store: SoftKeyStore, name: str, content: bytes,
           published: datetime | None, issuer: str = "demo") -> tuple[Path, Path]:  # fmt: skip
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
        (base / "manifest.json").write_text(_sealed(manifest, store))
    return source, base


def _paths(base: Path) -> BatchPaths:
    return BatchPaths(base.parent.parent.parent, base.parent.name, base.name)


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
    source, base = _batch(settings, store, "old.dat", b"old file", NOW - timedelta(days=31))
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
    young_src, young = _batch(settings, store, "young.dat", b"young", NOW - timedelta(days=29))
    _, unpublished = _batch(settings, store, "wip.dat", b"in progress", None)
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"] == [] and result["kept"] == 1
    assert result["unpublished"] == [f"demo/{unpublished.name}"]
    assert young_src.exists() and (young / "parts/part-00000.parquet").exists()
    assert (unpublished / "parts/part-00000.parquet").exists()


def test_a_different_file_with_the_input_name_is_not_deleted(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, _ = _batch(settings, store, "reused.dat", b"first delivery", NOW - timedelta(days=40))
    source.write_bytes(b"a new file that reuses the name")
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"][0]["input_removed"] is False
    assert source.read_bytes() == b"a new file that reuses the name"


def test_dry_run_deletes_nothing_and_audits_nothing(
    settings: Settings, store: SoftKeyStore
) -> None:
    source, base = _batch(settings, store, "old.dat", b"dry", NOW - timedelta(days=60))
    before = len(_events(store, "retention.purge"))
    result = purge_expired(settings, store=store, now=NOW, dry_run=True)
    assert result["dry_run"] is True and result["purged"][0]["dry_run"] is True
    assert source.exists() and (base / "bureau/x.cps").exists() and not (base / TOMBSTONE).exists()
    assert len(_events(store, "retention.purge")) == before


class _NoTrail:
    """A store without an audit trail (MACs checked by the real store): must fail closed."""

    def __init__(self, store: SoftKeyStore) -> None:
        self.get, self.verify_mac = store.get, store.verify_mac

    def close(self) -> None:
        pass


def test_no_audit_trail_means_nothing_is_deleted(settings: Settings, store: SoftKeyStore) -> None:
    source, base = _batch(settings, store, "old.dat", b"fail closed", NOW - timedelta(days=60))
    no_trail: Any = _NoTrail(store)
    with pytest.raises(AuditError, match="audit trail"):
        purge_expired(settings, store=no_trail, now=NOW)
    assert source.exists() and (base / "parts/part-00000.parquet").exists()
    assert not (base / TOMBSTONE).exists()


def test_an_interrupted_purge_is_finished_without_a_second_event(
    settings: Settings, store: SoftKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, base = _batch(settings, store, "crash.dat", b"crashed purge", NOW - timedelta(days=45))
    before = len(_events(store, "retention.purge"))

    def crash(*_: Any) -> bool:
        raise OSError("killed after the audit event and the tombstone")

    monkeypatch.setattr(retention, "_remove_input", crash)
    with pytest.raises(OSError, match="killed"):
        purge_expired(settings, store=store, now=NOW)
    assert (base / TOMBSTONE).exists() and (base / "parts").exists() and source.exists()
    monkeypatch.undo()
    result = purge_expired(settings, store=store, now=NOW)
    assert result["purged"][0]["input_removed"] is True and not source.exists()
    assert not (base / "parts").exists()
    assert len(_events(store, "retention.purge")) == before + 1


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
    _, base = _batch(
        settings, store, "x.dat", b"gone issuer", NOW - timedelta(days=12), issuer="gone"
    )
    assert purge_expired(settings, store=store, now=NOW)["kept"] == 1
    result = purge_expired(settings, store=store, now=NOW, default_retention_days=10)
    assert [p["batch_id"] for p in result["purged"]] == [base.name]


def _backdate(base: Path, days: int) -> None:
    """Edit created_at without the key (what a forger without the MAC key can do)."""
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["created_at"] = (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (base / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_whose_mac_fails_is_not_purged_but_reported(
    settings: Settings, store: SoftKeyStore
) -> None:
    src_edit, edited = _batch(
        settings, store, "edit.dat", b"young, edited", NOW - timedelta(days=2)
    )
    _backdate(edited, 400)
    src_bare, bare = _batch(settings, store, "bare.dat", b"no mac at all", NOW - timedelta(days=90))
    manifest = json.loads((bare / "manifest.json").read_text())
    (bare / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items()
                                                     if k != "mac"}))  # fmt: skip
    _, good = _batch(settings, store, "good.dat", b"old and genuine", NOW - timedelta(days=90))
    before = len(_events(store, "retention.purge"))
    for dry in (True, False):
        result = purge_expired(settings, store=store, now=NOW, dry_run=dry)
        assert [p["batch_id"] for p in result["purged"]] == [good.name]
        refused = {r["batch"]: r for r in result["refused"]}
        assert set(refused) == {f"demo/{edited.name}", f"demo/{bare.name}"}
        assert refused[f"demo/{edited.name}"]["check"].endswith("[mac]")
        assert "does not verify" in refused[f"demo/{edited.name}"]["detail"]
    for source, base in ((src_edit, edited), (src_bare, bare)):
        assert source.exists() and (base / "bureau/x.cps").exists()
        assert not (base / TOMBSTONE).exists()
    assert len(_events(store, "retention.purge")) == before + 1  # the genuine one only


def test_a_manifest_under_an_unknown_key_is_refused(
    settings: Settings, store: SoftKeyStore
) -> None:
    _, base = _batch(settings, store, "k.dat", b"unknown mac key", NOW - timedelta(days=90))
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["mac"]["key"] = str(KeyRef("no-such-key", 1))
    (base / "manifest.json").write_text(json.dumps(manifest))
    (refused,) = purge_expired(settings, store=store, now=NOW)["refused"]
    assert "cannot be checked" in refused["detail"] and "no-such-key" in refused["detail"]
    assert (base / "parts/part-00000.parquet").exists()


def test_a_purged_batch_is_reported_as_purged_with_its_audit_event(
    settings: Settings, store: SoftKeyStore
) -> None:
    _, base = _batch(settings, store, "p.dat", b"to be purged", NOW - timedelta(days=31))
    paths = _paths(base)
    assert purge_record(paths, store) is None
    raise_if_purged(paths, store)  # not purged: nothing to say
    (evidence,) = purge_expired(settings, store=store, now=NOW)["purged"]
    event = _events(store, "retention.purge")[-1]
    assert evidence["audit_seq"] == event.seq
    assert json.loads((base / TOMBSTONE).read_text())["audit_seq"] == event.seq
    record = purge_record(paths, store)
    assert record is not None and record.audit_seq == event.seq
    assert record.purged_at == "2026-06-01T12:00:00Z" and record.retention_days == 30
    with pytest.raises(BatchPurgedError) as info:
        raise_if_purged(paths, store)
    assert str(info.value) == (f"batch {base.name}: purged at 2026-06-01T12:00:00Z by retention "
                               f"(evidence: audit event {event.seq})")  # fmt: skip


def test_a_tombstone_the_audit_trail_does_not_back_excuses_nothing(
    settings: Settings, store: SoftKeyStore
) -> None:
    _, base = _batch(settings, store, "f.dat", b"files deleted by hand", NOW - timedelta(days=3))
    paths = _paths(base)
    digest = hashlib.sha256((base / "manifest.json").read_bytes()).hexdigest()
    forged = {"batch_id": base.name, "manifest_sha256": digest, "purged_at": "2026-06-01T00:00:00Z"}
    (base / TOMBSTONE).write_text(json.dumps(forged))
    with pytest.raises(VerificationError, match="not backed by the audit trail") as info:
        raise_if_purged(paths, store)
    assert not isinstance(info.value, BatchPurgedError)
    real = _events(store, "retention.purge")
    if real:  # an event of another batch does not back this one
        (base / TOMBSTONE).write_text(json.dumps({**forged, "audit_seq": real[-1].seq}))
        with pytest.raises(VerificationError, match=f"event {real[-1].seq}"):
            raise_if_purged(paths, store)
    (base / TOMBSTONE).write_text(json.dumps({**forged, "batch_id": "0" * 16}))
    with pytest.raises(VerificationError, match="names batch"):
        raise_if_purged(paths, store)
    (base / TOMBSTONE).write_text("not json")
    with pytest.raises(VerificationError, match="tombstone"):
        raise_if_purged(paths, store)


def test_the_tombstone_of_an_earlier_manifest_is_not_a_purge_of_this_one(
    settings: Settings, store: SoftKeyStore
) -> None:
    """Purged, then forced through again: the new publication is not purged (and gets its own)."""
    _, base = _batch(settings, store, "again.dat", b"purged then forced", NOW - timedelta(days=40))
    purge_expired(settings, store=store, now=NOW)
    first = json.loads((base / TOMBSTONE).read_text())
    _, base2 = _batch(settings, store, "again.dat", b"purged then forced", NOW - timedelta(days=5))
    assert base2 == base and (base / TOMBSTONE).exists()
    assert purge_record(_paths(base), store) is None
    later = NOW + timedelta(days=30)
    (evidence,) = purge_expired(settings, store=store, now=later)["purged"]
    assert evidence["audit_seq"] > first["audit_seq"]
    with pytest.raises(BatchPurgedError, match=f"audit event {evidence['audit_seq']}"):
        raise_if_purged(_paths(base), store)


def test_detect_treats_a_redelivered_purged_file_as_published(
    settings: Settings, store: SoftKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.steps.detect import detect  # noqa: PLC0415

    content = b"delivered, published, purged, delivered again"
    source, base = _batch(settings, store, "redelivered.dat", content, NOW - timedelta(days=31))
    assert detect("demo", settings) == []  # published: not offered
    purge_expired(settings, store=store, now=NOW)
    assert not source.exists() and (base / TOMBSTONE).exists()
    source.write_bytes(content)
    (source.parent / "new.dat").write_bytes(b"a new file")
    caplog.set_level("INFO", logger="pipeline.steps.detect")
    assert detect("demo", settings) == [str(source.parent / "new.dat")]
    assert "since purged by retention" in caplog.text


def test_cardprep_verify_says_purged_not_files_missing(
    settings: Settings, store: SoftKeyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify_batch raises BatchPurgedError; the CLI prints when/which event and exits 3."""
    import yaml  # noqa: PLC0415

    from pipeline.cli.batch import EXIT_PURGED  # noqa: PLC0415
    from pipeline.cli.main import main  # noqa: PLC0415
    from pipeline.steps.verify import verify_batch  # noqa: PLC0415

    _, base = _batch(settings, store, "v.dat", b"verified after purge", NOW - timedelta(days=31))
    manifest = json.loads((base / "manifest.json").read_text())
    bureau = base / "bureau/x.cps"
    manifest.update(
        files=[{"path": "bureau/x.cps", "kind": "bureau", "size": bureau.stat().st_size,
                "sha256": hashlib.sha256(bureau.read_bytes()).hexdigest()}],
        counts={"in": 0, "prepared": 0, "rejected": 0, "per_reason": {}, "per_product": {}},
        keys=[],
    )  # fmt: skip
    (base / "manifest.json").write_text(_sealed(manifest, store))
    (evidence,) = purge_expired(settings, store=store, now=NOW)["purged"]
    with pytest.raises(BatchPurgedError, match=f"audit event {evidence['audit_seq']}"):
        verify_batch(base, settings, store=store)
    raw = {**settings.raw, "key_store": {
        "backend": "soft", "path": str(store.path), "audit_path": str(store.audit_path),
        "hmk": {"source": "passphrase_file",
                "passphrase_file": str(REPO / "config/demo/hmk-passphrase.txt")}}}  # fmt: skip
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump(raw))
    assert main(["verify", str(base), "--settings", str(settings_file)]) == EXIT_PURGED == 3
    err = capsys.readouterr().err
    assert f"purged at {evidence['purged_at']} by retention" in err
    assert f"(evidence: audit event {evidence['audit_seq']})" in err
    assert "missing" not in err and "FAILED" not in err
    (base / TOMBSTONE).unlink()  # without the evidence the same batch is a plain failure
    assert main(["verify", str(base), "--no-cards", "--settings", str(settings_file)]) == 1
    assert "listed in the manifest but missing" in capsys.readouterr().err
