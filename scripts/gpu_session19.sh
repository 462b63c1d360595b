#!/usr/bin/env bash
# Session 19 on the GPU machine (issue 8, acceptances 2-4): the SwiGLU producer fused into down_proj's input
# quantize (prefill and decode), dp4a at one token (byte-permute regrouping).
#   test   the gated-quantize, dp4a and deploy kernel tests on CUDA
#   gemm   bench_w4a4_gemm.py on LLaMA-3-8B at M = 1, 16, 8192 with --gated (down with its producer, both ways),
#          and 70B gate+up at M = 1, 16; default configs throughout (what deploy runs)
#   tq     bench_transform_quantize.py: the gated kernels (FlatQuant's 112×128 P_d, the block Hadamard T_d, 32×48)
#          beside the ungated 112×128, at M = 8192 and 32768, dynamic and static
#   STEPS="test gemm tq" bash scripts/gpu_session19.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
GATED_CASES=112x128:kron-bf16-gated,16x32:hadamard-gated,32x48:kron-bf16-gated,112x128:kron-bf16,16x32:hadamard
for step in ${STEPS:-test gemm tq}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gated_quantize.py tests/test_w4a4_gemm.py \
        tests/test_deploy.py -k "gated or dp4a or one_token or small_m or swiglu or fused_kernel" 2>&1 | tail -3 ;;
    gemm)
      timeout 300 python3 benchmarks/bench_w4a4_gemm.py --m 1,16,8192 --gated --json "$OUT/gemm_8b.json"
      timeout 120 python3 benchmarks/bench_w4a4_gemm.py --shapes 70b --layers gate_up --m 1,16 \
        --json "$OUT/gemm_70b.json" ;;
    tq)
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases $GATED_CASES \
        --json "$OUT/tq_gated.json"
      timeout 100 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases $GATED_CASES \
        --json "$OUT/tq_gated_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
