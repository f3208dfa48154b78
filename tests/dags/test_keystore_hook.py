"""KeyStoreHook: Connection ``cardprep_keystore`` -> settings and a store; secret never shown."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cardprep_airflow.hooks import _OPEN_STORES, KeyStoreHook, forget_open_stores
from cardprep_airflow.inbound import resolve_inbound_file

from pipeline.errors import ConfigError, KeyStoreError
from pipeline.keys.demo import init_demo_store
from pipeline.keys.model import KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.settings import Backend, load_settings
from tests.dags.demo_env import CONFIG, REPO, DemoEnv, make_demo_env, write_settings

DEMO_PASSPHRASE = (CONFIG / "demo" / "hmk-passphrase.txt").read_text().splitlines()[0]
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


# --- one soft store per process (hooks._OPEN_STORES, commit 05c2e40) ---------------------------


@pytest.fixture(autouse=True)
def no_kept_stores() -> Iterator[None]:
    """Every test starts and ends without a soft store kept open by an earlier session."""
    forget_open_stores()
    yield
    forget_open_stores()


def _closed(store: Any) -> bool:
    """Whether the soft store's database connection was closed (``store.close()``)."""
    try:
        store._conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _use_a_working_key(store: Any) -> None:
    """Load (and unwrap) ``demo-tk`` into the store's cache, as a task would."""
    assert store.kcv(store.active("demo-tk")).hex().upper() == "D2B91C"
    assert store._cache  # the cache attribute the hook must empty between sessions


def _connect(monkeypatch: pytest.MonkeyPatch, settings: Path, password: str | None = None) -> None:
    conn: dict[str, Any] = {"conn_type": "cardprep_keystore", "extra": {"settings": str(settings)}}
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv("AIRFLOW_CONN_CARDPREP_KEYSTORE", json.dumps(conn))
    monkeypatch.delenv("CARDPREP_SETTINGS", raising=False)


def test_a_second_session_gets_the_same_store_without_the_first_sessions_keys(
    connection: None,
) -> None:
    with KeyStoreHook().session() as (_, first):
        _use_a_working_key(first)
    assert list(_OPEN_STORES.values()) == [first] and not _closed(first)
    assert first._cache == {}  # working keys dropped when the session ended
    _use_a_working_key(first)  # someone used the kept store outside a session ...
    with KeyStoreHook().session() as (_, second):
        assert second is first  # no second scrypt HMK derivation
        assert second._cache == {}  # ... the next session still starts without its keys
        _use_a_working_key(second)
    assert second._cache == {} and not _closed(second)


def test_a_different_connection_secret_opens_a_fresh_store_and_closes_the_stale_one(
    monkeypatch: pytest.MonkeyPatch, env: DemoEnv
) -> None:
    _connect(monkeypatch, env.settings_path)  # passphrase from the settings' file
    with KeyStoreHook().session() as (_, first):
        _use_a_working_key(first)
    _connect(monkeypatch, env.settings_path, DEMO_PASSPHRASE)  # same passphrase, from the vault
    with KeyStoreHook().session() as (_, second):
        assert second is not first
        _use_a_working_key(second)
    assert _closed(first) and not _closed(second)
    assert list(_OPEN_STORES.values()) == [second]  # one kept store per Connection


def test_different_settings_open_a_fresh_store_and_close_the_stale_one(
    monkeypatch: pytest.MonkeyPatch, env: DemoEnv
) -> None:
    other = yaml.safe_load(env.settings_path.read_text())
    other["batch"]["workers"] = other["batch"]["workers"] + 1  # same store, other settings
    other_path = env.root / "settings-more-workers.yaml"
    other_path.write_text(yaml.safe_dump(other))
    _connect(monkeypatch, env.settings_path)
    with KeyStoreHook().session() as (_, first):
        _use_a_working_key(first)
    _connect(monkeypatch, other_path)
    with KeyStoreHook().session() as (settings, second):
        assert settings.raw["batch"]["workers"] == other["batch"]["workers"]
        assert second is not first
    assert _closed(first) and not _closed(second)
    assert list(_OPEN_STORES.values()) == [second]


def _replace_store(path: Path, scratch: Path) -> None:
    """Re-create the demo store (no PKIs) beside ``path`` and move it over ``path`` (new inode)."""
    scratch.mkdir()
    init_demo_store(
        scratch / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=scratch / "audit.jsonl", with_pki=False,
    ).close()  # fmt: skip
    before = path.stat().st_ino
    os.replace(scratch / "keys.db", path)
    assert path.stat().st_ino != before


