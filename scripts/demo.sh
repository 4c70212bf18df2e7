#!/usr/bin/env bash
# README command 1: set up a virtual environment, install xcit-edge, and run the main job.
# 1. XCiT nano (seeded weights, the embedded default) as a SavedModel, converted to every target
#    (each artifact run once with its runtime's defaults and checked against the SavedModel).
# 2. The trained fixture (tests/fixtures, a 4-block XCiT trained on ten synthetic shape classes):
#    converted to every target, then every artifact validated in its own runtime on 500 held-out
#    images against the SavedModel, with the report (report.md / .json / single-file .html).
#    Its outputs mean something, so every verdict must be `pass`: validate's exit code is the demo's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
OUT=${OUT:-demo-out}
X=.venv/bin/xcit-edge
$X build xcit_nano_12_p16_224 --seed 0 --out "$OUT/xcit_nano_12_p16_224" --force
$X inspect "$OUT/xcit_nano_12_p16_224"
$X convert "$OUT/xcit_nano_12_p16_224" --target all --calibration sample --out "$OUT/nano-artifacts" --force

$X build xcit_fixture_4_p8_64 --weights tests/fixtures/xcit_fixture_4_p8_64.safetensors --out "$OUT/fixture" --force
.venv/bin/python scripts/make_sample.py --out "$OUT/held-out" --per-class 50 --seed 11
$X convert "$OUT/fixture" --target all --calibration sample --out "$OUT/artifacts" --force
$X validate "$OUT"/artifacts/* --source "$OUT/fixture" --calibration "$OUT/held-out" --report "$OUT/report"
