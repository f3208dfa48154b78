"""Re-runs, concurrency, crashes and tampering (issues 5 and 8), on small batches.

* a published batch is refused unless forced; a forced re-run is audited, moves
  the old outputs aside and publishes a batch that verifies;
* a second run of a file whose batch lock is held refuses with a clear message;
* a run killed (SIGKILL) in the middle of prepare leaves no part that looks
  complete; the re-run resumes the finished shards and publishes every card
  exactly once;
* an edited part byte, manifest field or bureau record, and an insider who
  swaps two cards and re-seals the manifest, are all caught by ``verify``;
* the reports are written before the manifest, which lists them (a re-sealed
  manifest without them is caught); reconcile run again audits nothing new.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import (
    BatchLockedError,
    PublishError,
    ReconciliationError,
    VerificationError,
)
from pipeline.io.lock import exclusive_lock
from pipeline.io.manifest import seal_manifest, write_manifest
from pipeline.io.parts import PART_SCHEMA
from pipeline.io.paths import sha256_file
from pipeline.keys.model import KeyRef
from pipeline.steps.batch import run_batch
from pipeline.steps.reconcile import reconcile
from pipeline.steps.verify import verify_batch
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BATCH_DATE,
    BatchEnv,
    Published,
    env_fixture,
    make_settings,
    published_fixture,
)

FORK = multiprocessing.get_context("fork")


def _failures(exc: pytest.ExceptionInfo[VerificationError]) -> list[str]:
    return [str(f) for f in exc.value.failures]  # type: ignore[attr-defined]


def test_a_published_batch_is_refused(env: BatchEnv, published: Published) -> None:
    with pytest.raises(PublishError, match=r"already published at .*use force"):
        run_batch("demo", published.sample.path, env.settings, store=env.store)


def _hold_lock(path: str, ready, release) -> None:
    with exclusive_lock(Path(path), "another run"):
        ready.set()
        release.wait(20)


def test_a_concurrent_run_of_the_same_file_refuses(env: BatchEnv) -> None:
    sample = env.sample("concurrent.dat", 5, seed=21)
    first = run_batch("demo", sample.path, env.settings, dry_run=True)
    lock = Path(first["batch_dir"]) / ".lock"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(str(lock), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(BatchLockedError, match=r"is being processed by pid \d+: another run"):
            run_batch("demo", sample.path, env.settings, store=env.store)
    finally:
        release.set()
        holder.join(10)
    assert not (Path(first["batch_dir"]) / "manifest.json").exists()


def test_forced_rerun_is_audited_and_verifies(env: BatchEnv) -> None:
    sample = env.sample("force.dat", 12, seed=22)
    one = run_batch("demo", sample.path, env.settings, workers=1, store=env.store)
    two = run_batch("demo", sample.path, env.settings, workers=1, force=True, store=env.store)
    assert one["batch_id"] == two["batch_id"] and two["counts"] == one["counts"]
    batch_dir = Path(two["batch_dir"])
    old = list((batch_dir / "superseded").glob("*/manifest.json"))
    assert len(old) == 1 and json.loads(old[0].read_text())["batch_id"] == one["batch_id"]
    assert verify_batch(batch_dir, env.settings, store=env.store)["ok"]
    events = [json.loads(line) for line in (env.root / "audit.jsonl").read_text().splitlines()]
    forced = [e for e in events if e["action"] == "batch.force_rerun"]
    assert forced and forced[-1]["subject"] == f"batch {one['batch_id']}"
    assert env.store.audit_trail.verify().ok


def _run_in_child(root: str, path: str) -> None:
    settings = make_settings(Path(root), chunk_size=4)
    run_batch("demo", path, settings, shard_size=6, workers=1)


def test_sigkill_during_prepare_then_rerun_publishes_each_card_once(env: BatchEnv) -> None:
    sample = env.sample("crash.dat", 30, seed=23)
    settings = make_settings(env.root, chunk_size=4)
    plan = run_batch("demo", sample.path, settings, dry_run=True)
    parts = Path(plan["batch_dir"]) / "parts"
    child = FORK.Process(target=_run_in_child, args=(str(env.root), str(sample.path)))
    child.start()
    deadline = time.monotonic() + 120
    while not (parts / "part-00001.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert (parts / "part-00001.parquet").exists()
    assert not (Path(plan["batch_dir"]) / "manifest.json").exists()
    for part in parts.glob("part-*[0-9].parquet"):  # every visible part is complete
        pq.read_metadata(part)
    summary = run_batch("demo", sample.path, settings, shard_size=6, workers=1, store=env.store)
    assert summary["timings"]["resumed_shards"] >= 2
    assert summary["counts"]["in"] == 30 == summary["counts"]["prepared"]
    assert not list(parts.glob(".*.tmp"))
    result = verify_batch(plan["batch_dir"], settings, store=env.store)
    assert result["cards_checked"] == 30


@pytest.fixture
def copy(env: BatchEnv, published: Published, tmp_path: Path) -> Path:
    """A copy of the published batch under another storage root (same relative layout)."""
    target = tmp_path / "var" / "batches" / "demo" / published.batch_dir.name
    shutil.copytree(published.batch_dir, target)
    return target


def test_a_flipped_part_byte_is_detected(env: BatchEnv, copy: Path) -> None:
    part = copy / "parts" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as exc:
        verify_batch(copy, env.settings, store=env.store)
    assert any("part-00000.parquet [sha256]" in f for f in _failures(exc))


def test_an_edited_manifest_field_breaks_the_mac(env: BatchEnv, copy: Path) -> None:
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["prepared"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match=r"manifest.json \[mac\]"):
        verify_batch(copy, env.settings, store=env.store)


def test_an_edited_bureau_record_is_detected(env: BatchEnv, copy: Path) -> None:
    path = next((copy / "bureau").glob("*.cps"))
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[1].split("|")
    fields[2] = str(int(fields[2]) + 1000)  # another input line
    lines[1] = "|".join(fields)
    path.write_text("".join(lines))
    with pytest.raises(VerificationError) as exc:
        verify_batch(copy, env.settings, store=env.store)
    found = _failures(exc)
    assert any("[sha256]" in f for f in found) and any("[hash]" in f for f in found)


def test_an_insider_who_swaps_cards_and_reseals_is_caught(env: BatchEnv, copy: Path) -> None:
    """Even with the manifest MAC key, moving sealed card data between rows fails binding."""
    part = copy / "parts" / "part-00000.parquet"
    table = pq.read_table(part)
    data = table.column("card_data").to_pylist()
    data[0], data[1] = data[1], data[0]
    swapped = table.set_column(
        PART_SCHEMA.get_field_index("card_data"), "card_data", pa.array(data, pa.binary())
    )
    pq.write_table(swapped.replace_schema_metadata(table.schema.metadata), part)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == "parts/part-00000.parquet":
            entry["sha256"], entry["size"] = sha256_file(part), part.stat().st_size
    mac_key = KeyRef.parse(manifest["mac"]["key"])
    write_manifest(path, seal_manifest(manifest, env.store, mac_key))
    with pytest.raises(VerificationError) as exc:
        verify_batch(copy, env.settings, store=env.store)
    found = _failures(exc)
    assert any("[card binding]" in f for f in found)
    assert any("[bureau record]" in f for f in found)


def test_a_truncated_part_is_a_failure_not_a_crash(env: BatchEnv, copy: Path) -> None:
    part = copy / "parts" / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-40])  # the Parquet footer is gone
    with pytest.raises(VerificationError) as exc:
        verify_batch(copy, env.settings, store=env.store)
    assert any("part-00001.parquet [sha256]" in f for f in _failures(exc))


@pytest.mark.parametrize("name", ["report.json", "report.html"])
def test_an_edited_report_is_detected(env: BatchEnv, copy: Path, name: str) -> None:
    path = copy / name
    path.write_text(path.read_text().replace('"prepared": ', '"prepared": 1', 1)
                    if name.endswith(".json") else path.read_text().replace("<td", "<td x", 1))
    with pytest.raises(VerificationError, match=r"report"):
        verify_batch(copy, env.settings, store=env.store, cards=False)


def test_the_reports_are_written_before_the_manifest_which_hashes_them(
    published: Published,
) -> None:
    """docs/OUTPUT.md write order: reports, then the manifest (commit marker) listing them."""
    base = published.batch_dir
    manifest = json.loads((base / "manifest.json").read_text())
    listed = {f["kind"]: f for f in manifest["files"]}
    for kind, name in (("report-json", "report.json"), ("report-html", "report.html")):
        entry = listed[kind]
        assert entry["path"] == name and entry["sha256"] == sha256_file(base / name)
        assert (base / name).stat().st_mtime_ns <= (base / "manifest.json").stat().st_mtime_ns
    report = json.loads((base / "report.json").read_text())
    assert [f["path"] for f in report["files"]] == [
        f["path"] for f in manifest["files"] if not f["kind"].startswith("report")
    ]
    assert manifest["format"] == "cardprep-manifest/2"


def test_a_resealed_manifest_without_its_reports_is_caught(env: BatchEnv, copy: Path) -> None:
    """An insider with the MAC key drops the report entries: format 2 requires them."""
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["kind"].startswith("report")]
    write_manifest(path, seal_manifest(manifest, env.store, KeyRef.parse(manifest["mac"]["key"])))
    with pytest.raises(VerificationError) as exc:
        verify_batch(copy, env.settings, store=env.store, cards=False)
    assert any("[report]" in f and "lists reports {}" in f for f in _failures(exc))


def test_a_format_1_manifest_with_reports_beside_it_still_verifies(
    env: BatchEnv, copy: Path
) -> None:
    """Batches published before the reports were listed: reports optional, MAC-checked."""
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = "cardprep-manifest/1"
    manifest["files"] = [f for f in manifest["files"] if not f["kind"].startswith("report")]
    write_manifest(path, seal_manifest(manifest, env.store, KeyRef.parse(manifest["mac"]["key"])))
    assert verify_batch(copy, env.settings, store=env.store, cards=False)["ok"]
    (copy / "report.html").write_text("<html></html>\n")
    with pytest.raises(VerificationError, match=r"report.html \[report\]"):
        verify_batch(copy, env.settings, store=env.store, cards=False)


def test_reconcile_again_audits_nothing_new(
    env: BatchEnv, published: Published, copy: Path
) -> None:
    """Reconcile is idempotent: the batch.published event of this manifest is reused."""
    def events() -> int:
        return sum(1 for e in env.store.audit_trail.events() if e.action == "batch.published")

    before = events()
    again = reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)
    assert again["audit_seq"] == published.summary["audit_seq"] and events() == before
    assert again["counts"] == published.summary["counts"]


def _reseal(env: BatchEnv, copy: Path, file: Path) -> None:
    """Re-seal the copy's manifest with the size and SHA-256 of ``file`` now (an insider)."""
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        if copy / entry["path"] == file:
            entry["sha256"], entry["size"] = sha256_file(file), file.stat().st_size
    write_manifest(path, seal_manifest(manifest, env.store, KeyRef.parse(manifest["mac"]["key"])))


