#!/usr/bin/env bash
# README command 2: set up a virtual environment with the test extra and run every check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -m pip install --quiet --no-deps -r requirements-foreign.txt
# The HTML report test opens the report in headless Chromium (Debian's package); installed when missing.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    { $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
        || echo "note: could not install chromium; the HTML report test will be skipped" >&2
fi
.venv/bin/ruff check .
# Two workers (XCIT_EDGE_TEST_WORKERS; 0 runs in this process): most of a conversion is single-threaded
# Python (tf2onnx's optimizers, graph rewriting), so two processes share 2 cores well (issue 16: 23 min
# of pytest in one process, 8 on two, clean clone, 2-core EPYC).
.venv/bin/python -m pytest -q -n "${XCIT_EDGE_TEST_WORKERS:-2}" --dist worksteal "$@"
