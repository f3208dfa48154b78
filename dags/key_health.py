"""
### key_health: daily KCV check of active keys and certificate expiry warnings

Every ACTIVE key in the cardprep key store has its check value recomputed by
the store and compared with the KCV recorded when it entered
(`pipeline.steps.key_health`).  Issuer certificates expiring within
`warn_days` (90) are reported as warnings; an expired certificate on an
active issuer key, or any KCV mismatch, fails the run.

The key store is opened through the `cardprep_keystore` Connection
(`cardprep_airflow.hooks.KeyStoreHook`): its password is the PKCS#11 PIN and
never reaches a log.  XCom carries labels, versions, KCVs and dates only.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException
from cardprep_airflow import dagconfig
from cardprep_airflow.heap import settle_long_lived_heap
from cardprep_airflow.hooks import KeyStoreHook

CFG = dagconfig.load()
SECTION = CFG.section("key_health")
log = logging.getLogger(__name__)


@dag(
    dag_id="key_health",
    schedule=dagconfig.nightly(str(SECTION.get("schedule", "0 6 * * *"))),
    catchup=False,
    max_active_runs=1,
    default_args=CFG.default_args(),
    tags=["cardprep", "keys"],
    doc_md=__doc__,
    params={
        "warn_days": Param(
            int(SECTION.get("warn_days", 90)),
            type="integer",
            minimum=0,
            maximum=730,
            description="Warn about certificates expiring within this many days.",
        ),
    },
)
def key_health() -> None:
    @task(multiple_outputs=False)
    def check_keys(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """pipeline.steps.key_health.key_health over the store the Connection opens.

        Unhealthy keys fail the task at once (``AirflowFailException``): a retry
        cannot cure a KCV mismatch or an expired certificate, it only delays
        the alert.  A store that cannot be opened is retried as before.
        """
        from pipeline.steps.key_health import key_health as step  # noqa: PLC0415 (parse time)

        assert params is not None
        with KeyStoreHook().session() as (_, store):
            report = step(store, warn_days=int(params["warn_days"]), fail=False)
        for cert in report["expiring"]:
            log.warning("certificate of %s expires %s (%d days left)",
                        cert["key"], cert["valid_through"], cert["days_left"])  # fmt: skip
        if not report["healthy"]:
            bad = [c["key"] for c in report["kcv_failures"]] + [c["key"] for c in report["expired"]]
            raise AirflowFailException(
                f"{len(report['kcv_failures'])} KCV failure(s), {len(report['expired'])} expired "
                f"certificate(s): {', '.join(bad)}"
            )
        return report

    check_keys()


key_health()
settle_long_lived_heap()  # gc off Airflow's long-lived objects (cardprep_airflow/heap.py)
