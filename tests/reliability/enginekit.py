"""A throwaway cardprep installation for engine-level reliability tests.

A :class:`World` is a directory with its own settings file, demo key store
(TEST keys), storage root and inbound folder, so tests can run ``cardprep``
in-process or as a subprocess, kill it, tamper with what it wrote and throw
it all away.  The demo store is built once per session and copied (RSA key
generation for the demo CA is the slow part).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from pipeline.keys.demo import init_demo_store
from pipeline.records.sample import SampleSummary, write_sample

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
PASSPHRASE = CONFIG / "demo" / "hmk-passphrase.txt"


@dataclass(frozen=True)
class World:
    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "settings.yaml"

    @property
    def keys_db(self) -> Path:
        return self.root / "keys" / "keys.db"

    @property
    def audit(self) -> Path:
        return self.root / "keys" / "audit.jsonl"

    @property
    def storage(self) -> Path:
        return self.root / "var"

    @property
    def inbound(self) -> Path:
        return self.root / "inbound" / "demo"

    def batches(self) -> list[Path]:
        base = self.storage / "batches" / "demo"
        return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []

    def write_settings(self, **batch: Any) -> None:
        doc = {
            "environment": "demo",
            "config_dir": str(CONFIG),
            "key_store": {
                "backend": "soft", "path": str(self.keys_db), "audit_path": str(self.audit),
                "hmk": {"source": "passphrase_file", "passphrase_file": str(PASSPHRASE)},
            },
            "storage": {"root": str(self.storage), "inbound": str(self.root / "inbound")},
            "batch": {"shard_size": 10, "segment_size": 10, "chunk_size": 4, "workers": 1,
                      "lock_wait": 0, **batch},
        }  # fmt: skip
        self.settings.write_text(yaml.safe_dump(doc), encoding="utf-8")

    def sample(self, cards: int, *, seed: int = 7, errors: float = 0.1,
               name: str = "input.dat") -> SampleSummary:  # fmt: skip
        return write_sample("demo", cards, self.inbound / name, error_rate=errors, seed=seed,
                            batch_date=date.today(), config_dir=CONFIG)  # fmt: skip

    def clone(self, dst: Path) -> World:
        """A copy of this world at ``dst`` (settings rewritten to the new paths)."""
        shutil.copytree(self.root, dst)
        world = World(dst)
        raw = yaml.safe_load(self.settings.read_text())
        world.write_settings(**raw.get("batch", {}))
        return world

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARDPREP_")}
        env["PYTHONPATH"] = str(ROOT)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cardprep ARGS --settings <world>`` as a subprocess (cwd: the repository)."""
        cmd = [sys.executable, "-m", "pipeline.cli.main", *args, "--settings", str(self.settings)]
        return subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "pipeline.cli.main", *args, "--settings", str(self.settings)]
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def make_template(root: Path) -> World:
    """A world with a fresh demo key store and empty storage (build once, then clone)."""
    world = World(root)
    (root / "keys").mkdir(parents=True)
    world.inbound.mkdir(parents=True)
    world.write_settings()
    store = init_demo_store(world.keys_db, CONFIG / "demo" / "keys.yaml",
                            passphrase_file=PASSPHRASE, audit_path=world.audit)  # fmt: skip
    store.close()
    return world
