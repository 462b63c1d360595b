#!/usr/bin/env bash
# Session 22 on the GPU machine (issue 8).
#   probe  benchmarks/probe_sliced_down.py: the 16-token 8B down GEMM in variants (packed activations, tiled
#          weights, activations read once, loads only), to find what holds it at 2.1 TB/s
#   kv     INT4-KV decode attention at batch 64, KV 2048 (acceptance 5)
#   tqtest the transform-quantize tests on CUDA (the one-pass kernel for rows of several blocks among them)
#   tq     bench_transform_quantize.py: the block Hadamard (T_d) and its gated form, dynamic, at M = 8192 and
#          32768 (one pass, the default now, and the two passes, same run), then a tiling sweep at 8192
#   STEPS="probe kv" bash scripts/gpu_session22.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-probe}; do
  echo "=== $step $(date +%T)"
  case $step in
    probe)
      timeout 420 python3 benchmarks/probe_sliced_down.py --json "$OUT/probe_down.json" ;;
    tqtest)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gated_quantize.py \
        -k "one_pass or hadamard or transform_quantize or bf16_numerics or gated" 2>&1 | tail -4 ;;
    tq)
      timeout 240 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 \
        --cases 16x32:hadamard,16x32:hadamard-gated --json "$OUT/tq.json"
      timeout 240 python3 benchmarks/bench_transform_quantize.py --m 8192 --sweep --cases 16x32:hadamard \
        --json "$OUT/tq_sweep.json" ;;
    tq2)  # the one-pass defaults from tq's sweep (4 warps, 3 stages), and a sweep of the gated form
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 \
        --cases 16x32:hadamard,16x32:hadamard-gated --json "$OUT/tq.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 \
        --cases 16x32:hadamard,16x32:hadamard-gated --json "$OUT/tq_static.json"
      timeout 240 python3 benchmarks/bench_transform_quantize.py --m 8192 --sweep --cases 16x32:hadamard-gated \
        --json "$OUT/tq_sweep_gated.json" ;;
    tqpdl)  # every case at M = 8192 with and without programmatic launch (FPTQUANT_PDL=0), dynamic and static
      cases=16x32:hadamard,16x32:hadamard-gated,9x64:heads-bf16,24x24:kron-bf16,112x128:kron-bf16,64x64:kron-bf16
      for pdl in 1 0; do
        FPTQUANT_PDL=$pdl timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192 --cases $cases \
          --json "$OUT/tq_pdl$pdl.json"
        FPTQUANT_PDL=$pdl timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 \
          --cases $cases --json "$OUT/tq_static_pdl$pdl.json"
      done ;;
    tq3)  # programmatic launch for decode-sized transform calls only (M <= 64): every case, dynamic at 8192 and
          # 32768, static at 8192, and a tiling sweep of 112x128 (dynamic, 8192)
      cases=16x32:hadamard,16x32:hadamard-gated,9x64:heads-bf16,24x24:kron-bf16,112x128:kron-bf16,64x64:kron-bf16
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases $cases --json "$OUT/tq.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --cases $cases \
        --json "$OUT/tq_static.json"
      timeout 200 python3 benchmarks/bench_transform_quantize.py --m 8192 --sweep --cases 112x128:kron-bf16 \
        --json "$OUT/tq_sweep_112.json" ;;
    kv)
      timeout 120 python3 benchmarks/bench_kv_attention.py --batch 64 --length 2048 --json "$OUT/kv.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
