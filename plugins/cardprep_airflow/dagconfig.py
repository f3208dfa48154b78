"""Scheduling settings of the cardprep DAGs, from ``config/airflow/dags.yaml``.

DAG files read like configuration: they take their schedule, owner, retry
policy and pool from here, so operators change ``dags.yaml`` rather than
Python.  DAGs have no ``start_date``: with a cron timetable and no start
date, unpausing a DAG waits for the next scheduled time instead of running
the most recent past one at once (:func:`nightly`).  Retries use
exponential backoff (``retry_exponential_backoff``) from
``retry_delay_seconds`` up to ``max_retry_delay_seconds``.

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

from airflow.sdk import CronTriggerTimetable

from pipeline.yamlconf import safe_load

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


def nightly(cron: str) -> CronTriggerTimetable:
    """The cron timetable of a cardprep DAG (UTC) that never runs a past slot on unpausing.

    ``CronTriggerTimetable``'s default (``run_immediately=False``) still runs
    the most recent past slot when the DAG is first unpaused within a tenth
    of the cron period after it (2.4 hours for a nightly DAG): unpaused at
    01:40, a ``30 1 * * *`` batch would start at once and take whatever file
    is waiting.  ``run_immediately=timedelta(0)`` makes the first run the
    next slot; a missed night is run by hand (or by the inbound asset event).

    Example::

        nightly("30 1 * * *")   # the first run after unpausing: the next 01:30 UTC
    """
    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0))


def load(path: Path = DAGS_YAML) -> DagConfig:
    """Read ``dags.yaml`` (a missing file gives the defaults)."""
    if not path.exists():
        return DagConfig({})
    return DagConfig(safe_load(path.read_text(encoding="utf-8")) or {})


def issuer_ids(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Issuer ids from ``config/issuers/*.yaml`` (the ``id:`` of each file)."""
    ids = []
    for path in sorted((config_dir / "issuers").glob("*.yaml")):
        doc = safe_load(path.read_text(encoding="utf-8")) or {}
        ids.append(str(doc.get("id", path.stem)))
    return ids
