#!/usr/bin/env bash
# Session 14 on the GPU machine (issue 8, acceptance 2 and 4): the bf16-pair transform + quantize kernel and the
# conversion-free INT4 rounding, checked (kernel tests on CUDA) and timed; the whole W4A4 linear at prefill with
# them. Writes JSON and a log to $OUT.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
{
  echo "=== tests $(date +%T)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_w4a4_gemm.py 2>&1 | tail -15
  for rep in 1 2; do
    echo "=== tq defaults, repeat $rep $(date +%T)"
    timeout 150 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --json "$OUT/tq_defaults_$rep.json"
  done
  echo "=== quantize $(date +%T)"
  timeout 100 python3 benchmarks/bench_quantize.py --m 8192,32768 --k 576,1536,4096,14336,28672 --json "$OUT/quantize.json"
  echo "=== whole linear, prefill $(date +%T)"
  timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 8192 --json "$OUT/gemm_prefill.json"
  echo "=== done $(date +%T)"
} 2>&1 | tee "$OUT/run.log"