def test_reconcile_refuses_a_file_that_differs_from_the_manifest(
    env: BatchEnv, copy: Path
) -> None:
    """The recount hashes on background threads; a file still fails with its own error."""
    part = copy / "parts" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    bureau = next((copy / "bureau").glob("*.cps"))
    bureau.write_text(bureau.read_text()[: bureau.read_text().rindex("T|")])  # trailer gone
    # the first listed file that differs is named, before the bureau's structure is looked at
    with pytest.raises(ReconciliationError, match=r"part-00000.parquet \[sha256\]"):
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)
    _reseal(env, copy, part)
    with pytest.raises(ReconciliationError, match=r"\.cps \[sha256\]"):  # not "[trailer]"
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)
    (copy / "parts" / "part-00001.parquet").unlink()  # listed before the bureau file
    with pytest.raises(ReconciliationError, match=r"part-00001.parquet \[exists\]"):
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)


def test_reconcile_counts_a_bureau_file_the_manifest_vouches_for(
    env: BatchEnv, copy: Path
) -> None:
    bureau = next((copy / "bureau").glob("*.cps"))
    bureau.write_text(bureau.read_text()[: bureau.read_text().rindex("T|")])  # trailer gone
    _reseal(env, copy, bureau)
    with pytest.raises(VerificationError, match=r"\.cps \[trailer\]"):
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)
