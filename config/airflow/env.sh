# Source this file (bash) to run cardprep's Airflow on one machine:
#     source config/airflow/env.sh
# It sets paths and configuration through AIRFLOW__* variables and the
# committed, secret-free config/airflow/cardprep.cfg.  The Fernet key, API
# secret key and JWT secret are generated once per AIRFLOW_HOME into
# $AIRFLOW_HOME/secrets.env (mode 600, under var/, which git ignores) and
# exported from there: they never enter the repository.
# shellcheck shell=bash

CARDPREP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARDPREP_ROOT
export AIRFLOW_HOME="${AIRFLOW_HOME:-$CARDPREP_ROOT/var/airflow}"
export AIRFLOW_CONFIG="$CARDPREP_ROOT/config/airflow/cardprep.cfg"
export AIRFLOW__CORE__DAGS_FOLDER="$CARDPREP_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$CARDPREP_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
# Cores of this machine: parallelism near the core count (default 32 idle workers).
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$(nproc 2>/dev/null || echo 2)}"
# `airflow standalone` starts its parts as `airflow` through PATH.
export PATH="$CARDPREP_ROOT/.venv/bin:$PATH"
# Relative paths in config/settings.yaml resolve against the repository root.
export CARDPREP_SETTINGS="${CARDPREP_SETTINGS:-$CARDPREP_ROOT/config/settings.yaml}"
unset PYTHONDONTWRITEBYTECODE

mkdir -p "$AIRFLOW_HOME"
chmod 700 "$AIRFLOW_HOME"
if [ ! -s "$AIRFLOW_HOME/secrets.env" ]; then
    (
        umask 077
        "$CARDPREP_ROOT/.venv/bin/python" - > "$AIRFLOW_HOME/secrets.env" <<'PY'
import base64, secrets
print("AIRFLOW__CORE__FERNET_KEY=" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
print("AIRFLOW__API__SECRET_KEY=" + secrets.token_urlsafe(32))
print("AIRFLOW__API_AUTH__JWT_SECRET=" + secrets.token_urlsafe(32))
PY
    )
fi
set -a
# shellcheck disable=SC1091
. "$AIRFLOW_HOME/secrets.env"
set +a
