#!/usr/bin/env bash
# Session 15, third GPU call: the shipped defaults (no sweep) at M = 16 and 8, twice, on the LLaMA-3-8B and 70B layers;
# the dp4a/sliced crossover at M = 2 and 4 (both swept). GEMM tests on CUDA first.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== tests $(date +%T)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py 2>&1 | tail -5
  for rep in 1 2; do
    echo "=== defaults, repeat $rep $(date +%T)"
    timeout 100 python3 benchmarks/bench_w4a4_gemm.py --m 16,8 --json "$OUT/defaults_8b_$rep.json"
    timeout 100 python3 benchmarks/bench_w4a4_gemm.py --m 16,8 --shapes 70b --json "$OUT/defaults_70b_$rep.json"
  done
  echo "=== crossover $(date +%T)"
  timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 4,2 --sweep --sweep-kinds sliced,dp4a --json "$OUT/crossover_8b.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
