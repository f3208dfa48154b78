"""A delivery re-sent with other bytes is refused, not prepared twice (docs/INPUT.md "Deliveries").

QA: the batch id is the SHA-256 of the file, so the same delivery re-sent with
CRLF line ends, or re-exported, was a new batch: every card made again with
new keys.  A delivery is (issuer, header issuer id, file date, file sequence).

Each test has its own storage root (the session's demo key store and audit
trail are shared), so the delivery index starts empty.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import InputFileCheckError, KeyStoreError, PublishError
from pipeline.io.deliveries import Delivery, find_delivery
from pipeline.io.paths import BatchPaths, batch_id_for, sha256_file
from pipeline.keys.settings import Settings
from pipeline.records.sample import SampleSummary, write_sample
from pipeline.steps.batch import run_batch
from pipeline.steps.parse import verify_and_parse
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BATCH_DATE,
    CONFIG,
    BatchEnv,
    env_fixture,
    make_settings,
)


def _sample(root: Path, name: str, seed: int, cards: int = 4, **kw: Any) -> SampleSummary:
    return write_sample("demo", cards, root / "inbound" / "demo" / name, seed=seed,
                        batch_date=BATCH_DATE, config_dir=CONFIG, **kw)  # fmt: skip


def _crlf(src: Path, name: str) -> Path:
    out = src.with_name(name)
    out.write_bytes(src.read_bytes().replace(b"\n", b"\r\n"))
    return out


def _reordered(src: Path, name: str) -> Path:
    """Re-exported: the same records in another order (pan_sum trailer still right)."""
    header, *details, trailer = src.read_bytes().splitlines(keepends=True)
    out = src.with_name(name)
    out.write_bytes(header + b"".join(reversed(details)) + trailer)
    return out


def _paths(settings: Settings, path: Path) -> BatchPaths:
    return BatchPaths(Path(settings.raw["storage"]["root"]), "demo",
                      batch_id_for(sha256_file(path)))  # fmt: skip


def _events(env: BatchEnv, action: str) -> list[dict[str, Any]]:
    lines = (env.root / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.mark.parametrize("resend", [_crlf, _reordered], ids=["crlf", "re-exported"])
def test_a_resent_delivery_is_refused_before_anything_is_staged(
    env: BatchEnv, tmp_path: Path, settings: Settings, resend: Any
) -> None:
    first = _sample(tmp_path, "first.dat", seed=51)
    published = run_batch("demo", first.path, settings, workers=1, store=env.store)
    again = resend(first.path, "again.dat")
    again_paths = _paths(settings, again)
    assert again_paths.batch_id != published["batch_id"]  # other bytes, other batch id
    with pytest.raises(InputFileCheckError) as caught:
        run_batch("demo", again, settings, workers=1, store=env.store)
    err = caught.value
    assert err.check == "duplicate_delivery"
    message = str(err)
    assert message.startswith(f"{again} [duplicate_delivery]: ")
    for part in (f"header issuer_id 'DEMO', file_date 20250115, file_seq {first.file_seq}",
                 f"batch {published['batch_id']} (published)", f"batch {again_paths.batch_id}",
                 "next file_seq", "force"):  # fmt: skip
        assert part in message
    assert "Finish that batch first" not in message  # only for a batch still in progress
    assert not again_paths.base.exists(), "a refused delivery left a batch directory"
    entry = find_delivery(again_paths, Delivery("DEMO", "20250115", first.file_seq))
    assert entry is not None and entry.batch_id == published["batch_id"]
    assert entry.state == "published"


def test_a_dry_run_reports_the_resent_delivery_too(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    first = _sample(tmp_path, "first.dat", seed=52)
    run_batch("demo", first.path, settings, workers=1, store=env.store)
    again = _crlf(first.path, "again.dat")
    with pytest.raises(InputFileCheckError, match=r"\[duplicate_delivery\]"):
        run_batch("demo", again, settings, dry_run=True)
    assert run_batch("demo", again, settings, dry_run=True, force=True)["records"] == 4
    assert not _paths(settings, again).base.exists()  # a dry run writes nothing


def test_force_prepares_a_resent_delivery_audited_and_the_index_follows(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    first = _sample(tmp_path, "first.dat", seed=53)
    one = run_batch("demo", first.path, settings, workers=1, store=env.store)
    again = _crlf(first.path, "again.dat")
    two = run_batch("demo", again, settings, workers=1, force=True, store=env.store)
    assert two["batch_id"] != one["batch_id"] and two["counts"] == one["counts"]
    forced = [e for e in _events(env, "batch.duplicate_delivery_forced")
              if e["subject"] == f"batch {two['batch_id']}"]  # fmt: skip
    assert len(forced) == 1
    assert forced[0]["details"] == {
        "earlier_batch": one["batch_id"], "earlier_state": "published", "input": "again.dat",
        "issuer_id": "DEMO", "file_date": "20250115", "file_seq": first.file_seq,
    }  # fmt: skip
    delivery = Delivery("DEMO", "20250115", first.file_seq)
    entry = find_delivery(_paths(settings, again), delivery)
    assert entry is not None
    assert (entry.batch_id, entry.state, entry.earlier) == (two["batch_id"], "published",
                                                            (one["batch_id"],))  # fmt: skip
    # a third copy is refused naming the batch that now holds the delivery
    third = _reordered(first.path, "third.dat")
    with pytest.raises(InputFileCheckError, match=f"batch {two['batch_id']} \\(published\\)"):
        run_batch("demo", third, settings, workers=1, store=env.store)
    # and the first file itself is still "already published" (its own manifest)
    with pytest.raises(PublishError, match="already published"):
        run_batch("demo", first.path, settings, workers=1, store=env.store)


def test_the_next_file_seq_is_a_new_delivery(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    """Control: the same cards under another file_seq are the issuer's next delivery."""
    first = _sample(tmp_path, "first.dat", seed=54, file_seq=41)
    run_batch("demo", first.path, settings, workers=1, store=env.store)
    nxt = _sample(tmp_path, "next.dat", seed=54, file_seq=42)
    assert run_batch("demo", nxt.path, settings, workers=1, store=env.store)["counts"]["in"] == 4


