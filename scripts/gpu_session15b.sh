#!/usr/bin/env bash
# Session 15, second GPU call: the sliced kernel's wider sweep at M = 16 and 8 (LLaMA-3-8B layers, 70B gate+up).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== decode sweep, 8B $(date +%T)"
  timeout 330 python3 benchmarks/bench_w4a4_gemm.py --m 16,8 --sweep --sweep-kinds sliced --json "$OUT/sliced_8b.json"
  echo "=== decode sweep, 70B gate+up $(date +%T)"
  timeout 150 python3 benchmarks/bench_w4a4_gemm.py --m 16 --shapes 70b --sweep --sweep-kinds sliced --json "$OUT/sliced_70b.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
