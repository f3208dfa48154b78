"""``check_demo_store``: the demo refuses a store built from other TEST keys than keys.yaml.

Seen on a development machine: a demo store made before the demo keys
changed rejected all 600 cards of the demo sample as R071 (the sample is
encrypted under the new KEK), with nothing saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.keys.demo import check_demo_store, init_demo_store
from pipeline.keys.soft import SoftKeyStore

REPO = Path(__file__).resolve().parents[3]
KEYS = REPO / "config" / "demo" / "keys.yaml"
PASSPHRASE = REPO / "config" / "demo" / "hmk-passphrase.txt"


def _store(tmp_path: Path, keys_yaml: Path) -> SoftKeyStore:
    return init_demo_store(
        tmp_path / "keys.db", keys_yaml, passphrase_file=PASSPHRASE,
        audit_path=tmp_path / "audit.jsonl", with_pki=False,
    )  # fmt: skip


def test_a_store_built_from_this_keys_yaml_passes(tmp_path: Path) -> None:
    store = _store(tmp_path, KEYS)
    try:
        check_demo_store(store, KEYS)
    finally:
        store.close()


def test_a_store_built_from_other_test_keys_is_refused_naming_the_key(tmp_path: Path) -> None:
    raw = yaml.safe_load(KEYS.read_text())
    kek = next(k for k in raw["keys"] if k["label"] == "demo-kek")
    kek["value"] = "0F" * (len(kek["value"]) // 2)  # an older, other TEST value
    older = tmp_path / "older-keys.yaml"
    older.write_text(yaml.safe_dump(raw))
    store = _store(tmp_path, older)
    try:
        with pytest.raises(ConfigError, match=r"demo-kek KCV [0-9A-F]{6}, keys.yaml gives") as err:
            check_demo_store(store, KEYS)
        assert "move the store and its audit trail away" in str(err.value)
        assert kek["value"] not in str(err.value).upper()  # KCVs only, never a value
    finally:
        store.close()


def test_a_store_missing_a_key_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(KEYS.read_text())
    raw["keys"] = [k for k in raw["keys"] if k["label"] != "demo-kmc"]
    fewer = tmp_path / "fewer-keys.yaml"
    fewer.write_text(yaml.safe_dump(raw))
    store = _store(tmp_path, fewer)
    try:
        with pytest.raises(ConfigError, match="demo-kmc missing"):
            check_demo_store(store, KEYS)
    finally:
        store.close()