def test_a_delivery_in_progress_is_held_and_a_stale_claim_is_not(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    first = _sample(tmp_path, "first.dat", seed=55)
    staged = verify_and_parse("demo", first.path, settings, BATCH_DATE, store=env.store)
    again = _crlf(first.path, "again.dat")
    with pytest.raises(
        InputFileCheckError, match=f"batch {staged['batch_id']} \\(in progress\\)"
    ) as err:
        verify_and_parse("demo", again, settings, BATCH_DATE, store=env.store)
    assert "Finish that batch first: run its own file again (it resumes)." in str(err.value)
    assert not _paths(settings, again).base.exists()  # the DAG's task leaves nothing either
    # the first run was abandoned and its directory removed: the claim is stale
    shutil.rmtree(staged["batch_dir"])
    parsed = verify_and_parse("demo", again, settings, BATCH_DATE, store=env.store)
    assert parsed["delivery"] == {"issuer_id": "DEMO", "file_date": "20250115",
                                  "file_seq": first.file_seq}  # fmt: skip


def test_a_layout_without_file_seq_cannot_name_a_delivery_and_is_not_checked(
    env: BatchEnv, tmp_path: Path
) -> None:
    """No false refusals: without a file sequence two files of one date look alike."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    layout = config / "layouts" / "demo-fixed.yaml"
    doc = yaml.safe_load(layout.read_text())
    doc["header"]["fields"] = [f for f in doc["header"]["fields"] if f["name"] != "file_seq"]
    layout.write_text(yaml.safe_dump(doc))
    settings = make_settings(tmp_path)
    settings = replace(settings, raw={**settings.raw, "config_dir": str(config)})
    runs = []
    for seed in (56, 57):
        s = write_sample("demo", 3, tmp_path / "inbound" / "demo" / f"s{seed}.dat", seed=seed,
                         batch_date=BATCH_DATE, config_dir=config)  # fmt: skip
        assert s.file_seq == ""
        runs.append(run_batch("demo", s.path, settings, workers=1, store=env.store))
    assert runs[0]["batch_id"] != runs[1]["batch_id"]
    assert not (tmp_path / "var" / "deliveries" / "demo.json").exists()


def test_an_unreadable_delivery_index_refuses_rather_than_letting_files_through(
    env: BatchEnv, tmp_path: Path, settings: Settings
) -> None:
    first = _sample(tmp_path, "first.dat", seed=58)
    index = _paths(settings, first.path).deliveries
    index.parent.mkdir(parents=True)
    index.write_text("{not json")
    with pytest.raises(PublishError, match=r"deliveries/demo\.json \[deliveries\]: not a"):
        run_batch("demo", first.path, settings, workers=1, store=env.store)
    assert not _paths(settings, first.path).base.exists()


@pytest.mark.parametrize("how", ["refused", "removed"])
def test_a_forced_resend_that_left_nothing_does_not_free_the_published_delivery(
    env: BatchEnv, tmp_path: Path, settings: Settings, how: str
) -> None:
    """QA: the forced copy's claim replaced the published batch's in the index; when
    that copy then left no directory (refused before staging, or abandoned and
    removed) the claim was stale and a fourth copy was prepared without force."""
    first = _sample(tmp_path, "first.dat", seed=59)
    one = run_batch("demo", first.path, settings, workers=1, store=env.store)
    forced = _crlf(first.path, "forced.dat")
    if how == "refused":  # e.g. a settings error found after the claim, before staging
        broken = make_settings(tmp_path, data_key="no-such-key")
        with pytest.raises(KeyStoreError, match="no-such-key"):
            run_batch("demo", forced, broken, workers=1, force=True, store=env.store)
    else:
        staged = verify_and_parse("demo", forced, settings, BATCH_DATE, force=True,
                                  store=env.store)  # fmt: skip
        shutil.rmtree(staged["batch_dir"])
    assert not _paths(settings, forced).base.exists()
    third = _reordered(first.path, "third.dat")
    for dry_run in (True, False):
        with pytest.raises(InputFileCheckError,
                           match=f"batch {one['batch_id']} \\(published\\)"):  # fmt: skip
            run_batch("demo", third, settings, workers=1, dry_run=dry_run, store=env.store)
    assert not _paths(settings, third).base.exists()
