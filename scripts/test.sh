#!/usr/bin/env bash
# README command 2: set up a virtual environment with the test extra and run every check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -m pip install --quiet --no-deps -r requirements-foreign.txt
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
