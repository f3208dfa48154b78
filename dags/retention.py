"""
### retention: purge published batches and their input files past retention

Daily, off-peak.  For every issuer, every *published* batch older than the
issuer's `retention_days` (`config/issuers/<id>.yaml`, default 30) after
publication is purged by `pipeline.steps.retention.purge_expired`:

1. one `retention.purge` event in the key store's audit trail (fail closed:
   nothing is deleted if it cannot be written),
2. a `purged.json` tombstone beside the manifest,
3. the input file (only if its SHA-256 is the batch's) and every output file.

The publication time comes from the manifest, so its MAC is checked with
the key store first: a manifest that fails (edited, forged, MAC key gone) is
**not** purged, it is listed in `refused` and the task `check_refused` fails
the run so that a person looks (the other batches are purged all the same).

The MACed manifest stays as evidence, and so that a re-delivered copy of the
same file is still refused as already published; `cardprep verify` of a
purged batch says when it was purged and which audit event is the evidence.
Unpublished batches are never touched; old inbound files that were never
published are only reported (`stale_inputs`).  Set `dry_run` to list what
would be purged.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException
from cardprep_airflow import dagconfig
from cardprep_airflow.failures import fail_fast_on_permanent_errors
from cardprep_airflow.heap import settle_long_lived_heap
from cardprep_airflow.hooks import KeyStoreHook

CFG = dagconfig.load()
SECTION = CFG.section("retention")
log = logging.getLogger(__name__)


@dag(
    dag_id="retention",
    schedule=dagconfig.nightly(str(SECTION.get("schedule", "0 3 * * *"))),
    catchup=False,
    max_active_runs=1,
    default_args=CFG.default_args(),
    tags=["cardprep", "retention"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", description="List what is due; delete nothing."),
        "default_retention_days": Param(
            int(SECTION.get("default_retention_days", 30)),
            type="integer",
            minimum=1,
            maximum=3650,
            description="Retention of batches whose issuer has no config any more.",
        ),
    },
)
def retention() -> None:
    @task(multiple_outputs=False)
    def purge_expired(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """pipeline.steps.retention.purge_expired over the configured storage."""
        from pipeline.steps.retention import purge_expired as step  # noqa: PLC0415 (parse time)

        assert params is not None
        with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
            return step(settings, store=store, dry_run=bool(params["dry_run"]),
                        default_retention_days=int(params["default_retention_days"]))  # fmt: skip

    @task
    def check_refused(result: dict[str, Any]) -> None:
        """Fail the run when a manifest failed its MAC check (its batch was left alone)."""
        refused = result["refused"]
        for r in refused:
            log.error("not purged: %s: %s: %s", r["batch"], r["check"], r["detail"])
        if refused:
            raise AirflowFailException(
                f"{len(refused)} batch(es) not purged, their manifest failed its check: "
                + ", ".join(r["batch"] for r in refused)
            )
        log.info("%d purged, %d kept, %d already purged", len(result["purged"]),
                 result["kept"], result["already_purged"])  # fmt: skip

    check_refused(purge_expired())


retention()
settle_long_lived_heap()  # gc off Airflow's long-lived objects (cardprep_airflow/heap.py)
