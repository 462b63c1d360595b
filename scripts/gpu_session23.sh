#!/usr/bin/env bash
# Session 23 on the GPU machine (issue 8, acceptance 4): the batched transform quantize with tokens as the batch
# of 3-D dots, for rows of one small block (SmolLM2's 24×24 and 9×64).
#   test   the transform-quantize tests on CUDA (the batched kernel's among them)
#   tq     bench_transform_quantize.py, one-block rows: the default and the other kernel (tiled or batched), same
#          run, dynamic at M = 8192 and 32768, static at 8192
#   sweep  every tiling of both kernels at M = 8192, dynamic, for 24×24 and 9×64 (and static 24×24)
#   STEPS="test tq sweep" bash scripts/gpu_session23.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
SMALL=24x24:kron-bf16,9x64:heads-bf16,32x48:kron-bf16
ALL=$SMALL,64x64:kron-bf16,112x128:kron-bf16,16x32:hadamard,16x32:hadamard-gated
for step in ${STEPS:-test tq}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gated_quantize.py \
        -k "batched or hadamard or transform_quantize or bf16_numerics or gated or kronecker" 2>&1 | tail -4 ;;
    tq)
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases $ALL --json "$OUT/tq.json"
      timeout 150 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases $ALL \
        --json "$OUT/tq_static.json" ;;
    sweep)
      timeout 240 python3 benchmarks/bench_transform_quantize.py --m 8192 --sweep --cases 24x24:kron-bf16,9x64:heads-bf16 \
        --json "$OUT/tq_sweep.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --sweep --cases 24x24:kron-bf16 \
        --json "$OUT/tq_sweep_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
