#!/usr/bin/env bash
# Session 26 on the GPU machine (issue 8): the sliced decode GEMM at one to a few tokens.
#   probe   probe_sliced_tokens.py: sliced (rows past M masked), padded to 16 rows, dp4a; 8B and 70B layers
#   small   bench_w4a4_gemm.py whole linears at 1-4, 8 and 16 tokens, once per small-M kernel (sliced, dp4a)
#   mlp     bench_mlp_static.py at 1-4, 8 and 16 tokens: the fused gate+up epilogue against the unfused path
#   test    the sliced / few-token GEMM tests, the SwiGLU epilogue tests, the programmatic-launch tests and the
#           deploy MLP tests on CUDA
#   mlp2    the MLP bench again (8B at 1-4, 8, 16 tokens; 70B at 1, 2, 4, 16): a second sample, fused at every size
#   test2   after the dp4a SwiGLU epilogue: its tests and the deploy MLP tests on CUDA
#   mlp3    the MLP bench with the dp4a epilogue at 1-4 tokens (8B at 1-4, 8, 16 tokens; 70B at 1, 2, 4, 16)
#   mlp4    the MLP bench after the static scales stopped being filled every call (8B at 1, 4, 8, 16; 70B at 16)
#   final   q/k/v as one GEMM: the deploy tests on CUDA, the whole-model bench with and without (8B shapes, two
#           layers), then the GEMM and SwiGLU tests after _finish_tile
#   STEPS="probe small" bash scripts/gpu_session26.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-probe small}; do
  echo "=== $step $(date +%T)"
  case $step in
    probe)
      timeout 150 python3 benchmarks/probe_sliced_tokens.py --m 1,2,3,4,8,16 --layers qkv,o,gate_up,down \
        --json "$OUT/probe_8b.json"
      timeout 100 python3 benchmarks/probe_sliced_tokens.py --m 1,2,4,16 --shapes 70b --layers gate_up,down \
        --json "$OUT/probe_70b.json" ;;
    small)
      for kernel in sliced dp4a; do
        FPTQUANT_SMALL_M_KERNEL=$kernel timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 1,2,3,4,8 \
          --json "$OUT/small_$kernel.json" 2>&1 | grep -v "programmatic launch"
      done ;;
    mlp)
      timeout 200 python3 benchmarks/bench_mlp_static.py --m 1,2,3,4,8,16 --shapes 8b --json "$OUT/mlp_small.json" ;;
    mlp2)
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,2,3,4,8,16 --shapes 8b --json "$OUT/mlp2_8b.json"
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,2,4,16 --shapes 70b --json "$OUT/mlp2_70b.json" ;;
    test2)
      for sel in "tests/test_w4a4_swiglu.py" "tests/test_w4a4_gemm.py -k 'few_token'" \
                 "tests/test_deploy.py -k 'static_down_input or swiglu_product'"; do
        echo "--- $sel"
        eval timeout 200 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -4
      done ;;
    mlp3)
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,2,3,4,8,16 --shapes 8b --json "$OUT/mlp3_8b.json"
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,2,4,16 --shapes 70b --json "$OUT/mlp3_70b.json" ;;
    mlp4)
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,4,8,16 --shapes 8b --json "$OUT/mlp4_8b.json"
      timeout 100 python3 benchmarks/bench_mlp_static.py --m 16 --shapes 70b --json "$OUT/mlp4_70b.json"
      timeout 100 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_w4a4_swiglu.py 2>&1 | tail -2 ;;
    final)
      timeout 120 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_deploy.py \
        -k "qkv_run_one or siblings or static_down_input or round_trip or norms_are_fused" 2>&1 | tail -3
      timeout 200 python3 benchmarks/bench_model.py --shape 8b --layers 2 --batches 1,4,16 --steps 128 \
        --unmerged-qkv --profile-batch 0 --json "$OUT/model_qkv.json" 2>&1 | grep -v "^{"
      timeout 60 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_graphed_step.py 2>&1 | tail -2
      timeout 100 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_w4a4_swiglu.py \
        tests/test_w4a4_gemm.py -k "swiglu or sliced" 2>&1 | tail -2 ;;
    test)
      for sel in "tests/test_w4a4_gemm.py -k 'sliced or few_token'" "tests/test_w4a4_swiglu.py" \
                 "tests/test_programmatic_launch.py" \
                 "tests/test_deploy.py -k 'static_down_input or swiglu_product or fused_norm or round_trip'"; do
        echo "--- $sel"
        eval timeout 200 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -4
      done ;;
    *) echo "unknown step $step" ;;
  esac
done
