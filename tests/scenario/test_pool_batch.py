"""Scenario: a batch of a pool product through the real steps on two worker processes.

A copy of the demo config with the RSA product switched to
``icc_key.source: pool``; the pool holds a few more keys than the batch
needs.  After ``run_batch`` (2 shards, 2 workers, 4-record chunks): every
card's key came from the pool (the part's ICC public-key hashes are exactly
the pool's used entries), nothing stays claimed, nothing was burned, the
spare entries the workers held are free again, and a second batch never gets
a key the first one used.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.keys.demo import init_demo_store
from pipeline.keys.pool import KeyPool, PoolSpec, fill, pool_path
from pipeline.keys.settings import Settings, parse_settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.records.sample import write_sample
from pipeline.steps.batch import run_batch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
BATCH_DATE = date(2025, 1, 15)
PASSPHRASE = CONFIG / "demo" / "hmk-passphrase.txt"


def _config(tmp: Path) -> Path:
    cfg = tmp / "config"
    shutil.copytree(CONFIG, cfg)
    product = yaml.safe_load((cfg / "products" / "demo-visa-rsa.yaml").read_text())
    product["icc_key"]["source"] = "pool"
    (cfg / "products" / "demo-visa-rsa.yaml").write_text(yaml.safe_dump(product))
    issuer = yaml.safe_load((cfg / "issuers" / "demo.yaml").read_text())
    issuer["bins"] = {"476173": "demo-visa-rsa"}
    issuer["sample"]["bins"] = [b for b in issuer["sample"]["bins"] if b["bin"] == "476173"]
    (cfg / "issuers" / "demo.yaml").write_text(yaml.safe_dump(issuer))
    return cfg


def _settings(tmp: Path, cfg: Path) -> Settings:
    return parse_settings({
        "environment": "demo", "config_dir": str(cfg),
        "key_store": {"backend": "soft", "path": str(tmp / "keys.db"),
                      "audit_path": str(tmp / "audit.jsonl"),
                      "hmk": {"source": "passphrase_file", "passphrase_file": str(PASSPHRASE)}},
        "storage": {"root": str(tmp / "var"), "inbound": str(tmp / "inbound")},
        "batch": {"segment_size": 8, "chunk_size": 4},
    })  # fmt: skip


def _store_with_pool(tmp: Path, settings: Settings, keys: int, **fill_kw: Any) -> SoftKeyStore:
    """The demo store in ``tmp`` and its RSA-1152 e=3 pool filled with ``keys`` entries.

    The caller closes the store.
    """
    store = init_demo_store(
        tmp / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=PASSPHRASE, audit_path=tmp / "audit.jsonl",
    )  # fmt: skip
    try:
        with KeyPool(pool_path(settings)) as pool:
            fill(store, pool, PoolSpec.of("rsa", 1152, 3), store.active("demo-tk"), keys,
                 actor="ops", **fill_kw)  # fmt: skip
    except BaseException:
        store.close()
        raise
    return store


def _part_hashes(summary: dict[str, object]) -> list[str]:
    parts = sorted((Path(str(summary["batch_dir"])) / "parts").glob("part-*[0-9].parquet"))
    return [
        h for p in parts for h in pq.read_table(p, columns=["icc_pk_sha256"]).column(0).to_pylist()
    ]


@pytest.mark.slow
def test_pool_batch_on_two_workers(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    settings = _settings(tmp_path, cfg)
    store = _store_with_pool(tmp_path, settings, 40)
    try:
        sample = write_sample("demo", 24, tmp_path / "inbound" / "demo" / "a.dat", seed=3,
                              batch_date=BATCH_DATE, config_dir=cfg)  # fmt: skip
        first = run_batch("demo", sample.path, settings, shard_size=12, workers=2,
                          batch_date=BATCH_DATE, store=store)  # fmt: skip
        assert first["counts"] == {"in": 24, "prepared": 24, "rejected": 0}
        hashes = _part_hashes(first)
        assert len(hashes) == len(set(hashes)) == 24
        with KeyPool(pool_path(settings)) as pool:
            [status] = pool.status()
            assert (status.used, status.claimed, status.burned, status.free) == (24, 0, 0, 16)
        conn = sqlite3.connect(pool_path(settings))
        used = {r[0] for r in conn.execute("SELECT pk_sha256 FROM entries WHERE state='used'")}
        conn.close()
        assert used == set(hashes)
        second_file = write_sample("demo", 10, tmp_path / "inbound" / "demo" / "b.dat", seed=4,
                                   batch_date=BATCH_DATE, config_dir=cfg)  # fmt: skip
        second = run_batch("demo", second_file.path, settings, shard_size=12, workers=2,
                           batch_date=BATCH_DATE, store=store)  # fmt: skip
        assert not set(_part_hashes(second)) & set(hashes)
        assert hashlib.sha256(b"").hexdigest() not in hashes
    finally:
        store.close()
