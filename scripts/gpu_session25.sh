#!/usr/bin/env bash
# Session 25 on the GPU machine (issue 8): the gate+up GEMM that writes down_proj's static INT4 codes.
#   test   the fused-epilogue tests on CUDA (sliced, pointer, Gluon) and the GEMM tests its kernels share
#   mlp    bench_mlp_static.py: the static W4A4 MLP against BF16 at 1, 16 and 8192 tokens, 8B and 70B (acceptance 2, 3)
#   mlp2   the same without the sweep, the picks as shipped after call 1, and 8B at 2, 4 and 8 tokens too
#   test3  the SwiGLU kernel tests again (ragged Gluon case) and the deploy MLP tests on CUDA
#   mlp3   the MLP bench once more at 4, 16 and 8192 tokens (a second sample of the figures)
#   sweep16  the fused gate+up at 8 and 16 tokens in every sliced config (whole tiles), with and without preload
#   tq_f32   the float32-numerics transform quantizes (P1's lo product added after, not chained), with their tests
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
    mlp2)
      timeout 200 python3 benchmarks/bench_mlp_static.py --m 1,2,4,8,16,8192 --shapes 8b --json "$OUT/mlp_8b.json"
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,16,8192 --shapes 70b --json "$OUT/mlp_70b.json" ;;
    test_gluon)
      timeout 120 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_w4a4_swiglu.py 2>&1 | tail -4 ;;
    test3)
      for sel in "tests/test_w4a4_swiglu.py" "tests/test_deploy.py -k 'static_down_input or swiglu_product or round_trip'"; do
        echo "--- $sel"
        eval timeout 200 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -4
      done ;;
    mlp3)
      timeout 250 python3 benchmarks/bench_mlp_static.py --m 4,16,8192 --shapes 8b,70b --json "$OUT/mlp3.json" ;;
    sweep16)
      timeout 300 python3 benchmarks/bench_mlp_static.py --m 8,16 --shapes 8b --sweep --json "$OUT/sweep16_8b.json" | grep -v "^ " 
      timeout 200 python3 benchmarks/bench_mlp_static.py --m 16 --shapes 70b --sweep --json "$OUT/sweep16_70b.json" | grep -v "^ " ;;
    tq_f32)
      timeout 150 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_kernels.py \
        -k "head_mixing or one_block_rows or rows_of_blocks_match" 2>&1 | tail -3
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 \
        --cases 9x64:heads,9x64:heads-bf16,24x24:kron,32x48:kron,112x128:kron --json "$OUT/tq_f32.json"
      timeout 100 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases 9x64:heads \
        --json "$OUT/tq_f32_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done
