"""card_batch through ``dag.test()``: the same batch as the CLI, XCom free of secrets, refusals.

One demo environment per module (key store with the TEST keys, a 40-card
sample with injected errors).  ``dag.test()`` runs every task in this
process, mapped shards one after another, exactly the DAG the scheduler
runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

from pipeline.io.manifest import load_manifest
from pipeline.keys.settings import load_settings
from pipeline.records.layout import load_layout
from pipeline.records.parse import iter_records
from pipeline.records.sample import write_sample
from pipeline.steps.batch import run_batch
from tests.dags.demo_env import CONFIG, DemoEnv, active_demo_env, write_settings

SHARD = 16
#: 13..19 digits standing alone; not the fraction of a decimal number (a log's
#: ``duration=0.9564142280000851`` once held a Luhn-valid run of 16).
_DIGIT_RUN = r"(?<![\d.])\d{13,19}(?!\d)"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnv]:
    with active_demo_env(tmp_path_factory.mktemp("card-batch"), cards=40) as demo:
        yield demo


@pytest.fixture(scope="module")
def first_run(env: DemoEnv, bag: DagBag) -> Any:
    """The demo sample through card_batch_demo (every new file: the one sample)."""
    return bag.dags["card_batch_demo"].test(run_conf={"shard_size": SHARD, "file": ""})


def _task_states(run: Any) -> dict[tuple[str, int], tuple[str, int]]:
    with create_session() as session:
        rows = session.query(TaskInstance).filter(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
        )
        return {(t.task_id, t.map_index): (str(t.state), t.try_number) for t in rows}


def _xcoms(run: Any) -> list[tuple[str, str]]:
    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id
        )
        return [(x.task_id, json.dumps(x.value)) for x in rows if x.key == "return_value"]


def _batch_dir(env: DemoEnv) -> Path:
    (batch,) = (env.storage / "batches" / "demo").iterdir()
    return batch


def test_dag_run_succeeds_with_mapped_shards(first_run: Any) -> None:
    assert str(first_run.state) == "success"
    states = _task_states(first_run)
    prepared = [k for k in states if k[0] == "prepare"]
    assert len(prepared) >= 2  # 40 cards with injected errors, 16 per shard
    assert all(states[k][0] == "success" for k in prepared)
    assert states[("reconcile", 0)][0] == "success" and states[("summary", -1)][0] == "success"


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must match between two preparations of the same file (not times, not card bytes)."""
    return {k: manifest[k] for k in ("batch_id", "issuer", "input", "counts", "shards",
                                     "products", "keys", "data_key", "format")}  # fmt: skip


def test_same_manifest_and_reconciliation_as_the_cli(env: DemoEnv, first_run: Any) -> None:
    dag_manifest = load_manifest(_batch_dir(env) / "manifest.json")
    cli_settings = write_settings(env.root, env.root / "store-cli", env.inbound)
    summary = run_batch("demo", env.sample, load_settings(cli_settings), shard_size=SHARD)
    cli_manifest = load_manifest(Path(summary["manifest"]))
    assert _comparable(dag_manifest) == _comparable(cli_manifest)
    c = dag_manifest["counts"]
    assert c["in"] == 40 == c["prepared"] + c["rejected"] and c["prepared"] > 0
    expected = json.loads(env.sample.with_name(env.sample.name + ".expected.json").read_text())
    assert c["rejected"] >= len(expected.get("rejects", expected)) > 0
    (xcom,) = [v for t, v in _xcoms(first_run) if t == "summary"]
    published = json.loads(xcom)["published"][0]
    assert published["counts"] == summary["counts"]
    assert published["per_reason"] == summary["per_reason"]
    assert Path(published["report_html"]).exists() and Path(published["report_json"]).exists()


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _secrets() -> list[str]:
    keys = yaml.safe_load((CONFIG / "demo" / "keys.yaml").read_text())
    items = keys["keys"] if isinstance(keys, dict) and "keys" in keys else keys
    values = [str(k["value"]).upper() for k in items]
    assert values and all(len(v) >= 32 for v in values)
    return values


def test_tasks_push_one_xcom_each(first_run: Any) -> None:
    """Dict results stay one XCom (multiple_outputs=False), not one row per key."""
    with create_session() as session:
        keys = {
            x.key
            for x in session.query(XComModel).filter(
                XComModel.dag_id == first_run.dag_id, XComModel.run_id == first_run.run_id
            )
        }
    assert keys == {"return_value"}


def test_xcom_holds_no_pan_and_no_key(env: DemoEnv, first_run: Any) -> None:
    with create_session() as session:
        xcoms = [
            (x.task_id, json.dumps(x.value))
            for x in session.query(XComModel).filter(
                XComModel.dag_id == first_run.dag_id, XComModel.run_id == first_run.run_id
            )
        ]
    assert {t for t, _ in xcoms} >= {"wait_for_files", "verify_and_parse", "plan_shards",
                                     "prepare", "publish", "reconcile", "summary"}  # fmt: skip
    issuer = yaml.safe_load((CONFIG / "issuers" / "demo.yaml").read_text())
    pans = {r.fields.get("pan", "") for r in iter_records(env.sample, load_layout(
        issuer["layout"], CONFIG))} - {""}  # fmt: skip
    assert len(pans) > 30
    secrets = _secrets()
    for task_id, text in xcoms:
        for run in re.findall(_DIGIT_RUN, text):
            assert not _luhn_ok(run), f"{task_id}: Luhn-valid digit run in XCom"
        for pan in pans:
            assert pan not in text, f"{task_id}: a PAN of the input file in XCom"
        upper = text.upper()
        for secret in secrets:
            assert secret not in upper, f"{task_id}: demo key hex in XCom"


