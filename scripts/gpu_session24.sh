#!/usr/bin/env bash
# Session 24 on the GPU machine (issue 8).
#   test    the few-token GEMM tests and the programmatic-launch tests on CUDA (the preloading configs among them)
#   decode  bench_w4a4_gemm.py at 1 and 16 tokens: every decode config's whole linear in each launch mode, the
#           sliced configs also with one and two steps of weights read before the wait (acceptance 3)
#   gated   tilings of the gated block Hadamard quantize at M = 8192 and 32768 (acceptance 4)
#   heads   tilings of 9×64 head mixing with float32 numerics at M = 8192 (acceptance 4)
#   large   tilings of 112×128 at M = 8192 (acceptance 4)
#   ahead   SmolLM2's one-block rows with the next steps read ahead into registers (tilings_ahead.json), dynamic at
#           M = 8192 and 32768, static at 8192 (acceptance 4)
#   tq      every default at M = 8192 and 32768, dynamic (the other kernel timed beside it); tq_static: static at 8192
#   mlp32x48  SmolLM2's 32×48 (columns padded to 64) in the batched kernel, with and without a step read ahead
#   decode16  the 16-token whole linears of o, gate+up and down again, in every launch mode (acceptance 3)
#   STEPS="test decode" bash scripts/gpu_session24.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-test decode}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      timeout 300 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_w4a4_gemm.py \
        tests/test_programmatic_launch.py tests/test_kernels.py \
        -k "few_token or sliced or programmatic or launched_early or batched" 2>&1 | tail -6 ;;
    test3)  # one file at a time, each with its summary
      for sel in "tests/test_programmatic_launch.py" "tests/test_kernels.py -k one_block_rows" \
                 "tests/test_kernels.py -k 'rows_of_blocks_match or refuses'" \
                 "tests/test_w4a4_gemm.py -k 'few_token or sliced'"; do
        echo "--- $sel"
        eval timeout 240 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -3
      done ;;
    test4)  # the deploy paths and the other transform-quantize tests with the new defaults
      for sel in "tests/test_deploy.py -k 'flatquant or online_transform or round_trip or fused or siblings'" \
                 "tests/test_kernels.py -k 'kron or transform or head_mixing or hadamard and not one_block_rows'"; do
        echo "--- $sel"
        eval timeout 280 python3 -m pytest -o addopts=\"\" -q -p no:cacheprovider "$sel" 2>&1 | tail -3
      done ;;
    heads32)  # 9×64 head mixing with float32 numerics: a step read ahead with fewer programs an SM
      timeout 100 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases 9x64:heads \
        --tilings "$(cat scripts/tilings_heads_f32.json)" --json "$OUT/tq_heads32.json"
      timeout 100 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases 9x64:heads \
        --tilings "$(cat scripts/tilings_heads_f32.json)" --json "$OUT/tq_heads32_static.json" ;;
    tq32)
      timeout 100 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases 32x48:kron-bf16,24x24:kron-bf16 \
        --json "$OUT/tq32.json"
      timeout 100 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases 32x48:kron-bf16 \
        --json "$OUT/tq32_static.json" ;;
    test2)  # what test's five minutes did not reach in call 3, and the deploy tests of the transform quantize
      timeout 300 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_kernels.py tests/test_deploy.py \
        -k "batched or one_block or transform_quantize or head_mixing or fused" 2>&1 | tail -6 ;;
    tq)
      ALL=24x24:kron-bf16,9x64:heads-bf16,9x64:heads,32x48:kron-bf16,64x64:kron-bf16,112x128:kron-bf16
      ALL=$ALL,16x32:hadamard,16x32:hadamard-gated
      timeout 220 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases $ALL --json "$OUT/tq.json" ;;
    tq_static)
      timeout 150 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases \
        24x24:kron-bf16,9x64:heads-bf16,9x64:heads,32x48:kron-bf16 --json "$OUT/tq_static.json" ;;
    mlp32x48)
      timeout 120 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases 32x48:kron-bf16 \
        --tilings "$(cat scripts/tilings_32x48.json)" --json "$OUT/tq_32x48.json" ;;
    decode)
      timeout 300 python3 benchmarks/bench_w4a4_gemm.py --m 1,16 --json "$OUT/decode.json" ;;
    gated)
      timeout 150 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases 16x32:hadamard-gated \
        --tilings "$(cat scripts/tilings_gated.json)" --json "$OUT/tq_gated.json" ;;
    heads)
      timeout 120 python3 benchmarks/bench_transform_quantize.py --m 8192 --cases 9x64:heads \
        --tilings "$(cat scripts/tilings_small_warps.json)" --json "$OUT/tq_heads.json" ;;
    large)
      timeout 150 python3 benchmarks/bench_transform_quantize.py --m 8192 --cases 112x128:kron-bf16 \
        --tilings "$(cat scripts/tilings_large.json)" --json "$OUT/tq_large.json" ;;
    ahead)
      CASES=24x24:kron-bf16,9x64:heads-bf16,9x64:heads
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases $CASES \
        --tilings "$(cat scripts/tilings_ahead.json)" --json "$OUT/tq_ahead.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases $CASES \
        --tilings "$(cat scripts/tilings_ahead.json)" --json "$OUT/tq_ahead_static.json" ;;
    decode16)
      timeout 200 python3 benchmarks/bench_w4a4_gemm.py --m 16 --layers o,gate_up,down --json "$OUT/decode16.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
