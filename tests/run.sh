#!/usr/bin/env bash
# The test command: set-up, then every quality gate.  Exits non-zero on the
# first failing gate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
unset PYTHONDONTWRITEBYTECODE

echo "== ruff"
ruff check .
echo "== mypy --strict pipeline"
mypy
echo "== import contracts"
lint-imports --no-cache
echo "== pytest"
python -m pytest "$@"
