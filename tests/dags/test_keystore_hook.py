"""KeyStoreHook: Connection ``cardprep_keystore`` -> settings and a store; secret never shown."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cardprep_airflow.hooks import KeyStoreHook
from cardprep_airflow.inbound import resolve_inbound_file

from pipeline.errors import ConfigError, KeyStoreError
from pipeline.keys.demo import init_demo_store
from pipeline.keys.settings import Backend, load_settings
from tests.dags.demo_env import CONFIG, REPO, DemoEnv, make_demo_env, write_settings

PIN = "8642"  # short on purpose: Airflow does not mask secrets of 4 characters by default


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DemoEnv:
    return make_demo_env(tmp_path_factory.mktemp("hook"), cards=5)


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch, env: DemoEnv) -> Iterator[None]:
    conn = {"conn_type": "cardprep_keystore", "extra": {"settings": str(env.settings_path)}}
    monkeypatch.setenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", json.dumps(conn))
    monkeypatch.delenv("CARDPREP_SETTINGS", raising=False)
    yield


def test_settings_come_from_the_connection_extra(connection: None, env: DemoEnv) -> None:
    settings = KeyStoreHook().settings()
    assert settings.key_store.path == env.root / "keys" / "keys.db"
    with KeyStoreHook().session() as (same, store):
        assert same.key_store.path == settings.key_store.path
        assert store.get("demo-tk").kcv.hex().upper() == "D2B91C"


def test_without_connection_the_settings_file_decides(
    monkeypatch: pytest.MonkeyPatch, env: DemoEnv
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", raising=False)
    monkeypatch.setenv("CARDPREP_SETTINGS", str(env.settings_path))
    assert KeyStoreHook().settings().key_store.backend is Backend.SOFT
    with pytest.raises(Exception, match="cardprep_keystore"):
        KeyStoreHook(required=True).settings()


def test_a_pkcs11_pin_goes_to_the_backend_only_and_is_never_logged(
    monkeypatch: pytest.MonkeyPatch,
    env: DemoEnv,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A 4-digit PIN (not masked by Airflow) reaches the PKCS#11 backend, never a log line."""
    settings = yaml.safe_load(env.settings_path.read_text())
    settings["key_store"] = {
        "backend": "pkcs11", "audit_path": str(env.root / "keys" / "p11-audit.jsonl"),
        "pkcs11": {"module": str(env.root / "no-such-pkcs11.so"), "token_label": "t"},
    }  # fmt: skip
    path = env.root / "settings-pkcs11.yaml"
    path.write_text(yaml.safe_dump(settings))
    conn = {"conn_type": "cardprep_keystore", "password": PIN, "extra": {"settings": str(path)}}
    monkeypatch.setenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", json.dumps(conn))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyStoreError, match="no-such-pkcs11") as info:  # got as far as the module
        KeyStoreHook().open_store()
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert PIN not in str(info.value)
    assert "backend=pkcs11" in logged and "secret from connection: yes" in logged
    assert PIN not in logged


@pytest.fixture(scope="module")
def vault_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoEnv, str]:
    """A demo store whose passphrase exists only in the Connection (no passphrase file)."""
    root = tmp_path_factory.mktemp("hook-vault")
    passphrase = "cardprep-" + secrets.token_urlsafe(24)
    secret_file = root / "passphrase.txt"
    secret_file.write_text(passphrase + "\n")
    (root / "keys").mkdir()
    init_demo_store(
        root / "keys" / "keys.db", CONFIG / "demo" / "keys.yaml", passphrase_file=secret_file,
        audit_path=root / "keys" / "audit.jsonl", with_pki=False,
    ).close()  # fmt: skip
    secret_file.unlink()
    settings_path = write_settings(root, root / "store", root / "inbound")
    settings = yaml.safe_load(settings_path.read_text())
    settings["key_store"]["hmk"]["passphrase_file"] = None
    settings_path.write_text(yaml.safe_dump(settings))
    return DemoEnv(root, settings_path, root / "inbound", root / "store", secret_file), passphrase


def _vault_connection(monkeypatch: pytest.MonkeyPatch, env: DemoEnv, password: str) -> None:
    conn = {"conn_type": "cardprep_keystore", "password": password,
            "extra": {"settings": str(env.settings_path)}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", json.dumps(conn))
    monkeypatch.delenv("CARDPREP_SETTINGS", raising=False)


def test_the_connection_password_is_the_soft_store_passphrase(
    monkeypatch: pytest.MonkeyPatch, vault_env: tuple[DemoEnv, str]
) -> None:
    env, passphrase = vault_env
    monkeypatch.delenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", raising=False)
    monkeypatch.setenv("CARDPREP_SETTINGS", str(env.settings_path))
    with pytest.raises(KeyStoreError, match="passphrase_file"):  # nothing else knows it
        KeyStoreHook().open_store()
    _vault_connection(monkeypatch, env, passphrase)
    with KeyStoreHook().session() as (_, store):
        assert store.get("demo-tk").kcv.hex().upper() == "D2B91C"
        assert passphrase not in repr(store)
    wrong = "cardprep-" + secrets.token_urlsafe(24)
    _vault_connection(monkeypatch, env, wrong)
    with pytest.raises(KeyStoreError, match="hmk") as info:
        KeyStoreHook().open_store()
    assert wrong not in str(info.value) and passphrase not in str(info.value)


def _run_xcoms(run: Any) -> list[str]:
    from airflow.models.xcom import XComModel  # noqa: PLC0415
    from airflow.utils.session import create_session  # noqa: PLC0415

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id
        )
        return [json.dumps(x.value) for x in rows]


def test_a_dag_run_opens_the_store_with_the_connection_passphrase_and_never_shows_it(
    monkeypatch: pytest.MonkeyPatch,
    vault_env: tuple[DemoEnv, str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """key_health through dag.test(): every task output, log record and XCom scanned."""
    from airflow.dag_processing.dagbag import DagBag  # noqa: PLC0415

    env, passphrase = vault_env
    _vault_connection(monkeypatch, env, passphrase)
    caplog.set_level(logging.DEBUG)
    bag = DagBag(dag_folder=str(REPO / "dags" / "key_health.py"))
    run = bag.dags["key_health"].test(run_conf={"warn_days": 90})
    out, err = capfd.readouterr()
    assert str(run.state) == "success"
    xcoms = _run_xcoms(run)
    (report,) = [json.loads(x) for x in xcoms]
    assert report["healthy"] is True and report["checked"] > 10
    logged = caplog.text + out + err
    assert "secret from connection: yes" in logged  # the hook's line was captured ...
    written = [p.read_text(errors="replace") for p in (Path(os.environ["AIRFLOW_HOME"])
               / "logs").rglob("*") if p.is_file()]  # fmt: skip
    for where, text in [("console/log records", logged), *[("xcom", x) for x in xcoms],
                        *[("log file", t) for t in written]]:  # fmt: skip
        assert passphrase not in text, where  # ... and the passphrase nowhere


def test_the_file_param_names_a_file_in_the_inbound_folder(env: DemoEnv) -> None:
    settings = load_settings(env.settings_path)
    assert resolve_inbound_file("demo", env.sample.name, settings) == str(env.sample.resolve())
    for bad in ("", "..", "../demo/" + env.sample.name, "missing.dat"):
        with pytest.raises(ConfigError, match="file"):
            resolve_inbound_file("demo", bad, settings)
    assert Path(env.sample).exists()
