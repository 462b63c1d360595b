#!/usr/bin/env bash
# Session 25 on the GPU machine (issue 8): the gate+up GEMM that writes down_proj's static INT4 codes.
#   test   the fused-epilogue tests on CUDA (sliced, pointer, Gluon) and the GEMM tests its kernels share
#   mlp    bench_mlp_static.py: the static W4A4 MLP against BF16 at 1, 16 and 8192 tokens, 8B and 70B (acceptance 2, 3)
#   STEPS="test mlp" bash scripts/gpu_session25.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-test mlp}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      for sel in "tests/test_w4a4_swiglu.py" "tests/test_w4a4_gemm.py -k 'gluon or sliced or few_token'"; do
        echo "--- $sel"
        eval timeout 200 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -4
      done ;;
    mlp)
      timeout 330 python3 benchmarks/bench_mlp_static.py --m 1,16,8192 --shapes 8b,70b --sweep \
        --json "$OUT/mlp_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done
