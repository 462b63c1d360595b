#!/usr/bin/env bash
# Session 16 on the GPU machine (issue 8, acceptance 2): the warp-specialized Gluon INT8 prefill GEMM.
# Each device call runs one step; JSON and a log go to $OUT. Steps:
#   prefill   the GEMM tests on CUDA (Gluon configs, the TMA fallbacks); M = 8192 sweep of the prefill configs
#             (8B layers); the shipped defaults at M = 8192 and 2048
#   defaults  all GEMM tests on CUDA; the shipped defaults at M = 8192 twice; M = 2048 sweep (Gluon below 4096
#             tokens?); an 8-layer 8B-shaped model prefilling 4 x 2048 tokens (M = 8192 in every GEMM)
#   (decode   ran at 2448b3f: the sliced kernel's split-K sweep at M = 16; removed with that change in 2c7e636)
#   threshold batch-1 prefill of 2048 tokens (8-layer 8B-shaped model; host time of 4 layers) with the TMA/Gluon
#             GEMMs from 4096 tokens (the default) and from 2048 (FPTQUANT_TMA_MIN_TOKENS=2048), alternating
#   STEPS="prefill defaults threshold" bash scripts/gpu_session16.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks
BENCH="python3 benchmarks/bench_w4a4_gemm.py"
for step in ${STEPS:-prefill}; do
  echo "=== $step $(date +%T)"
  case $step in
    prefill)
      timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py -k "gluon or tma" 2>&1 | tail -8
      timeout 300 $BENCH --m 8192 --sweep --sweep-kinds gemm --json "$OUT/prefill_sweep_8b.json"
      timeout 120 $BENCH --m 8192,2048 --json "$OUT/prefill_defaults_8b.json" ;;
    defaults)
      timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_w4a4_gemm.py 2>&1 | tail -15
      for rep in 1 2; do
        timeout 90 $BENCH --m 8192 --json "$OUT/prefill_defaults_8b_$rep.json"
      done
      timeout 120 $BENCH --m 2048 --sweep --sweep-kinds gemm --json "$OUT/prefill_sweep_2048.json"
      timeout 200 python3 benchmarks/bench_model.py --shape 8b --layers 8 --batches 4 --steps 16 --profile-batch 0 \
        --json "$OUT/model_8b_8layers_b4.json" ;;
    threshold)
      for rep in 1 2; do
        for from in 4096 2048; do
          FPTQUANT_TMA_MIN_TOKENS=$from timeout 120 python3 benchmarks/bench_model.py --shape 8b --layers 8 \
            --batches 1 --steps 16 --profile-batch 0 --json "$OUT/model_b1_tma_from_${from}_$rep.json" | tail -1
        done
      done
      for from in 4096 2048; do
        FPTQUANT_TMA_MIN_TOKENS=$from timeout 100 python3 scripts/profile_prefill_host.py --layers 4 --top 5 \
          > "$OUT/host_tma_from_$from.log" 2>&1; grep -i "host\|wall" "$OUT/host_tma_from_$from.log" | head -4
      done ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