def test_a_store_file_replaced_on_disk_opens_a_fresh_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A re-created store (new inode at the same path) is not the store kept open."""
    env = make_demo_env(tmp_path / "env", cards=1)
    _connect(monkeypatch, env.settings_path)
    with KeyStoreHook().session() as (_, first):
        _use_a_working_key(first)
        with_pki = len(first.list())
    _replace_store(env.root / "keys" / "keys.db", tmp_path / "new")
    with KeyStoreHook().session() as (_, second):
        assert second is not first
        _use_a_working_key(second)
        assert len(second.list()) < with_pki  # the new file: no PKI keys
    assert _closed(first) and list(_OPEN_STORES.values()) == [second]


def test_a_store_replaced_after_a_session_that_wrote_to_it_opens_intact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As above, but the first session wrote to the store (a task that generates a key).

    Closed per session, the store checkpointed and removed its WAL; a kept
    store must leave none either (the hook checkpoints it at the session's
    end), or the fresh store opened on the replacing file replays the old
    file's log ("database disk image is malformed").
    """
    env = make_demo_env(tmp_path / "env", cards=1)
    path = env.root / "keys" / "keys.db"
    _connect(monkeypatch, env.settings_path)
    with KeyStoreHook().session() as (_, first):
        first.generate("written-k1", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA,
                       "issuer:t", actor="user:test")  # fmt: skip
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed at the session's end
    _replace_store(path, tmp_path / "new")
    with KeyStoreHook().session() as (_, second):
        assert second is not first
        assert second._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert "written-k1" not in {record.ref.label for record in second.list()}
        _use_a_working_key(second)


def test_a_failed_session_closes_its_store_and_the_next_one_opens_a_fresh_store(
    connection: None,
) -> None:
    failing = pytest.raises(RuntimeError, match="task failed")
    with failing, KeyStoreHook().session() as (_, first):
        raise RuntimeError("task failed")
    assert _closed(first) and not _OPEN_STORES
    with KeyStoreHook().session() as (_, second):  # kept ...
        assert second is not first
    failing = pytest.raises(RuntimeError, match="task failed")
    with failing, KeyStoreHook().session() as (_, reused):  # ... handed out, then fails
        assert reused is second
        raise RuntimeError("task failed")
    assert _closed(second) and not _OPEN_STORES
    with KeyStoreHook().session() as (_, third):
        assert third is not second and not _closed(third)


def test_a_kept_store_that_cannot_be_refreshed_is_closed_not_kept(
    connection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KeyStoreHook().session() as (_, first):
        pass

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(first, "refresh", broken)
    with pytest.raises(sqlite3.OperationalError), KeyStoreHook().session():
        pytest.fail("the session body must not run on a store whose keys were not dropped")
    assert _closed(first) and not _OPEN_STORES


def test_forget_open_stores_closes_them_and_the_next_session_opens_afresh(
    connection: None,
) -> None:
    with KeyStoreHook().session() as (_, first):
        pass
    assert not _closed(first)
    forget_open_stores()
    assert _closed(first) and not _OPEN_STORES
    with KeyStoreHook().session() as (_, second):
        assert second is not first


def test_a_pkcs11_store_is_closed_after_every_session(
    monkeypatch: pytest.MonkeyPatch, env: DemoEnv
) -> None:
    """PKCS#11 stores are never kept: the token session ends with the task."""
    import pipeline.keys  # noqa: PLC0415

    settings = yaml.safe_load(env.settings_path.read_text())
    settings["key_store"] = {
        "backend": "pkcs11", "path": str(env.root / "keys" / "keys.db"),  # a file that exists
        "pkcs11": {"module": "x.so", "token_label": "t"},
    }  # fmt: skip
    path = env.root / "settings-pkcs11-kept.yaml"
    path.write_text(yaml.safe_dump(settings))
    opened: list[_FakeToken] = []

    def fake_open_store(settings: Any, *, secret: bytes | None = None) -> _FakeToken:
        opened.append(_FakeToken())
        return opened[-1]

    monkeypatch.setattr(pipeline.keys, "open_store", fake_open_store)
    _connect(monkeypatch, path, "123456")
    for _ in range(2):
        with KeyStoreHook().session() as (_, store):
            assert not store.closed
    assert [store.closed for store in opened] == [True, True] and not _OPEN_STORES


class _FakeToken:
    """Stands in for a PKCS#11 store: only ``close`` is watched."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_kept_stores_hold_no_connection_secret_and_the_reuse_log_says_only_whether(
    monkeypatch: pytest.MonkeyPatch,
    vault_env: tuple[DemoEnv, str],
    env: DemoEnv,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    vault, passphrase = vault_env
    caplog.set_level(logging.DEBUG)
    _vault_connection(monkeypatch, vault, passphrase)
    with KeyStoreHook().session() as (_, first):
        _use_a_working_key(first)
    assert len(_OPEN_STORES) == 1
    assert passphrase not in repr(list(_OPEN_STORES))
    assert passphrase.encode() not in repr(list(_OPEN_STORES)).encode()
    caplog.clear()
    capfd.readouterr()
    with KeyStoreHook().session() as (_, second):
        assert second is first
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "reusing the key store" in logged and "secret from connection: yes" in logged
    assert passphrase not in logged
    _connect(monkeypatch, env.settings_path)  # no password: the settings' passphrase file
    with KeyStoreHook().session():
        pass
    caplog.clear()
    with KeyStoreHook().session():
        pass
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "reusing the key store" in logged and "secret from connection: no" in logged
