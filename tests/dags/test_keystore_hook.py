"""KeyStoreHook: Connection ``cardprep_keystore`` -> settings and a store; PIN never logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cardprep_airflow.hooks import KeyStoreHook
from cardprep_airflow.inbound import resolve_inbound_file

from pipeline.errors import ConfigError
from pipeline.keys.settings import Backend, load_settings
from tests.dags.demo_env import DemoEnv, make_demo_env

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


def test_a_pin_for_the_soft_store_is_refused_and_never_logged(
    monkeypatch: pytest.MonkeyPatch,
    env: DemoEnv,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    conn = {"conn_type": "cardprep_keystore", "password": PIN,
            "extra": {"settings": str(env.settings_path)}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", json.dumps(conn))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match="pkcs11 backend only") as info:
        KeyStoreHook().open_store()
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert PIN not in str(info.value)
    assert "PIN from connection: yes" in logged  # the hook did log its line ...
    assert PIN not in logged  # ... without the PIN


def test_the_file_param_names_a_file_in_the_inbound_folder(env: DemoEnv) -> None:
    settings = load_settings(env.settings_path)
    assert resolve_inbound_file("demo", env.sample.name, settings) == str(env.sample.resolve())
    for bad in ("", "..", "../demo/" + env.sample.name, "missing.dat"):
        with pytest.raises(ConfigError, match="file"):
            resolve_inbound_file("demo", bad, settings)
    assert Path(env.sample).exists()
