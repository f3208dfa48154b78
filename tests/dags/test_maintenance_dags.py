"""icc_keypool, key_health and retention through ``dag.test()`` on a demo environment."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.xcom import XComModel
from airflow.sdk.exceptions import ParamValidationError
from airflow.utils.session import create_session

from pipeline.errors import BatchPurgedError
from pipeline.io.manifest import seal_manifest
from pipeline.keys import KeyRef, open_store
from pipeline.keys.pool import KeyPool, pool_path
from pipeline.keys.settings import load_settings
from pipeline.steps.batch import run_batch
from pipeline.steps.verify import verify_batch
from tests.dags.demo_env import DemoEnv, active_demo_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnv]:
    with active_demo_env(tmp_path_factory.mktemp("maintenance"), cards=20) as demo:
        yield demo


def _results(run: Any, task_id: str) -> list[Any]:
    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == run.dag_id,
            XComModel.run_id == run.run_id,
            XComModel.task_id == task_id,
            XComModel.key == "return_value",
        )
        return [x.value for x in sorted(rows, key=lambda x: x.map_index)]


def test_icc_keypool_tops_every_pool_up_to_its_target(env: DemoEnv, bag: DagBag) -> None:
    pools = [
        {"algorithm": "rsa", "bits": 1152, "exponent": 3, "target": 3},
        {"algorithm": "sm2", "target": 5},
    ]
    run = bag.dags["icc_keypool"].test(run_conf={"pools": pools})
    assert str(run.state) == "success"
    results = _results(run, "refill")
    assert [(r["spec"], r["added"], r["free"]) for r in results] == [
        ("rsa-1152-e3", 3, 3),
        ("sm2-256", 5, 5),
    ]
    again = bag.dags["icc_keypool"].test(run_conf={"pools": pools})
    assert [r["added"] for r in _results(again, "refill")] == [0, 0]
    with KeyPool(pool_path(load_settings(env.settings_path))) as pool:
        assert {s.spec: s.free for s in pool.status()} == {"rsa-1152-e3": 3, "sm2-256": 5}
    text = json.dumps(results)
    assert "private" not in text and all(len(v) < 80 for v in map(str, results[0].values()))


def test_icc_keypool_params_refuse_bad_pools(bag: DagBag) -> None:
    for bad in (
        [{"algorithm": "dsa", "target": 1}],
        [{"algorithm": "rsa", "bits": 512, "exponent": 3, "target": 1}],
        [{"algorithm": "rsa", "bits": 1152, "exponent": 5, "target": 1}],
        [{"algorithm": "sm2", "target": -1}],
        [{"algorithm": "sm2"}],
    ):
        params = copy.deepcopy(bag.dags["icc_keypool"].params)
        with pytest.raises(ParamValidationError):
            params.update({"pools": bad})
            params.validate()


def test_key_health_passes_on_the_demo_store(env: DemoEnv, bag: DagBag) -> None:
    run = bag.dags["key_health"].test(run_conf={"warn_days": 90})
    assert str(run.state) == "success"
    (report,) = _results(run, "check_keys")
    assert report["healthy"] is True and report["checked"] > 10 and report["kcv_failures"] == []


def _task_state(run: Any, task_id: str) -> str:
    from airflow.models.taskinstance import TaskInstance  # noqa: PLC0415

    with create_session() as session:
        (ti,) = session.query(TaskInstance).filter(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id,
            TaskInstance.task_id == task_id,
        )  # fmt: skip
        return str(ti.state)


def test_retention_purges_a_backdated_published_batch(env: DemoEnv, bag: DagBag) -> None:
    """A real batch, published 31 days ago (manifest re-MACed by the key holder), is purged;
    a manifest back-dated without the key is refused and fails the run; verify says purged."""
    settings = load_settings(env.settings_path)
    summary = run_batch("demo", env.sample, settings, shard_size=64)
    manifest_path = Path(summary["manifest"])
    manifest = json.loads(manifest_path.read_text())
    old = datetime.now(UTC) - timedelta(days=31)
    manifest["created_at"] = old.strftime("%Y-%m-%dT%H:%M:%SZ")
    with open_store(settings) as store:
        sealed = seal_manifest(manifest, store, KeyRef.parse(manifest["mac"]["key"]))
    manifest_path.write_text(json.dumps(sealed))
    forged = manifest_path.parent.with_name("f" * 16)  # same manifest, edited without the key
    (forged / "bureau").mkdir(parents=True)
    (forged / "bureau" / "x.cps").write_bytes(b"kept")
    (forged / "manifest.json").write_text(json.dumps({**sealed, "batch_id": forged.name}))

    dry = bag.dags["retention"].test(run_conf={"dry_run": True})
    (listed,) = _results(dry, "purge_expired")
    assert [p["batch_id"] for p in listed["purged"]] == [summary["batch_id"]]
    assert [r["batch"] for r in listed["refused"]] == [f"demo/{forged.name}"]
    assert str(dry.state) == "failed" and _task_state(dry, "check_refused") == "failed"
    assert env.sample.exists() and Path(summary["bureau_file"]).exists()

    shutil.rmtree(forged)
    run = bag.dags["retention"].test(run_conf={"dry_run": False})
    assert str(run.state) == "success"
    (done,) = _results(run, "purge_expired")
    assert done["purged"][0]["input_removed"] is True and done["refused"] == []
    assert not env.sample.exists() and not Path(summary["bureau_file"]).exists()
    assert manifest_path.exists() and (manifest_path.parent / "purged.json").exists()
    trail = Path(settings.key_store.audit_path).read_text()
    assert '"retention.purge"' in trail and summary["batch_id"] in trail
    with pytest.raises(BatchPurgedError, match=f"audit event {done['purged'][0]['audit_seq']}"):
        verify_batch(manifest_path.parent, settings)


def test_an_unhealthy_key_fails_key_health_at_once(
    env: DemoEnv,
    bag: DagBag,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A KCV mismatch is not cured by a retry: the run fails on the first try, naming the key.

    key_health raised KeyStoreError, which fail_fast_on_permanent_errors does not
    cover (it is also the base of transient store errors), so the task was
    retried 3 times with backoff before anyone was alerted.
    """
    import pipeline.steps.key_health as kh  # noqa: PLC0415

    real = kh.check_keys

    def one_kcv_fails(*args: Any, **kwargs: Any) -> dict[str, Any]:
        report = real(*args, **kwargs)
        bad = {**report["kcv_ok"][0], "kcv": "000000", "ok": False}
        return {**report, "kcv_ok": report["kcv_ok"][1:], "kcv_failures": [bad], "healthy": False}

    monkeypatch.setattr(kh, "check_keys", one_kcv_fails)
    run = bag.dags["key_health"].test(run_conf={"warn_days": 90})
    assert str(run.state) == "failed"
    from airflow.models.taskinstance import TaskInstance  # noqa: PLC0415

    with create_session() as session:
        (ti,) = session.query(TaskInstance).filter(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
        )
        assert (str(ti.state), ti.try_number) == ("failed", 1)
    assert "1 KCV failure(s), 0 expired certificate(s): audit-mac@v1" in capsys.readouterr().out
