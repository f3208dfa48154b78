"""A refused file leaves nothing behind but its audit record: no batch directory with only .lock.

QA: ``cardprep run`` takes the batch lock (creating ``<batch>/.lock``) before
the file is verified, so a file refused at once (header naming another
issuer, bad trailer, a re-sent delivery...) left an empty batch directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import CardprepError, InputFileCheckError, PublishError
from pipeline.io.paths import BatchPaths, batch_id_for, sha256_file
from pipeline.keys.settings import Settings
from pipeline.records.sample import write_sample
from pipeline.steps.batch import run_batch
from pipeline.steps.parse import verify_and_parse
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BATCH_DATE,
    CONFIG,
    BatchEnv,
    env_fixture,
    make_settings,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def _paths(settings: Settings, path: Path) -> BatchPaths:
    return BatchPaths(Path(settings.raw["storage"]["root"]), "demo",
                      batch_id_for(sha256_file(path)))  # fmt: skip


def _good(tmp_path: Path, seed: int) -> Path:
    return write_sample("demo", 3, tmp_path / "inbound" / "demo" / f"good-{seed}.dat",
                        seed=seed, batch_date=BATCH_DATE, config_dir=CONFIG).path  # fmt: skip


def _other_issuer(src: Path) -> Path:
    out = src.with_name("other-issuer.dat")
    data = src.read_bytes()
    assert data.startswith(b"HDEMO    ")
    out.write_bytes(b"HOTHER   " + data[9:])
    return out


def _bad_count(src: Path) -> Path:
    out = src.with_name("bad-count.dat")
    *lines, trailer = src.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines) + trailer[:1] + b"000000009" + trailer[10:])
    return out


def _resent(src: Path) -> Path:
    out = src.with_name("resent.dat")
    out.write_bytes(src.read_bytes().replace(b"\n", b"\r\n"))
    return out


@pytest.mark.parametrize(
    ("make", "check"),
    [(_other_issuer, "issuer"), (_bad_count, "count"), (_resent, "duplicate_delivery")],
)
def test_cardprep_run_of_a_refused_file_leaves_no_batch_directory(
    env: BatchEnv, tmp_path: Path, settings: Settings, make: object, check: str
) -> None:
    good = _good(tmp_path, 61)
    if check == "duplicate_delivery":
        run_batch("demo", good, settings, workers=1, store=env.store)
    bad = make(good)  # type: ignore[operator]
    with pytest.raises(InputFileCheckError) as caught:
        run_batch("demo", bad, settings, workers=1, store=env.store)
    assert caught.value.check == check
    paths = _paths(settings, bad)
    assert not paths.base.exists(), f"left {sorted(p.name for p in paths.base.iterdir())}"
    # the issuer's directory is still usable: the good file runs (or is already published)
    if check != "duplicate_delivery":
        assert run_batch("demo", good, settings, workers=1, store=env.store)["counts"]["in"] == 3


def test_the_dag_task_of_a_resent_delivery_leaves_no_batch_directory(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    """verify_and_parse (the DAG's first task) takes the batch lock itself."""
    good = _good(tmp_path, 62)
    run_batch("demo", good, settings, workers=1, store=env.store)
    resent = _resent(good)
    with pytest.raises(InputFileCheckError, match=r"\[duplicate_delivery\]"):
        verify_and_parse("demo", resent, settings, BATCH_DATE, store=env.store)
    assert not _paths(settings, resent).base.exists()


def test_a_directory_this_run_did_not_create_is_left_alone(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    """Only the run that created a batch directory may remove it (e.g. one an older
    version left with only .lock stays: another run may be about to use it)."""
    good = _good(tmp_path, 63)
    bad = _other_issuer(good)
    paths = _paths(settings, bad)
    paths.base.mkdir(parents=True)
    paths.lock.touch()
    with pytest.raises(InputFileCheckError, match=r"\[issuer\]"):
        run_batch("demo", bad, settings, workers=1, store=env.store)
    assert sorted(p.name for p in paths.base.iterdir()) == [".lock"]


def test_a_refused_rerun_of_a_published_batch_keeps_everything(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    good = _good(tmp_path, 64)
    summary = run_batch("demo", good, settings, workers=1, store=env.store)
    before = sorted(p.relative_to(summary["batch_dir"]) for p in
                    Path(summary["batch_dir"]).rglob("*"))  # fmt: skip
    with pytest.raises(PublishError, match="already published"):
        run_batch("demo", good, settings, workers=1, store=env.store)
    after = sorted(p.relative_to(summary["batch_dir"]) for p in
                   Path(summary["batch_dir"]).rglob("*"))  # fmt: skip
    assert after == before and Path(summary["manifest"]).exists()


def test_a_failure_after_staging_began_keeps_the_batch_directory(
    env: BatchEnv, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content means a run got somewhere (resumable, evidence): never removed."""
    import pipeline.steps.parse as parse_step  # noqa: PLC0415

    good = _good(tmp_path, 65)

    def broken(*args: object, **kwargs: object) -> None:
        raise CardprepError("segment", "disk full (simulated)")

    monkeypatch.setattr(parse_step, "write_segment", broken)
    with pytest.raises(CardprepError, match="simulated"):
        run_batch("demo", good, settings, workers=1, store=env.store)
    paths = _paths(settings, good)
    assert paths.staging.is_dir() and paths.lock.exists()
