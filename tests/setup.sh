#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): system packages, uv, and the
# project's locked virtual environment in .venv.  Called by the README's two
# commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON="${UV_PYTHON:-python3.11}"
export UV_COMPILE_BYTECODE=1

# SoftHSM2 backs the PKCS#11 key store tests.
if ! command -v softhsm2-util >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
    else
        echo "setup: softhsm2 is missing; install it (apt-get install softhsm2)" >&2
    fi
fi

if ! command -v uv >/dev/null 2>&1; then
    python3.11 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi

uv sync --locked --all-extras --compile-bytecode --quiet

# The native SM2 point arithmetic (pipeline/crypto/native/sm2_curve.c, a CFFI
# extension); without it the same results come from the slower Python code.
if ! command -v cc >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi
if ! .venv/bin/python -m pipeline.crypto._sm2_native_build >/dev/null; then
    # the demo still runs (the same results from Python, slower); the test suite
    # fails on purpose (tests/unit/crypto/test_sm2_native.py)
    echo "setup: the native SM2 extension did not build (a C compiler and the Python" \
         "headers are needed); SM2 runs in Python" >&2
fi
