"""
### card_batch_&lt;issuer&gt;: prepare an issuer's card files, nightly and when a file lands

One DAG per issuer in `config/issuers/*.yaml` (`card_batch_demo`,
`card_batch_demo-csv`, ...), so `max_active_runs=1` holds *per issuer*, each
issuer has its own schedule, asset and failure history, and one issuer's bad
file never blocks another's night.

**Runs** nightly (cron from `config/airflow/dags.yaml`, UTC) *and* whenever
the asset `cardprep_inbound_<issuer>` gets an event (the intake system posts
one over the REST API, `POST /api/v2/assets/events`, when it has delivered a
file).  A nightly run first waits for a file in the issuer's inbound folder
(sensor in *reschedule* mode: no worker slot is held while waiting; it gives
up quietly after the configured timeout: the run succeeds with nothing to
prepare; a broken configuration still fails it).

**Tasks**, each one call into `pipeline.steps` (the CLI `cardprep run` calls
the same functions):

1. `wait_for_files` - `detect`: new files (or the one named in `file`)
2. `verify_and_parse` (one per file) - header/trailer/hash total before any
   cryptography, validation, sealed staging; a published batch is refused
   unless `force` (then audited), except one whose reconcile was cut short
   (killed after the manifest): that run only finishes `reconcile`; a file
   whose header (issuer id, file date, file_seq) names a delivery already
   taken in as another batch (re-sent with other bytes) is refused too
   (`[duplicate_delivery]`, docs/INPUT.md "Deliveries"), unless `force`.
   In a sweep (`file` empty) such a refused file does not stop the others:
   they are published, and `summary` fails the run naming it and why
3. `plan_shards` - cut valid records into shards of `shard_size`
4. `prepare` (mapped, pool `hsm`) - one shard per task; a process pool uses
   every core of the worker
5. `publish` (one per batch) - reconcile lines, bureau file, rejects,
   MACed manifest written last
6. `reconcile` (one per batch) - recount from the files, audit event,
   report; `summary` prints where the reports are

**Idempotent**: the batch id is the file's SHA-256 prefix, outputs live
under it, the manifest is the commit marker; a retried or re-triggered run
resumes finished shards and never publishes a card twice.

**Params**: `issuer` (fixed per DAG), `file` (a name in the inbound folder;
empty = every new file), `shard_size`, `dry_run` (verify and validate only,
nothing written), `force` (re-prepare a published batch, or a re-sent
delivery; audited).

**Secrets**: the key store PIN comes from the Connection `cardprep_keystore`
and is handed to the key store only; XCom carries paths, counts, key labels
and KCVs; nothing here logs a PAN, a key or a PIN.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    Param,
    PokeReturnValue,
    dag,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cardprep_airflow import dagconfig
from cardprep_airflow.failures import fail_fast_on_permanent_errors, file_refusal_types
from cardprep_airflow.heap import settle_long_lived_heap
from cardprep_airflow.hooks import KeyStoreHook
from cardprep_airflow.inbound import resolve_inbound_file
from cardprep_airflow.xcom import as_list

CFG = dagconfig.load()
SECTION = CFG.section("card_batch")
WAIT = dict(SECTION.get("wait_for_files") or {})
POOL = str(SECTION.get("pool", "hsm"))
log = logging.getLogger(__name__)
POKE_SECONDS = int(WAIT.get("poke_interval_seconds", 300))
#: A nightly run waits this long for a file, then ends quietly with nothing to prepare.
QUIET_AFTER = int(WAIT.get("timeout_seconds", 21600))


def waited_seconds(started: datetime | None, now: datetime | None = None) -> float:
    """Seconds since ``started`` (the DAG run's start; 0 when unknown)."""
    if started is None:
        return 0.0
    return ((now or datetime.now(UTC)) - started).total_seconds()


def build(issuer: str) -> Any:
    """The card_batch DAG of one issuer."""
    inbound = Asset(name=f"cardprep_inbound_{issuer}", uri=f"cardprep://inbound/{issuer}")

    @dag(
        dag_id=f"card_batch_{issuer}",
        schedule=AssetOrTimeSchedule(
            timetable=dagconfig.nightly(str(SECTION.get("schedule", "30 1 * * *"))),
            assets=inbound,
        ),
        catchup=False,
        max_active_runs=1,
        default_args=CFG.default_args(),
        dagrun_timeout=timedelta(hours=12),
        tags=["cardprep", "batch", f"issuer:{issuer}"],
        doc_md=__doc__,
        params={
            "issuer": Param(
                issuer, type="string", enum=[issuer], description="Issuer (one DAG per issuer)."
            ),
            "file": Param(
                "",
                type="string",
                pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                description="File name in the issuer's inbound folder; empty: every new file.",
            ),
            "shard_size": Param(
                int(SECTION.get("shard_size", 5000)),
                type="integer",
                minimum=1,
                maximum=1_000_000,
                description="Valid cards per prepare task.",
            ),
            "dry_run": Param(
                False, type="boolean", description="Verify and validate only: nothing is written."
            ),
            "force": Param(
                False,
                type="boolean",
                description="Prepare an already published file, or a re-sent delivery "
                "(same header issuer id, file date and file_seq), again (audited).",
            ),
        },
    )
    def card_batch() -> None:
        @task.sensor(
            mode="reschedule",
            poke_interval=POKE_SECONDS,
            # a backstop only: the sensor ends the wait itself at QUIET_AFTER (below)
            timeout=QUIET_AFTER + 3 * POKE_SECONDS,
        )
        def wait_for_files(
            params: dict[str, Any] | None = None, dag_run: Any = None
        ) -> PokeReturnValue:
            """Files to prepare: the named one, else every new file (nightly runs wait for one).

            A nightly run that sees no file for ``timeout_seconds`` ends the wait
            with an empty list (nothing to prepare, a quiet success).  Not
            ``soft_fail``: that also turns every AirflowFailException raised
            here (a broken configuration) into a skip, and the run ended green
            with the reason lost.  A named file is checked by ``verify_and_parse``.
            """
            from pipeline.steps.detect import detect  # noqa: PLC0415 (parse time)

            assert params is not None
            if params["file"]:
                return PokeReturnValue(True, [params["file"]])
            with fail_fast_on_permanent_errors():
                files = detect(issuer, KeyStoreHook().settings())
            scheduled = dag_run is not None and str(dag_run.run_type) == "scheduled"
            if files or not scheduled:
                return PokeReturnValue(True, files)
            waited = waited_seconds(getattr(dag_run, "start_date", None))
            if waited >= QUIET_AFTER:
                log.info("issuer %s: no new file after %d s; nothing to prepare in this run",
                         issuer, waited)  # fmt: skip
                return PokeReturnValue(True, [])
            return PokeReturnValue(False, [])

        @task(multiple_outputs=False)
        def verify_and_parse(path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            """Check, validate and stage one file; in a sweep, refuse a bad file, not the run.

            A file named in ``file`` that fails its checks fails this task (the
            operator asked for that file).  In a sweep (``file`` empty), a file
            whose own content or delivery is refused (``file_refusal_types``)
            is logged and handed on as ``{"refused": ...}``: the other files
            are prepared and published, and ``summary`` then fails the run
            naming it.  Anything else (configuration, key store) fails here.
            """
            from pipeline.errors import BatchLockedError  # noqa: PLC0415
            from pipeline.steps.parse import verify_and_parse as step  # noqa: PLC0415

            assert params is not None
            if not os.path.isabs(path):  # a name from the trigger form
                with fail_fast_on_permanent_errors():
                    path = resolve_inbound_file(issuer, path, KeyStoreHook().settings())
            with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
                try:
                    return step(issuer, path, settings, force=params["force"],
                                stage=not params["dry_run"], store=store)  # fmt: skip
                except BatchLockedError:
                    raise  # another run holds the batch: retry later
                except file_refusal_types() as exc:
                    if params["file"]:
                        raise
                    reason = f"{type(exc).__name__}: {exc}"
                    log.error("file %s refused, the sweep goes on without it: %s",
                              os.path.basename(path), reason)  # fmt: skip
                    return {"refused": True, "input_name": os.path.basename(path),
                            "reason": reason}  # fmt: skip

        @task
        def plan_shards(
            parsed: list[dict[str, Any]], params: dict[str, Any] | None = None
        ) -> list[dict[str, Any]]:
            from pipeline.steps.plan import plan_shards as step  # noqa: PLC0415

            assert params is not None
            if params["dry_run"]:
                return []
            with fail_fast_on_permanent_errors():
                return [s for p in as_list(parsed) if not p.get("resume") and not p.get("refused")
                        for s in step(p, int(params["shard_size"]))]  # fmt: skip

        @task(
            multiple_outputs=False,
            pool=POOL,
            map_index_template="{{ task.op_kwargs['shard']['index'] }}",
        )
        def prepare(shard: dict[str, Any]) -> dict[str, Any]:
            from pipeline.steps.prepare import prepare_shard  # noqa: PLC0415

            with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
                return prepare_shard(shard, settings, store=store)

        @task(multiple_outputs=False, trigger_rule="none_failed")
        def publish(
            parsed: dict[str, Any],
            shard_results: list[dict[str, Any]] | None,
            params: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            from pipeline.steps.publish import publish as step  # noqa: PLC0415

            assert params is not None
            if parsed.get("refused"):
                raise AirflowSkipException(f"file {parsed['input_name']} was refused: "
                                           f"{parsed['reason']}")  # fmt: skip
            if params["dry_run"]:
                raise AirflowSkipException(
                    f"dry run: batch {parsed['batch_id']} verified "
                    f"({parsed['records']} records, {parsed['rejected']} rejected); not published"
                )
            if parsed.get("resume") == "reconcile":  # published before; reconcile finishes it
                return {"batch_id": parsed["batch_id"], "batch_dir": parsed["batch_dir"],
                        "resumed": "reconcile"}  # fmt: skip
            mine = [r for r in as_list(shard_results) if r["batch_id"] == parsed["batch_id"]]
            with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
                return step(parsed, mine, settings, force=params["force"], store=store)

        # none_failed: a refused file's publish is skipped, the others' batches still reconcile
        @task(multiple_outputs=False, trigger_rule="none_failed")
        def reconcile(published: dict[str, Any]) -> dict[str, Any]:
            from pipeline.steps.reconcile import reconcile as step  # noqa: PLC0415

            with fail_fast_on_permanent_errors(), KeyStoreHook().session() as (settings, store):
                return step(published, settings, store=store)

        @task(multiple_outputs=False, trigger_rule="none_failed")
        def summary(parsed: list[dict[str, Any]] | None,
                    reconciled: list[dict[str, Any]] | None) -> dict[str, Any]:  # fmt: skip
            """One line per batch: counts and where the report is (also the run's XCom).

            Fails the run when a sweep refused a file (after the others were
            published), naming each refused file and why.
            """
            batches = as_list(reconciled)
            for b in batches:
                log.info("batch %s: %d in = %d prepared + %d rejected; report %s",
                         b["batch_id"], b["counts"]["in"], b["counts"]["prepared"],
                         b["counts"]["rejected"], b["report_html"])  # fmt: skip
            files = as_list(parsed)
            refused = [p for p in files if p.get("refused")]
            checked = [{k: p[k] for k in ("batch_id", "records", "valid", "rejected")}
                       for p in files if not p.get("refused")]  # fmt: skip
            if not batches:
                log.info("no batch published in this run (%d file(s) checked)", len(checked))
            if refused:
                raise AirflowFailException(
                    f"{len(refused)} of {len(files)} file(s) refused "
                    f"({len(batches)} batch(es) published in this run): "
                    + "; ".join(f"{p['input_name']}: {p['reason']}" for p in refused)
                )
            return {"issuer": issuer, "published": batches, "checked": checked}

        files = wait_for_files()
        parsed = verify_and_parse.expand(path=files)
        shards = plan_shards(parsed)
        prepared = prepare.expand(shard=shards)
        published = publish.partial(shard_results=prepared).expand(parsed=parsed)
        shards >> published
        reconciled = reconcile.expand(published=published)
        summary(parsed, reconciled)

    return card_batch()


for _issuer in dagconfig.issuer_ids():
    globals()[f"card_batch_{_issuer.replace('-', '_')}"] = build(_issuer)
settle_long_lived_heap()  # gc off Airflow's long-lived objects (cardprep_airflow/heap.py)
