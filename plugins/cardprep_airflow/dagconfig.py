"""Scheduling settings of the cardprep DAGs, from ``config/airflow/dags.yaml``.

DAG files read like configuration: they take their schedule, owner, retry
policy and pool from here, so operators change ``dags.yaml`` rather than
Python.  DAGs have no ``start_date``: with a cron timetable and no start
date, unpausing a DAG waits for the next scheduled time instead of running
the most recent past one at once (``CronTriggerTimetable(run_immediately=
False)``).  Retries use exponential backoff (``retry_exponential_backoff``)
from ``retry_delay_seconds`` up to ``max_retry_delay_seconds``.

Example::

    cfg = load()
    cfg.section("card_batch")["schedule"]      # "30 1 * * *"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

#: The repository root: dags/ and plugins/ live beside config/.
REPO_ROOT = Path(os.environ.get("CARDPREP_ROOT", Path(__file__).resolve().parents[2]))
CONFIG_DIR = REPO_ROOT / "config"
DAGS_YAML = CONFIG_DIR / "airflow" / "dags.yaml"


@dataclass(frozen=True)
class DagConfig:
    """The parsed ``dags.yaml``."""

    raw: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        """One DAG's section (empty when absent)."""
        value = self.raw.get(name) or {}
        return dict(value)

    def default_args(self) -> dict[str, Any]:
        """Owner and retry policy shared by every task."""
        return {
            "owner": str(self.raw.get("owner", "cardprep-ops")),
            "retries": int(self.raw.get("retries", 3)),
            "retry_delay": timedelta(seconds=int(self.raw.get("retry_delay_seconds", 30))),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(
                seconds=int(self.raw.get("max_retry_delay_seconds", 1800))
            ),
        }


def load(path: Path = DAGS_YAML) -> DagConfig:
    """Read ``dags.yaml`` (a missing file gives the defaults)."""
    if not path.exists():
        return DagConfig({})
    return DagConfig(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def issuer_ids(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Issuer ids from ``config/issuers/*.yaml`` (the ``id:`` of each file)."""
    ids = []
    for path in sorted((config_dir / "issuers").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        ids.append(str(doc.get("id", path.stem)))
    return ids
