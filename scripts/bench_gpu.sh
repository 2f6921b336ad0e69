#!/usr/bin/env bash
# The GPU checks and benchmarks in one command (about 3 minutes on one H100/H200): the CUDA tests, then
# scripts/bench_gpu.py (assignment, Lloyd, fused kernels, MFCC, end to end), scripts/bench_ssl.py (HuBERT-base
# features, fp32 and bf16) and scripts/bench_train_encoder.py (train_encoder=base steps, fp32 and bf16; ~1 min).
# Usage: scripts/bench_gpu.sh [OUTPUT_DIR] [extra bench_gpu.py flags, e.g. --skip-end-to-end]
# SSL_FLAGS (environment): extra bench_ssl.py flags, e.g. --synthetic where no audio library is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench_results}
shift || true
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
"$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_quantize.py tests/test_kmeans.py || echo "GPU TESTS FAILED"
"$PY" scripts/bench_gpu.py --json "$OUT_DIR/bench_gpu.json" "$@"
# shellcheck disable=SC2086
"$PY" scripts/bench_ssl.py --device cuda --minutes 10 --json "$OUT_DIR/bench_ssl_gpu.json" ${SSL_FLAGS:-}
PYTHONPATH="scripts:$PYTHONPATH" "$PY" scripts/bench_train_encoder.py --device cuda --json "$OUT_DIR/bench_train_encoder_gpu.json"
