"""A throw-away cardprep demo environment for the Airflow tests (no airflow import here).

``make_demo_env(root)`` creates, under ``root``: a soft key store with the
public TEST keys and demo PKIs, a settings file whose every path is absolute
(so tasks work whatever their working directory), and an issuer file of
TEST cards in the inbound folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from pipeline.keys.demo import init_demo_store
from pipeline.records.sample import write_sample

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"


@dataclass(frozen=True)
class DemoEnv:
    root: Path
    settings_path: Path
    inbound: Path
    storage: Path
    sample: Path


def write_settings(root: Path, storage: Path, inbound: Path, *, workers: int = 2) -> Path:
    """A settings file for the demo store under ``root`` (all paths absolute)."""
    settings = {
        "environment": "demo",
        "config_dir": str(CONFIG),
        "key_store": {
            "backend": "soft",
            "path": str(root / "keys" / "keys.db"),
            "audit_path": str(root / "keys" / "audit.jsonl"),
            "hmk": {"source": "passphrase_file",
                    "passphrase_file": str(CONFIG / "demo" / "hmk-passphrase.txt")},
        },
        "storage": {"root": str(storage), "inbound": str(inbound)},
        "batch": {"workers": workers, "chunk_size": 16, "segment_size": 64},
    }  # fmt: skip
    path = root / f"settings-{storage.name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def make_demo_env(root: Path, cards: int = 40, *, errors: float = 0.1, seed: int = 7) -> DemoEnv:
    """Key store, settings and one sample file under ``root``."""
    (root / "keys").mkdir(parents=True, exist_ok=True)
    init_demo_store(
        root / "keys" / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=root / "keys" / "audit.jsonl",
    ).close()  # fmt: skip
    inbound = root / "inbound"
    storage = root / "store"
    (inbound / "demo").mkdir(parents=True, exist_ok=True)
    sample = inbound / "demo" / "demo-sample.dat"
    write_sample("demo", cards, sample, error_rate=errors, seed=seed,
                 batch_date=date.today(), config_dir=CONFIG)  # fmt: skip
    return DemoEnv(root, write_settings(root, storage, inbound), inbound, storage, sample)


@contextmanager
def active_demo_env(root: Path, *, cards: int) -> Iterator[DemoEnv]:
    """``make_demo_env`` under ``root``, made current for DAG runs.

    Points ``CARDPREP_SETTINGS`` at it and creates the ``hsm`` pool for the
    duration; the previous ``CARDPREP_SETTINGS`` is restored afterwards.
    """
    from airflow.models.pool import Pool  # noqa: PLC0415 (callers set up airflow first)

    demo = make_demo_env(root, cards=cards)
    saved = os.environ.get("CARDPREP_SETTINGS")
    os.environ["CARDPREP_SETTINGS"] = str(demo.settings_path)
    Pool.create_or_update_pool("hsm", 2, "cardprep key store sessions", include_deferred=False)
    try:
        yield demo
    finally:
        if saved is None:
            os.environ.pop("CARDPREP_SETTINGS", None)
        else:
            os.environ["CARDPREP_SETTINGS"] = saved
