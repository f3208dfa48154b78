"""Shared set-up for the batch scenario tests: a TEST demo store and settings under tmp.

Session fixtures (imported by each ``test_batch_*`` module): the demo key
store with its PKIs, settings whose storage and store live in a temporary
directory, and one published batch of a small sample file with injected
errors.  Kept small (about 120 cards) so the suite stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.io.manifest import load_manifest
from pipeline.io.perso import read_bureau_file
from pipeline.keys.demo import init_demo_store
from pipeline.keys.settings import Settings, parse_settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.records.luhn import luhn_valid
from pipeline.records.sample import SampleSummary, write_sample
from pipeline.steps.batch import run_batch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
BATCH_DATE = date(2025, 1, 15)
DEMO_KEYS: dict[str, bytes] = {
    k["label"]: bytes.fromhex(str(k["value"]))
    for k in yaml.safe_load((CONFIG / "demo/keys.yaml").read_text())["keys"]
}
_DIGIT_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


@dataclass
class BatchEnv:
    root: Path
    settings: Settings
    store: SoftKeyStore

    def sample(self, name: str, cards: int, errors: float = 0.0, seed: int = 1) -> SampleSummary:
        return write_sample("demo", cards, self.root / "inbound" / "demo" / name,
                            error_rate=errors, seed=seed, batch_date=BATCH_DATE,
                            config_dir=CONFIG)


def make_settings(root: Path, **batch: Any) -> Settings:
    return parse_settings({
        "environment": "demo",
        "config_dir": str(CONFIG),
        "key_store": {
            "backend": "soft", "path": str(root / "keys.db"),
            "audit_path": str(root / "audit.jsonl"),
            "hmk": {"source": "passphrase_file",
                    "passphrase_file": str(CONFIG / "demo/hmk-passphrase.txt")},
        },
        "storage": {"root": str(root / "var"), "inbound": str(root / "inbound")},
        "batch": {"segment_size": 50, "chunk_size": 16, **batch},
    })


@pytest.fixture(scope="session", name="env")
def env_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchEnv]:
    root = tmp_path_factory.mktemp("batch")
    store = init_demo_store(root / "keys.db", CONFIG / "demo/keys.yaml",
                            passphrase_file=CONFIG / "demo/hmk-passphrase.txt",
                            audit_path=root / "audit.jsonl")
    yield BatchEnv(root, make_settings(root), store)
    store.close()


@dataclass
class Published:
    sample: SampleSummary
    summary: dict[str, Any]

    @property
    def batch_dir(self) -> Path:
        return Path(self.summary["batch_dir"])


@pytest.fixture(scope="session", name="published")
def published_fixture(env: BatchEnv) -> Published:
    """One batch: 120 cards, about 10% injected errors, 3 shards on 2 workers."""
    sample = env.sample("demo-errors.dat", 120, errors=0.1, seed=11)
    summary = run_batch("demo", sample.path, env.settings, shard_size=40, workers=2,
                        batch_date=BATCH_DATE, store=env.store)
    return Published(sample, summary)


def luhn_runs(text: str) -> list[str]:
    """Every Luhn-valid 13..19 digit run in ``text`` (a PAN-shaped leak)."""
    return [m for m in _DIGIT_RUN.findall(text) if luhn_valid(m)]


def key_hex_hits(text: str) -> list[str]:
    """Demo key values (hex, any case) found in ``text``."""
    upper = text.upper()
    return [label for label, value in DEMO_KEYS.items() if value.hex().upper() in upper]


#: What two preparations of one file share: manifest fields, part rows (not card bytes:
#: keys and seals are random), bureau records, rejects (:func:`shared_output`).
SHARED_MANIFEST = ("batch_id", "input", "counts", "shards", "products", "keys", "data_key")
SHARED_PART_COLUMNS = ["line_no", "product", "masked_pan", "pan_token"]


def elsewhere(env: BatchEnv, name: str) -> Settings:
    """The same key store and inbound folder, another storage root (a second copy of a batch)."""
    raw = dict(env.settings.raw)
    raw["storage"] = {"root": str(env.root / name), "inbound": str(env.root / "inbound")}
    return parse_settings(raw)


def shared_output(summary: dict[str, Any]) -> dict[str, Any]:
    """What two preparations of one published file must have in common (see above)."""
    base = Path(summary["batch_dir"])
    manifest = load_manifest(base / "manifest.json")
    parts = sorted((base / "parts").glob("part-*[0-9].parquet"))
    bureau = summary.get("bureau_file")
    records = read_bureau_file(Path(bureau))[1] if bureau else []
    return {
        "manifest": {k: manifest[k] for k in SHARED_MANIFEST},
        "parts": [pq.read_table(p, columns=SHARED_PART_COLUMNS).to_pylist() for p in parts],
        "bureau": [(r.seq, r.line_no, r.product, r.masked_pan, r.dgis) for r in records],
        "rejects": pq.read_table(base / "rejects.parquet").to_pylist(),
    }
