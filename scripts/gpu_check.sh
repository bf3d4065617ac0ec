#!/usr/bin/env bash
# The GPU checks of the CUDA / bfloat16 path, for a machine with a CUDA device (never part of CI):
# the gpu-marked tests, then the throughput benchmarks on both embedded models in bfloat16.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (needs the venv from scripts/setup.sh with a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-check}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')"
"$PY" -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/pytest-gpu.txt"
for m in smollm2-135m gemma3-270m; do
  "$PY" perf/bench_counterfact_eval.py --model $m --device cuda --dtype bfloat16 --cases 100 --batch-size 64 \
    2>&1 | tee "$OUT/bench-counterfact-$m.txt"
  "$PY" perf/bench_utility.py --model $m --device cuda --dtype bfloat16 --batch-size 64 2>&1 | tee "$OUT/bench-utility-$m.txt"
done