def test_retrigger_of_a_published_file_is_refused_at_once(
    env: DemoEnv, bag: DagBag, first_run: Any
) -> None:
    manifest = (_batch_dir(env) / "manifest.json").read_bytes()
    run = bag.dags["card_batch_demo"].test(run_conf={"file": env.sample.name})
    assert str(run.state) == "failed"
    states = _task_states(run)
    assert states[("verify_and_parse", 0)] == ("failed", 1)  # no retry for a permanent error
    assert states[("prepare", -1)][0] in ("upstream_failed", "skipped", "None")
    assert (_batch_dir(env) / "manifest.json").read_bytes() == manifest


def test_nothing_new_is_a_quiet_success(env: DemoEnv, bag: DagBag, first_run: Any) -> None:
    # Explicit conf: in one process, dag.test() keeps an earlier run's conf in the DAG's params.
    run = bag.dags["card_batch_demo"].test(run_conf={"file": "", "dry_run": False})
    assert str(run.state) == "success"
    (xcom,) = [v for t, v in _xcoms(run) if t == "summary"]
    assert json.loads(xcom) == {"issuer": "demo", "published": [], "checked": []}


def test_dry_run_verifies_and_writes_nothing(env: DemoEnv, bag: DagBag, first_run: Any) -> None:
    other = env.inbound / "demo" / "dry.dat"
    write_sample("demo", 12, other, error_rate=0.0, seed=11, config_dir=CONFIG)
    before = sorted((env.storage / "batches" / "demo").iterdir())
    run = bag.dags["card_batch_demo"].test(run_conf={"file": other.name, "dry_run": True})
    assert str(run.state) == "success"
    states = _task_states(run)
    assert states[("publish", 0)][0] == "skipped"
    assert sorted((env.storage / "batches" / "demo").iterdir()) == before
    other.unlink()
    other.with_name(other.name + ".expected.json").unlink(missing_ok=True)


