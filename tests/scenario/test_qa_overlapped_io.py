"""QA of today's overlapped I/O: part write options, reconcile's recount, the bureau writer.

* parts written before the per-column options (zstd on every column, dictionaries and
  statistics everywhere) still resume, publish, reconcile and verify, also mixed with new
  parts in one batch (a batch half-prepared before the upgrade);
* reconcile's recount (hashes on background threads, the bureau file counted before its
  SHA-256 is checked) gives each damaged file the error it gave before: a listed path that
  is no longer a regular file of the listed size fails as ``[sha256]`` at once;
* the bureau writer's digest thread: a hashing failure discards the file, and no thread
  outlives the writer.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.errors import ReconciliationError
from pipeline.io import parts as parts_mod
from pipeline.io.paths import sha256_file
from pipeline.io.perso import BureauCard, BureauFileWriter, BureauHeader
from pipeline.steps import batch as batch_mod
from pipeline.steps.batch import run_batch
from pipeline.steps.reconcile import reconcile
from pipeline.steps.verify import verify_batch
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BatchEnv,
    Published,
    env_fixture,
    published_fixture,
)

#: What PartWriter passed to ParquetWriter before 9f276a7.
OLD_PART_OPTIONS: dict[str, Any] = {"compression": "zstd"}


@pytest.fixture(name="copy")
def copy_fixture(env: BatchEnv, published: Published, tmp_path: Path) -> Path:
    """A copy of the published batch under another storage root (same relative layout)."""
    target = tmp_path / "var" / "batches" / "demo" / published.batch_dir.name
    shutil.copytree(published.batch_dir, target)
    return target


def _compression(path: Path, column: str) -> str:
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    return str(meta.row_group(0).column(names.index(column)).compression)


class _Stop(RuntimeError):
    pass


def test_parts_written_before_the_new_options_resume_publish_and_verify(
    env: BatchEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = env.sample("qa-old-parts.dat", 90, errors=0.1, seed=47)
    with monkeypatch.context() as m:  # the previous release: prepared, killed before publish
        m.setattr(parts_mod, "PART_WRITE_OPTIONS", OLD_PART_OPTIONS)

        def killed(*_a: object, **_k: object) -> None:
            raise _Stop("killed before publish")

        m.setattr(batch_mod, "publish", killed)
        with pytest.raises(_Stop):
            run_batch("demo", sample.path, env.settings, shard_size=30, workers=1,
                      store=env.store)  # fmt: skip
    parts_dir = next((env.root / "var").rglob("parts"))
    old = sorted(parts_dir.glob("part-?????.parquet"))
    assert len(old) == 3 and _compression(old[1], "card_data") == "ZSTD"
    # the last shard is prepared again by the new release: one batch, both layouts
    old[2].unlink()
    before = {p.name: p.read_bytes() for p in old[:2]}
    summary = run_batch("demo", sample.path, env.settings, shard_size=30, workers=1,
                        store=env.store)  # fmt: skip
    assert {p.name: p.read_bytes() for p in old[:2]} == before  # resumed, not rewritten
    assert _compression(old[2], "card_data") == "UNCOMPRESSED"
    assert summary["counts"]["prepared"] + summary["counts"]["rejected"] == 90
    assert verify_batch(summary["batch_dir"], env.settings, store=env.store)["ok"]


def test_reconcile_refuses_a_bureau_path_that_became_a_directory(env: BatchEnv, copy: Path) -> None:
    """``[sha256]``, as for any other listed file of another size (a QA find in 38d83c0: the
    speculative count raised IsADirectoryError)."""
    bureau = next((copy / "bureau").glob("*.cps"))
    bureau.unlink()
    bureau.mkdir()
    with pytest.raises(ReconciliationError, match=r"\.cps \[sha256\]"):
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)


class _FifoWatchdog:
    """After ``after`` seconds, give every reader blocked opening the FIFO a writer (then EOF).

    So a reconcile that waits on the FIFO ends (and leaves no thread behind) instead of
    hanging the test run; ``fired`` tells whether it had to.
    """

    def __init__(self, path: Path, after: float) -> None:
        self.path, self.after = path, after
        self.done, self.fired = threading.Event(), False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.done.wait(self.after):
            return
        self.fired = True
        while not self.done.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader waiting at this instant
                self.done.wait(0.05)
                continue
            os.close(fd)

    def __enter__(self) -> _FifoWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self._thread.join(5)


@pytest.mark.parametrize("listed", ["part", "bureau"])
def test_reconcile_does_not_wait_on_a_listed_path_that_is_not_a_regular_file(
    env: BatchEnv, copy: Path, listed: str
) -> None:
    """A listed file replaced by a FIFO has another size: ``[sha256]`` at once, nothing opened.

    A QA find in 38d83c0: every existing listed path was opened for hashing (and the
    bureau file for counting) before the sizes were compared; opening a FIFO blocks until
    a writer comes, and the executor's shutdown waited for that thread.  Only regular
    files of the manifest's size are opened ahead now.
    """
    target = (
        copy / "parts" / "part-00001.parquet"
        if listed == "part"
        else next((copy / "bureau").glob("*.cps"))
    )
    target.unlink()
    os.mkfifo(target)
    assert stat.S_ISFIFO(target.stat().st_mode)
    with _FifoWatchdog(target, after=5) as watchdog, pytest.raises(Exception) as caught:
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)
    assert not watchdog.fired, "reconcile waited on the FIFO until the watchdog opened it"
    assert caught.type is ReconciliationError and "[sha256]" in str(caught.value)


def _header(cards: int) -> BureauHeader:
    return BureauHeader("00ab", "demo", cards, "2025-01-01T00:00:00Z", "demo-data@v1",
                        "305D45", (("demo-tk@v1", "D2B91C"),))  # fmt: skip


def _hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bureau-sha256")]


def test_bureau_writer_hashing_failure_discards_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.cps"
    calls = {"n": 0}
    real = BureauFileWriter._hash_records

    def failing(self: BureauFileWriter, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("hashing failed")
        real(self, data)

    monkeypatch.setattr(BureauFileWriter, "_hash_records", failing)
    card = ("p", "476173******0119", "demo-tk@v1", ((0x8000, True),), b"x" * 64)
    with pytest.raises(MemoryError), BureauFileWriter(path, _header(3)) as w:
        w.write(BureauCard(1, 2, *card))
        w.write(BureauCard(2, 3, *card))
        w.write(BureauCard(3, 4, *card))
    assert w.sha256 is None
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file
    assert _hash_threads() == []


def test_bureau_writer_exception_mid_write_leaves_no_thread_nor_file(tmp_path: Path) -> None:
    path = tmp_path / "b.cps"

    def cards() -> Any:
        yield (2, "p", "476173******0119", "demo-tk@v1", ((0x8000, True),), b"x" * 64)
        raise KeyError("tk of an unknown product")

    with pytest.raises(KeyError), BureauFileWriter(path, _header(5)) as w:
        w.write_many([(1, "p", "476173******0119", "demo-tk@v1", (), b"y")])
        w.write_many(cards())
    assert w.sha256 is None
    assert list(tmp_path.iterdir()) == []
    assert _hash_threads() == []


def test_writer_sha256_of_an_empty_batch_is_the_files(tmp_path: Path) -> None:
    with BureauFileWriter(tmp_path / "b.cps", _header(0)) as w:
        pass
    assert w.sha256 == sha256_file(tmp_path / "b.cps")


@pytest.mark.parametrize("damage", ["parts-dir-is-a-file", "symlink-loop"])
def test_reconcile_names_a_listed_path_that_cannot_be_reached_as_missing(
    env: BatchEnv, copy: Path, damage: str
) -> None:
    """``[exists]``, as ``path.exists()`` answered before 3ed3624 (False for ENOTDIR, ELOOP)."""
    if damage == "parts-dir-is-a-file":
        shutil.rmtree(copy / "parts")
        (copy / "parts").write_bytes(b"not a directory")
    else:
        part = copy / "parts" / "part-00000.parquet"
        part.unlink()
        part.symlink_to(part.name)  # a link to itself: ELOOP
    with pytest.raises(ReconciliationError, match=r"part-00000.parquet \[exists\]"):
        reconcile({"batch_dir": str(copy)}, env.settings, store=env.store)


def _killed_before_reconcile(env: BatchEnv, name: str, seed: int) -> Path:
    """A batch published by run_batch and stopped before its reconcile step finished."""
    sample = env.sample(name, 60, errors=0.1, seed=seed)
    real = batch_mod.reconcile

    def killed(*_a: object, **_k: object) -> None:
        raise _Stop("killed in reconcile")

    batch_mod.reconcile = killed  # type: ignore[assignment]
    try:
        with pytest.raises(_Stop):
            run_batch("demo", sample.path, env.settings, shard_size=20, workers=1,
                      store=env.store)  # fmt: skip
    finally:
        batch_mod.reconcile = real
    return sample.path


def test_run_batch_after_a_kill_in_reconcile_finishes_it(env: BatchEnv) -> None:
    path = _killed_before_reconcile(env, "qa-unreconciled.dat", 61)
    summary = run_batch("demo", path, env.settings, shard_size=20, workers=1, store=env.store)
    assert summary["resumed"] == "reconcile" and summary["shards"] >= 2
    assert summary["counts"]["prepared"] + summary["counts"]["rejected"] == 60
    assert not (Path(summary["batch_dir"]) / "staging").exists()
    assert verify_batch(summary["batch_dir"], env.settings, store=env.store)["ok"]


def test_run_batch_after_a_kill_in_reconcile_still_checks_every_file(env: BatchEnv) -> None:
    """The resumed reconcile recounts: a part damaged meanwhile fails it, staging is kept."""
    path = _killed_before_reconcile(env, "qa-unreconciled-damaged.dat", 62)
    batch_dir = next(p.parent for p in (env.root / "var").rglob("manifest.json")
                     if (p.parent / "staging").exists())  # fmt: skip
    part = batch_dir / "parts" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x40
    part.write_bytes(bytes(data))
    with pytest.raises(ReconciliationError, match=r"part-00001.parquet \[sha256\]"):
        run_batch("demo", path, env.settings, shard_size=20, workers=1, store=env.store)
    assert (batch_dir / "staging").exists()  # still unreconciled: the next run checks again
