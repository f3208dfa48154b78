"""DagBag: every cardprep DAG imports fast and follows the house policy.

Policy (issue 6): catchup off, one active run, retries with exponential
backoff, an owner, tags and a doc; ``card_batch_<issuer>`` per issuer with a
cron schedule *or* an inbound asset, a reschedule-mode sensor, ``prepare``
mapped in pool ``hsm``; the trigger form's params validate.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable
from airflow.sdk.exceptions import ParamValidationError

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAGS_YAML = yaml.safe_load((REPO / "config/airflow/dags.yaml").read_text())
ISSUERS = sorted(
    yaml.safe_load(p.read_text())["id"] for p in (REPO / "config/issuers").glob("*.yaml")
)
EXPECTED = {f"card_batch_{i}" for i in ISSUERS} | {"key_health", "retention", "icc_keypool"}


def test_every_dag_imports_without_error(bag: DagBag) -> None:
    assert bag.import_errors == {}
    assert set(bag.dags) >= EXPECTED
    assert all(d.startswith(("card_batch_", "key_health", "retention", "icc_keypool"))
               for d in bag.dags)  # fmt: skip


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_each_dag_file_parses_in_under_two_seconds(path: Path) -> None:
    started = time.perf_counter()
    one = DagBag(dag_folder=str(path))
    elapsed = time.perf_counter() - started
    assert one.import_errors == {} and one.dags
    assert elapsed < 2.0, f"{path.name} took {elapsed:.2f} s to parse"


def test_dag_files_import_steps_inside_tasks() -> None:
    """Steps are imported inside tasks, so parsing never loads pyarrow or the crypto core."""
    for path in DAGS.glob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if line.startswith(("from pipeline", "import pipeline")):
                pytest.fail(f"{path.name}: top-level {line!r} (import steps inside the task)")


def test_house_policy_on_every_dag_and_task(bag: DagBag) -> None:
    for dag_id in EXPECTED:
        dag = bag.dags[dag_id]
        assert dag.catchup is False, dag_id
        assert dag.max_active_runs == 1, dag_id
        assert "cardprep" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.owner == DAGS_YAML["owner"], dag_id
        for t in dag.tasks:
            assert t.retries == DAGS_YAML["retries"] >= 1, (dag_id, t.task_id)
            assert t.retry_exponential_backoff, (dag_id, t.task_id)
            assert t.retry_delay.total_seconds() == DAGS_YAML["retry_delay_seconds"]
            assert t.max_retry_delay.total_seconds() == DAGS_YAML["max_retry_delay_seconds"]


@pytest.mark.parametrize("issuer", ISSUERS)
def test_card_batch_shape(bag: DagBag, issuer: str) -> None:
    dag = bag.dags[f"card_batch_{issuer}"]
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "wait_for_files", "verify_and_parse", "plan_shards", "prepare", "publish",
        "reconcile", "summary",
    }  # fmt: skip
    down = {tid: set(t.downstream_task_ids) for tid, t in tasks.items()}
    assert down["wait_for_files"] == {"verify_and_parse"}
    assert down["verify_and_parse"] == {"plan_shards", "publish", "summary"}
    assert down["plan_shards"] == {"prepare", "publish"}
    assert down["prepare"] == {"publish"}
    assert down["publish"] == {"reconcile"}
    assert down["reconcile"] == {"summary"}
    sensor = tasks["wait_for_files"]
    # not soft_fail: it turned a broken configuration into a green skip; the sensor
    # ends a fileless night itself (test_card_batch: the quiet deadline)
    assert sensor.mode == "reschedule" and sensor.soft_fail is False
    assert (
        sensor.poke_interval == DAGS_YAML["card_batch"]["wait_for_files"]["poke_interval_seconds"]
    )
    wait = DAGS_YAML["card_batch"]["wait_for_files"]
    # the run ends itself at timeout_seconds; Airflow's timeout is only a backstop after it
    assert sensor.timeout == wait["timeout_seconds"] + 3 * wait["poke_interval_seconds"]
    prepare = tasks["prepare"]
    assert prepare.pool == DAGS_YAML["card_batch"]["pool"] == "hsm"
    assert getattr(prepare, "expand_input", None) is not None  # mapped with .expand()
    assert tasks["publish"].trigger_rule == "none_failed"
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.params["issuer"] == issuer


@pytest.mark.parametrize("issuer", ISSUERS)
def test_card_batch_schedule_is_cron_from_config_or_inbound_asset(bag: DagBag, issuer: str) -> None:
    """Each issuer's DAG runs on the nightly cron OR an event on its own inbound asset."""
    dag = bag.dags[f"card_batch_{issuer}"]
    timetable: Any = dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert isinstance(timetable.timetable, CronTriggerTimetable)
    assert timetable.timetable.expression == DAGS_YAML["card_batch"]["schedule"]
    asset = timetable.asset_condition
    assert isinstance(asset, Asset)  # one asset, not an alias or a condition over several
    assert (asset.name, asset.uri) == (f"cardprep_inbound_{issuer}", f"cardprep://inbound/{issuer}")
    others = [bag.dags[f"card_batch_{i}"].timetable for i in ISSUERS if i != issuer]
    assert all(getattr(t, "asset_condition", None) != asset for t in others)


