#!/usr/bin/env bash
# README command 1: set up a virtual environment, install xcit-edge, and run the main job
# on the embedded default: XCiT nano (seeded weights) as a SavedModel, converted to every
# target (calibrated on the shipped sample), each artifact checked in its own runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
OUT=${OUT:-demo-out}
.venv/bin/xcit-edge build xcit_nano_12_p16_224 --seed 0 --out "$OUT/xcit_nano_12_p16_224" --force
.venv/bin/xcit-edge inspect "$OUT/xcit_nano_12_p16_224"
.venv/bin/xcit-edge convert "$OUT/xcit_nano_12_p16_224" --target all --calibration sample \
    --out "$OUT/artifacts" --force
