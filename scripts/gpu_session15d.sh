#!/usr/bin/env bash
# Session 15, fourth GPU call: the marginal M = 16 shapes (8B qkv, down) swept again with long-K tiles; the whole
# 8B-shaped model decoding at batch 8 and 16 with the new default.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== sweep, 8B qkv and down $(date +%T)"
  timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 16 --layers down,qkv --sweep --sweep-kinds sliced \
    --json "$OUT/sliced_down_qkv.json"
  echo "=== model, batch 8 and 16 $(date +%T)"
  timeout 340 python3 benchmarks/bench_model.py --shape 8b --layers 32 --batches 8,16 --steps 64 --profile-batch 16 \
    --json "$OUT/model_8b_32layers_b8_b16.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
