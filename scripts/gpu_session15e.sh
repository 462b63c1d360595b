#!/usr/bin/env bash
# Session 15, last GPU call: the sliced kernel's tests and the small-M switch on CUDA at the final commit; 8B qkv and
# down at M = 16 with the defaults once more; the batch-16 decode profile with the sliced kernel counted as W4A4 GEMM.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== tests $(date +%T)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py -k "sliced or switch or dp4a" 2>&1 | tail -5
  echo "=== defaults, 8B qkv and down $(date +%T)"
  timeout 100 python3 benchmarks/bench_w4a4_gemm.py --m 16 --layers qkv,down --json "$OUT/defaults_qkv_down.json"
  echo "=== model, batch 16 $(date +%T)"
  timeout 250 python3 benchmarks/bench_model.py --shape 8b --layers 32 --batches 16 --steps 64 --profile-batch 16 \
    --json "$OUT/model_8b_32layers_b16.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
