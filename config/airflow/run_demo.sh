#!/usr/bin/env bash
# The demo through the real Airflow DAG, on the embedded defaults: SQLite
# metadata database, the soft key store with public TEST keys, a generated
# sample issuer file.  Run from anywhere:
#
#     bash config/airflow/run_demo.sh            # CARDS=600 SHARD_SIZE=300 by default
#
# Steps: set-up if needed -> Airflow env (config/airflow/env.sh; AIRFLOW_HOME
# defaults to var/airflow, secrets generated there, never in git) ->
# `airflow db migrate` -> pool `hsm` -> demo key store if missing -> sample
# file in the demo issuer's inbound folder -> `airflow dags test
# card_batch_demo` (the same DAG the scheduler runs) -> batch summary and
# where the report is.  Airflow's own output goes to a log file under
# $AIRFLOW_HOME/demo/ (it is verbose, and `dags test` prints task output
# unmasked: our tasks never log a secret, but keep that file private).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CARDS="${CARDS:-600}"
# >= 2 x batch.chunk_size (256) so each shard's process pool uses both cores.
SHARD_SIZE="${SHARD_SIZE:-300}"

if [ ! -x .venv/bin/airflow ]; then
    bash tests/setup.sh
fi
# shellcheck source=config/airflow/env.sh
source config/airflow/env.sh
log_dir="$AIRFLOW_HOME/demo"
mkdir -p "$log_dir"
stamp="$(date -u +%Y%m%dT%H%M%S)"
log="$log_dir/card_batch_demo-$stamp.log"

elapsed() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
now() { date +%s.%N; }

t0="$(now)"
airflow db migrate >"$log" 2>&1
t1="$(now)"
airflow pools set hsm 2 "cardprep: concurrent key store / HSM sessions" >>"$log" 2>&1
echo "airflow: metadata DB ready in $(elapsed "$t0" "$t1") s (airflow db migrate), AIRFLOW_HOME=$AIRFLOW_HOME"

# Demo key store (TEST keys) if missing, and a sample file in the inbound folder.
sample="$(python - "$CARDS" <<'PY'
import sys
from datetime import UTC, datetime
from pipeline.keys import open_store
from pipeline.keys.demo import check_demo_store, init_demo_store
from pipeline.keys.settings import load_settings
from pipeline.records.issuers import load_issuer
from pipeline.records.sample import write_sample
from pipeline.steps.context import batch_settings

settings = load_settings()
if settings.is_production:
    sys.exit("run_demo.sh: the demo runs only with environment: demo")
ks = settings.key_store
if not ks.path.exists():
    print(f"key store: initialising the demo store (TEST keys only) at {ks.path}", file=sys.stderr)
    ks.path.parent.mkdir(parents=True, exist_ok=True)
    init_demo_store(ks.path, passphrase_file=ks.passphrase_file, audit_path=ks.audit_path).close()
bs = batch_settings(settings)
store = open_store(settings)
try:  # a store from an earlier keys.yaml would reject every card of the sample (R071)
    check_demo_store(store, bs.config_dir / "demo" / "keys.yaml")
except Exception as exc:
    sys.exit(f"run_demo.sh: {exc}")
finally:
    store.close()
issuer = load_issuer("demo", bs.config_dir)
inbound = bs.inbound(issuer.id, issuer.inbound)
stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
s = write_sample("demo", int(sys.argv[1]), inbound / f"demo-airflow-{stamp}.dat",
                 error_rate=0.02, config_dir=bs.config_dir)
print(f"sample: {s.path} ({s.records} records, {len(s.expected_rejects)} with injected errors)",
      file=sys.stderr)
print(s.path.name)
PY
)"

echo "airflow: dags test card_batch_demo (file $sample, shard size $SHARD_SIZE); log: $log"
t2="$(now)"
if ! airflow dags test card_batch_demo -c "{\"file\": \"$sample\", \"shard_size\": $SHARD_SIZE}" \
        >>"$log" 2>&1; then
    echo "run_demo.sh: the DAG run failed; the end of the log:" >&2
    grep -E "AirflowFailException|Error|error" "$log" | tail -n 5 >&2 || true
    exit 1
fi
t3="$(now)"
echo "airflow: card_batch_demo succeeded in $(elapsed "$t2" "$t3") s (airflow dags test, wall)"

python - "$sample" <<'PY'
import json
import sys
from pipeline.cli.batch import format_summary
from pipeline.io.paths import batch_id_for, sha256_file
from pipeline.keys.settings import load_settings
from pipeline.records.issuers import load_issuer
from pipeline.steps.context import batch_settings

bs = batch_settings(load_settings())
issuer = load_issuer("demo", bs.config_dir)
source = bs.inbound(issuer.id, issuer.inbound) / sys.argv[1]
paths = bs.paths("demo", batch_id_for(sha256_file(source)))
report = json.loads(paths.report_json.read_text(encoding="utf-8"))
summary = {
    **report,
    "per_reason": {r["code"]: r["count"] for r in report.get("reasons", [])},
    "keys": {k["ref"]: k["kcv"] for k in report.get("keys", [])},
    "manifest": str(paths.manifest),
    "bureau_file": str(paths.bureau_file),
    "report_html": str(paths.report_html),
}
print(format_summary(summary))
print(f"  next: cardprep verify {paths.base}")
PY
