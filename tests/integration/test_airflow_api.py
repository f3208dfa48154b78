"""End to end as an operator: Airflow (LocalExecutor) on loopback, driven over its REST API.

``airflow standalone`` (API server, scheduler, DAG processor, triggerer,
LocalExecutor on SQLite) runs in a temporary ``AIRFLOW_HOME`` with
``parallelism=2``, our committed config and a demo cardprep environment.
The test, as an operator would:

1. logs in (``POST /auth/token``), creates pool ``hsm``, unpauses
   ``card_batch_demo`` and triggers it with params over ``/api/v2``;
2. waits for success, reads a ``prepare`` task log over the API and checks it
   shows the batch id and key labels but no PAN, no key hex;
3. scans every file Airflow wrote under ``AIRFLOW_HOME/logs`` (and the
   scheduler's own stdout, which carries unmasked task output) for full PANs
   of the input file, Luhn-valid digit runs and demo key hex;
4. triggers the same file again and sees the run fail at once with
   "already published", without a retry;
5. posts an event on the asset ``cardprep_inbound_demo``
   (``POST /api/v2/assets/events``, as the intake system does) and sees an
   ``asset_triggered`` run start and succeed (nothing new to prepare).

Every process started here is in one process group, killed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline.records.layout import load_layout
from pipeline.records.parse import iter_records
from tests.dags.demo_env import CONFIG, REPO, DemoEnv, make_demo_env

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

USER = "operator"
DAG_ID = "card_batch_demo"
STARTUP_TIMEOUT = 90
RUN_TIMEOUT = 120
#: 13..19 digits standing alone; not the fraction of a decimal number (a log's
#: ``duration=0.9564142280000851`` once held a Luhn-valid run of 16).
_DIGIT_RUN = r"(?<![\d.])\d{13,19}(?!\d)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _airflow_env(home: Path, port: int, settings: Path, password_file: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_HOME"))
    }
    base = f"http://127.0.0.1:{port}"
    env.update(
        {
            "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(CONFIG / "airflow" / "cardprep.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "CARDPREP_SETTINGS": str(settings),
        }
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Airflow:
    """A running ``airflow standalone`` and an authenticated REST client."""

    def __init__(self, home: Path, port: int, process: subprocess.Popen[bytes], stdout: Path):
        self.home, self.port, self.process, self.stdout = home, port, process, stdout
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def login(self, password: str) -> None:
        r = self.client.post("/auth/token", json={"username": USER, "password": password})
        r.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.client.request(method, f"/api/v2{path}", **kwargs)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:300]}"
        return r.json() if r.content else None

    def trigger(self, conf: dict[str, Any]) -> str:
        body = {"logical_date": None, "conf": conf}
        return str(self.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"])

    def wait(self, run_id: str) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            time.sleep(2)
        pytest.fail(f"run {run_id} not finished after {RUN_TIMEOUT} s")

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
            "task_instances"])  # fmt: skip

    def log(self, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        r = self.client.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 200, r.text[:300]
        content = r.json()["content"]
        return json.dumps(content) if not isinstance(content, str) else content


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoEnv:
    return make_demo_env(tmp_path_factory.mktemp("api-demo"), cards=40)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, demo: DemoEnv) -> Iterator[Airflow]:
    if not (REPO / ".venv" / "bin" / "airflow").exists():
        pytest.skip("apache-airflow is not installed in .venv")
    home = tmp_path_factory.mktemp("airflow-home")
    password = secrets.token_urlsafe(16)
    password_file = home / "passwords.json"
    password_file.write_text(json.dumps({USER: password}))
    port = _free_port()
    env = _airflow_env(home, port, demo.settings_path, password_file)
    stdout = home / "standalone.out"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "airflow"), "standalone"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    af = Airflow(home, port, process, stdout)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"airflow standalone exited: {stdout.read_text()[-2000:]}")
            try:
                health = af.client.get("/api/v2/monitor/health").json()
                if health.get("scheduler", {}).get("status") == "healthy":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy after {STARTUP_TIMEOUT} s: {stdout.read_text()[-2000:]}")
            time.sleep(1)
        af.login(password)
        af.api("POST", "/pools", json={"name": "hsm", "slots": 2, "include_deferred": False,
                                       "description": "cardprep key store sessions"})  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while af.client.get(f"/api/v2/dags/{DAG_ID}").status_code != 200:
            if time.monotonic() > deadline:
                pytest.fail(f"{DAG_ID} never parsed")
            time.sleep(1)
        af.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        yield af
    finally:
        af.client.close()
        _stop(process)


@pytest.fixture(scope="module")
def first_run(airflow: Airflow, demo: DemoEnv) -> str:
    run_id = airflow.trigger({"file": demo.sample.name, "shard_size": 16})
    if airflow.wait(run_id) != "success":
        failed = [t for t in airflow.task_instances(run_id) if t["state"] == "failed"]
        logs = [airflow.log(run_id, t["task_id"], t["try_number"], t["map_index"])[-3000:]
                for t in failed]  # fmt: skip
        pytest.fail(f"run {run_id} failed: {failed and failed[0]['task_id']}: {logs}")
    return run_id


def _forbidden(demo: DemoEnv) -> tuple[set[str], list[str]]:
    issuer = yaml.safe_load((CONFIG / "issuers" / "demo.yaml").read_text())
    layout = load_layout(issuer["layout"], CONFIG)
    pans = {r.fields.get("pan", "") for r in iter_records(demo.sample, layout)} - {""}
    keys = yaml.safe_load((CONFIG / "demo" / "keys.yaml").read_text())
    items = keys["keys"] if isinstance(keys, dict) and "keys" in keys else keys
    return pans, [str(k["value"]).upper() for k in items]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _leaks(text: str, pans: set[str], keys: list[str]) -> list[str]:
    found = [f"PAN ...{p[-4:]}" for p in pans if p in text]
    found += [f"Luhn-valid run ...{r[-4:]}" for r in re.findall(_DIGIT_RUN, text)
              if _luhn_ok(r)]  # fmt: skip
    upper = text.upper()
    found += [f"key ...{k[-4:]}" for k in keys if k in upper]
    return found


def test_triggered_batch_succeeds_with_parallel_mapped_shards(
    airflow: Airflow, first_run: str
) -> None:
    tis = airflow.task_instances(first_run)
    prepare = [t for t in tis if t["task_id"] == "prepare"]
    assert len(prepare) >= 2 and all(t["state"] == "success" for t in prepare)
    assert all(t["pool"] == "hsm" for t in prepare)
    assert {t["task_id"] for t in tis if t["state"] == "success"} >= {
        "wait_for_files", "verify_and_parse", "plan_shards", "prepare", "publish",
        "reconcile", "summary",
    }  # fmt: skip


def test_task_log_over_the_api_shows_ids_and_no_secret(
    airflow: Airflow, first_run: str, demo: DemoEnv
) -> None:
    (batch,) = (demo.storage / "batches" / "demo").iterdir()
    prepare_log = airflow.log(first_run, "prepare", 1, map_index=0)
    publish_log = airflow.log(first_run, "publish", 1, map_index=0)
    assert batch.name in publish_log and "demo-tk@v1" in publish_log
    assert "opening key store backend=soft" in prepare_log
    pans, keys = _forbidden(demo)
    assert len(pans) > 30
    for name, text in (("prepare", prepare_log), ("publish", publish_log)):
        assert _leaks(text, pans, keys) == [], name


def test_every_log_file_airflow_wrote_is_clean(
    airflow: Airflow, first_run: str, demo: DemoEnv
) -> None:
    logs = sorted(p for p in (airflow.home / "logs").rglob("*") if p.is_file())
    task_logs = [p for p in logs if "dag_id=card_batch_demo" in str(p)]
    assert len(task_logs) >= 7, [str(p) for p in logs][:20]
    pans, keys = _forbidden(demo)
    for path in [*logs, airflow.stdout]:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert _leaks(text, pans, keys) == [], str(path)


def test_retrigger_of_the_same_file_is_refused_as_published(
    airflow: Airflow, first_run: str, demo: DemoEnv
) -> None:
    run_id = airflow.trigger({"file": demo.sample.name, "shard_size": 16})
    assert airflow.wait(run_id) == "failed"
    (vp,) = [t for t in airflow.task_instances(run_id) if t["task_id"] == "verify_and_parse"]
    assert vp["state"] == "failed" and vp["try_number"] == 1
    text = airflow.log(run_id, "verify_and_parse", 1, map_index=0)
    assert "already published" in text and "use force" in text
    batches = list((demo.storage / "batches" / "demo").iterdir())
    assert len(batches) == 1 and (batches[0] / "manifest.json").exists()


def test_an_asset_event_posted_over_the_api_starts_a_run(
    airflow: Airflow, first_run: str, demo: DemoEnv
) -> None:
    """The intake system's path: POST /assets/events on cardprep_inbound_demo starts a run.

    No new file is waiting (the sample is published), so the asset-triggered
    run does not wait for one: it checks the inbound folder and ends as a
    quiet success with nothing published.
    """
    found = airflow.api("GET", "/assets", params={"name_pattern": "cardprep_inbound_demo"})
    (asset,) = [a for a in found["assets"] if a["name"] == "cardprep_inbound_demo"]
    assert asset["uri"] == "cardprep://inbound/demo"
    event = airflow.api("POST", "/assets/events",
                        json={"asset_id": asset["id"], "extra": {"from": "intake"}})  # fmt: skip
    assert event["asset_id"] == asset["id"]
    deadline = time.monotonic() + 60
    while True:
        runs = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
        triggered = [r for r in runs if r["run_type"] == "asset_triggered"]
        if triggered:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no asset-triggered run 60 s after the event: {runs}")
        time.sleep(1)
    (run,) = triggered
    assert airflow.wait(run["dag_run_id"]) == "success"
    states = {t["task_id"]: t["state"] for t in airflow.task_instances(run["dag_run_id"])}
    assert states["wait_for_files"] == "success" and states["summary"] == "success"
    batches = list((demo.storage / "batches" / "demo").iterdir())
    assert len(batches) == 1  # nothing new was prepared
