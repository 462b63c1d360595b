#!/usr/bin/env bash
# Session 21 on the GPU machine (issue 8, acceptance 3): the decode GEMMs unpack each nibble as 16·v
# (and+shift, no offset correction), and dp4a's loads lose their masks where K divides into steps.
#   test   the few-token GEMM (dp4a, sliced), programmatic-launch, gated-quantize and one-token deploy tests on CUDA
#   gemm   bench_w4a4_gemm.py on LLaMA-3-8B at M = 1, 16 with --gated, and 70B gate+up (default configs, whole
#          linear with and without programmatic launch)
#   sweep  8B at M = 1, 16 with --sweep over dp4a and sliced configs (offset, signed and x16 nibbles for dp4a)
#   sweep70  the same for 70B gate+up
#   prefill  plain quantize bandwidth and the whole linear at M = 8192 (with --gated)
#   STEPS="test gemm" bash scripts/gpu_session21.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-test gemm}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_programmatic_launch.py \
        tests/test_w4a4_gemm.py tests/test_gated_quantize.py tests/test_deploy.py \
        -k "programmatic or launch or few_token or dp4a or sliced or small_m or gated or one_token or swiglu" \
        2>&1 | tail -4 ;;
    gemm)
      timeout 300 python3 benchmarks/bench_w4a4_gemm.py --m 1,16 --gated --json "$OUT/gemm_8b.json"
      timeout 120 python3 benchmarks/bench_w4a4_gemm.py --shapes 70b --layers gate_up --m 1,16 \
        --json "$OUT/gemm_70b.json" ;;
    sweep)
      timeout 400 python3 benchmarks/bench_w4a4_gemm.py --m 1,16 --sweep --sweep-kinds dp4a,sliced \
        --json "$OUT/gemm_8b_sweep.json" ;;
    sweep70)
      timeout 200 python3 benchmarks/bench_w4a4_gemm.py --shapes 70b --layers gate_up --m 1,16 --sweep \
        --sweep-kinds dp4a,sliced --json "$OUT/gemm_70b_sweep.json" ;;
    prefill)
      timeout 200 python3 benchmarks/bench_quantize.py --m 8192,32768 --k 576,1536,4096,14336,28672 \
        --json "$OUT/quantize.json" | tail -14
      timeout 300 python3 benchmarks/bench_w4a4_gemm.py --m 8192 --gated --json "$OUT/gemm_8b_prefill.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