def test_a_file_not_in_the_inbound_folder_fails_the_run_at_once(
    env: DemoEnv, bag: DagBag, first_run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's typo in ``file`` is a failed run that says why, not a quiet success.

    The sensor has ``soft_fail`` (a nightly run that sees no file gives up
    *skipped*), and soft_fail turns every AirflowFailException raised in it
    into a skip: a name that is not in the inbound folder once ended as a
    green run with the reason nowhere in the output.
    """
    before = sorted((env.storage / "batches" / "demo").iterdir())
    run = bag.dags["card_batch_demo"].test(
        run_conf={"file": "no-such-file.dat", "shard_size": SHARD, "dry_run": False, "force": False}
    )
    assert str(run.state) == "failed"
    failed = {k: v for k, v in _task_states(run).items() if v[0] == "failed"}
    assert failed, "no task failed"
    assert all(tries == 1 for _, tries in failed.values()), f"retried: {failed}"
    assert "no-such-file.dat is not in the inbound folder" in capsys.readouterr().out
    assert sorted((env.storage / "batches" / "demo").iterdir()) == before


def test_a_broken_configuration_fails_the_sweep(
    env: DemoEnv, bag: DagBag, first_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep (``file`` empty) that cannot read its configuration fails; it is not skipped."""
    settings = yaml.safe_load(env.settings_path.read_text())
    settings["batch"]["chunk_size"] = 0  # ConfigError: batch.chunk_size must be positive
    bad = env.root / "settings-broken.yaml"
    bad.write_text(yaml.safe_dump(settings), encoding="utf-8")
    monkeypatch.setenv("CARDPREP_SETTINGS", str(bad))
    run = bag.dags["card_batch_demo"].test(
        run_conf={"file": "", "shard_size": SHARD, "dry_run": False, "force": False}
    )
    assert str(run.state) == "failed"


def test_a_nightly_run_without_a_file_waits_then_ends_quietly(
    env: DemoEnv, bag: DagBag, first_run: Any
) -> None:
    """The sensor's own deadline: keep poking before ``timeout_seconds``, then an empty list."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    import card_batch  # noqa: PLC0415 (the DAG module the bag parsed)

    poke = bag.dags["card_batch_demo"].get_task("wait_for_files").python_callable
    params = {"file": ""}  # the sample is published by first_run: nothing new
    now = datetime.now(UTC)
    fresh = SimpleNamespace(run_type="scheduled", start_date=now - timedelta(seconds=60))
    waiting = poke(params=params, dag_run=fresh)
    assert (waiting.is_done, waiting.xcom_value) == (False, [])
    started = now - timedelta(seconds=card_batch.QUIET_AFTER + 1)
    late = SimpleNamespace(run_type="scheduled", start_date=started)
    done = poke(params=params, dag_run=late)
    assert (done.is_done, done.xcom_value) == (True, [])
    manual = SimpleNamespace(run_type="manual", start_date=now)
    assert poke(params=params, dag_run=manual).is_done  # a triggered sweep never waits


def test_retrigger_after_a_cut_short_reconcile_only_reconciles(
    env: DemoEnv, bag: DagBag, first_run: Any
) -> None:
    """A run killed between the manifest and the end of reconcile: the re-trigger finishes it.

    The state is made the way a kill leaves it: every step up to publish,
    no reconcile (staging still there, no ``batch.published`` event).  The
    re-triggered DAG run must not prepare or publish again (no new keys, the
    same manifest and parts), must reconcile and audit once, and a further
    re-trigger is then refused as for any published file.
    """
    from pipeline.keys import open_store  # noqa: PLC0415
    from pipeline.steps.parse import verify_and_parse  # noqa: PLC0415
    from pipeline.steps.plan import plan_shards  # noqa: PLC0415
    from pipeline.steps.prepare import prepare_shard  # noqa: PLC0415
    from pipeline.steps.publish import publish  # noqa: PLC0415
    from pipeline.steps.reconcile import PUBLISHED_EVENT  # noqa: PLC0415

    cut = env.inbound / "demo" / "cut-short.dat"
    write_sample("demo", 12, cut, error_rate=0.0, seed=13, config_dir=CONFIG)
    settings = load_settings(env.settings_path)
    parsed = verify_and_parse("demo", cut, settings)
    results = [prepare_shard(shard, settings, 1) for shard in plan_shards(parsed, SHARD)]
    batch = Path(publish(parsed, results, settings)["batch_dir"])
    assert (batch / "staging").is_dir()  # what a kill before the end of reconcile leaves
    manifest = (batch / "manifest.json").read_bytes()
    parts = {p.name: p.read_bytes() for p in sorted((batch / "parts").iterdir())}

    def published_events() -> int:
        store = open_store(settings)
        try:
            return sum(
                1 for e in store.audit_trail.events()
                if e.action == PUBLISHED_EVENT and e.subject == f"batch {parsed['batch_id']}"
            )  # fmt: skip
        finally:
            store.close()

    assert published_events() == 0
    run = bag.dags["card_batch_demo"].test(
        run_conf={"file": cut.name, "dry_run": False, "force": False}
    )
    assert str(run.state) == "success"
    states = _task_states(run)
    assert states[("reconcile", 0)][0] == "success"
    assert states[("prepare", -1)][0] in ("skipped", "None")  # no shard planned
    assert not (batch / "staging").exists()
    assert (batch / "manifest.json").read_bytes() == manifest
    assert {p.name: p.read_bytes() for p in sorted((batch / "parts").iterdir())} == parts
    assert published_events() == 1
    (xcom,) = [v for t, v in _xcoms(run) if t == "summary"]
    (done,) = json.loads(xcom)["published"]
    assert done["batch_id"] == parsed["batch_id"] and done["counts"]["in"] == 12

    again = bag.dags["card_batch_demo"].test(run_conf={"file": cut.name})
    assert str(again.state) == "failed"  # reconciled now: refused like any published file
    assert published_events() == 1


def test_a_refused_file_in_a_sweep_does_not_stop_the_others(
    env: DemoEnv, bag: DagBag, first_run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nightly sweep with a good and a broken file: the good one is published, the run
    still fails, and it names the refused file and why (nothing is staged for it)."""
    good, bad = env.inbound / "demo" / "sweep-good.dat", env.inbound / "demo" / "sweep-bad.dat"
    write_sample("demo", 12, good, error_rate=0.0, seed=21, config_dir=CONFIG, file_seq=21)
    write_sample("demo", 12, bad, error_rate=0.0, seed=22, config_dir=CONFIG, file_seq=22)
    lines = bad.read_bytes().splitlines(keepends=True)
    bad.write_bytes(b"".join(lines[:-1]))  # the trailer is lost in transfer
    before = set((env.storage / "batches" / "demo").iterdir())
    try:
        run = bag.dags["card_batch_demo"].test(
            run_conf={"file": "", "shard_size": SHARD, "dry_run": False, "force": False}
        )
        assert str(run.state) == "failed"
        states = _task_states(run)
        assert states[("summary", -1)][0] == "failed"
        assert [v[0] for k, v in states.items() if k[0] == "verify_and_parse"] == ["success"] * 2
        assert sorted(v[0] for k, v in states.items() if k[0] == "publish") == [
            "skipped", "success"]  # fmt: skip
        assert [v[0] for k, v in states.items() if k[0] == "reconcile"] == ["success"]
        (new,) = set((env.storage / "batches" / "demo").iterdir()) - before
        assert load_manifest(new / "manifest.json")["input"]["name"] == good.name
        out = capsys.readouterr().out
        assert "1 of 2 file(s) refused (1 batch(es) published in this run): sweep-bad.dat:" in out
    finally:
        for path in (good, bad):
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".expected.json").unlink(missing_ok=True)
