#!/usr/bin/env bash
# The CUDA path in one run (under 8 minutes on one GPU): correctness against the CPU, then training,
# mask and evaluation throughput as ratios to bare loops; see bench/gpu.py. Pass --device cpu for a
# smoke test on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" bench/gpu.py "$@"
