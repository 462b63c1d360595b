#!/usr/bin/env bash
# Session 20 on the GPU machine (issue 8, acceptance 3): programmatic dependent launch of the decode GEMMs
# (the GEMM launches while the quantize before it runs, and waits for its codes).
#   test   the programmatic-launch race test (eager and CUDA graph), the few-token GEMM, gated-quantize and
#          one-token deploy tests on CUDA
#   gemm   bench_w4a4_gemm.py on LLaMA-3-8B at M = 1, 16 with --gated, and 70B gate+up; each decode row also
#          times the whole linear with and without programmatic launch (same run)
#   sweep  8B at M = 1, 16 with --sweep over dp4a and sliced configs (the four fastest as whole linears, both ways)
#   sweep70  the same for 70B gate+up
#   samples  the decode rows (8B, 70B gate+up; M = 1, 16) timed with samples of >= 0.2 ms and of >= 2 ms, back to
#            back: how much of a short sample is the graph replay's own start
#   prefill  the quantize kernels now release their dependents: plain quantize bandwidth and the whole linear at
#            M = 8192 (with --gated), to show prefill is unchanged
#   STEPS="test gemm" bash scripts/gpu_session20.sh
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
    samples)
      for us in 200 2000; do
        FPTQ_MIN_SAMPLE_US=$us timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 1,16 \
          --json "$OUT/gemm_8b_sample$us.json" | grep -E "^ +8b|programmatic"
        FPTQ_MIN_SAMPLE_US=$us timeout 120 python3 benchmarks/bench_w4a4_gemm.py --shapes 70b --layers gate_up \
          --m 1,16 --json "$OUT/gemm_70b_sample$us.json" | grep -E "^ +70b|programmatic"
      done ;;
    prefill)
      timeout 200 python3 benchmarks/bench_quantize.py --m 8192,32768 --k 576,1536,4096,14336,28672 \
        --json "$OUT/quantize.json" | tail -14
      timeout 300 python3 benchmarks/bench_w4a4_gemm.py --m 8192 --gated --json "$OUT/gemm_8b_prefill.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
