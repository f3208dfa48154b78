"""
### icc_keypool: keep the ICC key pools at their target size, off-peak

Generating an RSA-1152 ICC key pair costs ~28 ms, everything else a card
needs ~0.3 ms: pre-generated pools take key generation off the nightly
batch's critical path.  Each run tops every pool in `pools` (from
`config/airflow/dags.yaml`, editable in the trigger form) up to its target of
*free* entries with `pipeline.steps.keypool.refill`.

Entries are generated inside the key store on every core of the worker, kept
encrypted under the store's pool storage key, each used exactly once and
burned (never reused) when a claim is not settled.  One mapped task per pool,
one at a time (each already uses every core), in pool `hsm`.  XCom carries
counts only.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task
from cardprep_airflow import dagconfig
from cardprep_airflow.failures import fail_fast_on_permanent_errors
from cardprep_airflow.heap import settle_long_lived_heap
from cardprep_airflow.hooks import KeyStoreHook

CFG = dagconfig.load()
SECTION = CFG.section("icc_keypool")
POOL = str(CFG.section("card_batch").get("pool", "hsm"))
POOL_SCHEMA = {
    "type": "object",
    "required": ["algorithm", "target"],
    "additionalProperties": False,
    "properties": {
        "algorithm": {"enum": ["rsa", "sm2"]},
        "bits": {"type": ["integer", "null"], "minimum": 1024, "maximum": 1984},
        "exponent": {"enum": [3, 65537, None]},
        "target": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
    },
}


@dag(
    dag_id="icc_keypool",
    schedule=dagconfig.nightly(str(SECTION.get("schedule", "0 22 * * *"))),
    catchup=False,
    max_active_runs=1,
    default_args=CFG.default_args(),
    tags=["cardprep", "keys", "keypool"],
    doc_md=__doc__,
    params={
        "pools": Param(
            list(SECTION.get("pools") or []),
            type="array",
            items=POOL_SCHEMA,
            description="Pools to top up: algorithm, bits, exponent, target free entries.",
        ),
    },
)
def icc_keypool() -> None:
    @task
    def pools(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The pools to refill (the trigger form's list, validated by its schema)."""
        assert params is not None
        return [dict(p) for p in params["pools"]]

    @task(multiple_outputs=False, pool=POOL, max_active_tis_per_dagrun=1)
    def refill(spec: dict[str, Any]) -> dict[str, Any]:
        from pipeline.steps.keypool import refill as step  # noqa: PLC0415 (parse time)

        with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
            return step(
                settings,
                spec["algorithm"],
                spec.get("bits"),
                spec.get("exponent"),
                int(spec["target"]),
                store=store,
            )

    refill.expand(spec=pools())


icc_keypool()
settle_long_lived_heap()  # gc off Airflow's long-lived objects (cardprep_airflow/heap.py)