def test_retention_fails_the_run_on_a_refused_manifest(bag: DagBag) -> None:
    tasks = bag.dags["retention"].task_dict
    assert tasks["purge_expired"].downstream_task_ids == {"check_refused"}


def _validated(bag: DagBag, dag_id: str, **conf: Any) -> dict[str, Any]:
    params = copy.deepcopy(bag.dags[dag_id].params)
    params.update(conf)
    return params.validate()


def test_card_batch_params_defaults_and_valid_values(bag: DagBag) -> None:
    resolved = _validated(bag, "card_batch_demo")
    assert resolved == {
        "issuer": "demo", "file": "", "shard_size": DAGS_YAML["card_batch"]["shard_size"],
        "dry_run": False, "force": False,
    }  # fmt: skip
    ok = _validated(bag, "card_batch_demo", file="demo-20260101.dat", shard_size=100, force=True)
    assert ok["file"] == "demo-20260101.dat" and ok["force"] is True


@pytest.mark.parametrize(
    "conf",
    [
        {"issuer": "demo-csv"},  # one DAG per issuer
        {"file": "../../etc/passwd"},
        {"file": "/etc/passwd"},
        {"file": ".hidden"},
        {"shard_size": 0},
        {"shard_size": "many"},
        {"dry_run": "yes"},
        {"force": 1},
    ],
    ids=lambda c: next(iter(c.items())).__repr__(),
)
def test_card_batch_params_refuse_bad_values(bag: DagBag, conf: dict[str, Any]) -> None:
    with pytest.raises(ParamValidationError):
        _validated(bag, "card_batch_demo", **conf)


def test_key_health_and_retention_params(bag: DagBag) -> None:
    assert _validated(bag, "key_health")["warn_days"] == DAGS_YAML["key_health"]["warn_days"]
    with pytest.raises(ParamValidationError):
        _validated(bag, "key_health", warn_days=-1)
    assert _validated(bag, "retention")["dry_run"] is False
    with pytest.raises(ParamValidationError):
        _validated(bag, "retention", default_retention_days=0)


def test_other_schedules_are_crons_from_config(bag: DagBag) -> None:
    for dag_id in ("key_health", "retention", "icc_keypool"):
        timetable = bag.dags[dag_id].timetable
        assert isinstance(timetable, CronTriggerTimetable)
        assert timetable.expression == DAGS_YAML[dag_id]["schedule"]


def test_demo_script_creates_every_pool_the_dags_use(bag: DagBag) -> None:
    pools = {t.pool for d in bag.dags.values() for t in d.tasks} - {"default_pool"}
    script = (REPO / "config/airflow/run_demo.sh").read_text()
    for pool in pools:
        assert f"pools set {pool} " in script, pool


def _slot_then(timetable: Any, minutes_after: int) -> tuple[Any, Any]:
    """(first run the scheduler picks, the most recent past slot) for a DAG first
    unpaused ``minutes_after`` its last cron slot; the scheduler's own timetable code."""
    import airflow.timetables.trigger as trigger  # noqa: PLC0415
    import pendulum  # noqa: PLC0415
    from airflow.serialization.decoders import decode_timetable  # noqa: PLC0415
    from airflow.serialization.encoders import encode_timetable  # noqa: PLC0415
    from airflow.timetables.base import TimeRestriction  # noqa: PLC0415

    core = decode_timetable(encode_timetable(timetable))  # what the scheduler runs
    cron = getattr(core, "timetable", core)  # AssetOrTimeSchedule wraps the cron timetable
    slot = cron._align_to_prev(pendulum.datetime(2026, 11, 29, 12, 0, tz="UTC"))
    now = slot.add(minutes=minutes_after)
    original = trigger.utcnow
    trigger.utcnow = lambda: now
    try:
        info = core.next_dagrun_info(
            last_automated_data_interval=None,
            restriction=TimeRestriction(earliest=None, latest=None, catchup=False),
        )
    finally:
        trigger.utcnow = original
    assert info is not None
    return info.run_after, slot


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_unpausing_soon_after_a_slot_waits_for_the_next_one(bag: DagBag, dag_id: str) -> None:
    """Unpaused 10 minutes after its nightly slot, a DAG does not run that slot at once.

    ``CronTriggerTimetable``'s default would (a tenth of the period is 2.4 h):
    a card batch unpaused at 01:40 started the 01:30 run and took the waiting
    file from under the operator's manual trigger.
    """
    first, slot = _slot_then(bag.dags[dag_id].timetable, minutes_after=10)
    assert first > slot, f"{dag_id}: first run at the past slot {slot}"
