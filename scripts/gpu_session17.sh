#!/usr/bin/env bash
# Session 17 on the GPU machine (issue 8). Each device call runs one step; JSON and a log go to $OUT.
#   (packed   calls 1-3: the Gluon prefill GEMM on packed weights unpacked in shared memory, a reverted
#             experiment: docs/results/2026-11-24-session17/call3_gluon_inkernel_unpack.diff.txt; the step ran
#             the Gluon GEMM tests and `bench_w4a4_gemm.py --m 8192 --sweep --sweep-kinds gemm`)
#   tq        fused transform + quantize (acceptance 4) with factors bfloat16 holds exactly (no lo dots) and the
#             block Hadamard as ±2^-j factors and a gain: the kernel tests on CUDA, then the default tiling at
#             M = 8192 and 32768 (dynamic scales), and M = 8192 with a static scale
#   STEPS="tq" bash scripts/gpu_session17.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
for step in ${STEPS:-tq}; do
  echo "=== $step $(date +%T)"
  case $step in
    tq)
      timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -4
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m ${TQ_M:-8192,32768} --json "$OUT/tq.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --json "$OUT/tq_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
