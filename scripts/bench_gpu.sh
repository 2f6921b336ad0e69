#!/usr/bin/env bash
# The GPU benchmarks in one command (under 5 minutes on one H100): GPU tests, then scripts/bench_gpu.py.
# Usage: scripts/bench_gpu.sh [output.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_quantize.py tests/test_kmeans.py
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PY" scripts/bench_gpu.py --json "${1:-bench_gpu.json}"
