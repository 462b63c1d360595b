#!/usr/bin/env bash
# Session 15 on the GPU machine (issue 8, acceptance 3 at M = 16): the sliced few-token tensor-core kernel.
# Each device call ran one step; JSON and a log go to $OUT. Steps:
#   first     GEMM tests on CUDA; first sweep of sliced and dp4a at M = 16, 8, 2 (8B layers, 70B gate+up)
#   sweep     the wider sliced sweep at M = 16 and 8 (8B), 16 (70B)
#   defaults  the shipped defaults twice (M = 16, 8; 8B and 70B); the dp4a/sliced crossover at M = 4, 2
#   marginal  8B qkv and down swept again with long-K tiles; the 8B-shaped model decoding at batch 8 and 16
#   final     the sliced/switch/dp4a tests on CUDA; qkv and down defaults; the batch-16 decode profile
#   STEPS="first sweep defaults marginal final" bash scripts/gpu_session15.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
BENCH="python3 benchmarks/bench_w4a4_gemm.py"
for step in ${STEPS:-final}; do
  echo "=== $step $(date +%T)"
  case $step in
    first)
      timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py 2>&1 | tail -15
      timeout 240 $BENCH --m 16,8,2 --sweep --sweep-kinds sliced,dp4a --json "$OUT/decode_8b.json"
      timeout 120 $BENCH --m 16,8 --shapes 70b --layers gate_up --sweep --sweep-kinds sliced,dp4a \
        --json "$OUT/decode_70b.json" ;;
    sweep)
      timeout 330 $BENCH --m 16,8 --sweep --sweep-kinds sliced --json "$OUT/sliced_8b.json"
      timeout 150 $BENCH --m 16 --shapes 70b --sweep --sweep-kinds sliced --json "$OUT/sliced_70b.json" ;;
    defaults)
      timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py 2>&1 | tail -5
      for rep in 1 2; do
        timeout 100 $BENCH --m 16,8 --json "$OUT/defaults_8b_$rep.json"
        timeout 100 $BENCH --m 16,8 --shapes 70b --json "$OUT/defaults_70b_$rep.json"
      done
      timeout 200 $BENCH --m 4,2 --sweep --sweep-kinds sliced,dp4a --json "$OUT/crossover_8b.json" ;;
    marginal)
      timeout 200 $BENCH --m 16 --layers down,qkv --sweep --sweep-kinds sliced --json "$OUT/sliced_down_qkv.json"
      timeout 340 python3 benchmarks/bench_model.py --shape 8b --layers 32 --batches 8,16 --steps 64 \
        --profile-batch 16 --json "$OUT/model_8b_32layers_b8_b16.json" ;;
    final)
      timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py -k "sliced or switch or dp4a or few_token" \
        2>&1 | tail -5
      timeout 100 $BENCH --m 16 --layers qkv,down --json "$OUT/defaults_qkv_down.json"
      timeout 250 python3 benchmarks/bench_model.py --shape 8b --layers 32 --batches 16 --steps 64 --profile-batch 16 \
        --json "$OUT/model_8b_32layers_b16.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
