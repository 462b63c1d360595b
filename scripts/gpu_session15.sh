#!/usr/bin/env bash
# Session 15 on the GPU machine (issue 8, acceptance 3 at M = 16): the sliced few-token tensor-core kernel, checked
# (GEMM tests on CUDA) and swept against dp4a at M = 2, 8, 16 on the LLaMA-3-8B layers and 70B gate+up.
# Writes JSON and a log to $OUT.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== tests $(date +%T)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py 2>&1 | tail -15
  echo "=== decode sweep, 8B $(date +%T)"
  timeout 240 python3 benchmarks/bench_w4a4_gemm.py --m 16,8,2 --sweep --sweep-kinds sliced,dp4a --json "$OUT/decode_8b.json"
  echo "=== decode sweep, 70B gate+up $(date +%T)"
  timeout 120 python3 benchmarks/bench_w4a4_gemm.py --m 16,8 --shapes 70b --layers gate_up --sweep --sweep-kinds sliced,dp4a \
    --json "$OUT/decode_70b.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
