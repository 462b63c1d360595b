#!/usr/bin/env bash
# Session 27 on the GPU machine (issue 8): the stacked gate/up GEMM of deploy/mlp.py on the H100.
#   test    the deploy tests of the stacked q/k/v and gate/up GEMMs, the gated quantize reading halves in place,
#           the SwiGLU epilogue tests and the few-token GEMM tests after _finish_tile
#   mlp     bench_mlp_static.py, a second sample of session 26's call 5 (8B at 1, 4, 8, 16 tokens; 70B at 1, 16)
#   decode  bench_w4a4_gemm.py whole linears at 1 and 16 tokens (dynamic activations)
#   model   bench_model.py, 8B shapes, two layers: the packed model with q/k/v and gate/up stacked and without
#   model2  the same with the unmerged variant timed first (an order check)
#   stack   probe_stacked_gate_up.py: one stacked gate/up GEMM against two, with down's gated quantize, 1-32768 tokens
#   ncu     Nsight Compute on the kernels under their lines: 112x128 bf16, gated T_d and 9x64 float32 at 8192
#           tokens (dynamic), the sliced down GEMM at 16 tokens; one launch each, text reports
#   regs    the gated T_d transform quantize with its registers capped (maxnreg): more programs an SM
#   STEPS="test mlp" bash scripts/gpu_session27.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
pytest_q() { timeout "$1" python3 -m pytest -o addopts="" -q -p no:cacheprovider "${@:2}" 2>&1 | tail -3; }
for step in ${STEPS:-test mlp}; do
  echo "=== $step $(date +%T)"
  case $step in
    test)
      pytest_q 150 tests/test_deploy.py -k "siblings_run_one or static_down_input or round_trip or norms_are_fused"
      pytest_q 100 tests/test_gated_quantize.py
      pytest_q 100 tests/test_w4a4_swiglu.py
      pytest_q 250 tests/test_w4a4_gemm.py -k "swiglu or sliced or few_token" ;;
    mlp)
      timeout 150 python3 benchmarks/bench_mlp_static.py --m 1,4,8,16 --shapes 8b --json "$OUT/mlp_8b.json"
      timeout 100 python3 benchmarks/bench_mlp_static.py --m 1,16 --shapes 70b --json "$OUT/mlp_70b.json" ;;
    decode)
      timeout 150 python3 benchmarks/bench_w4a4_gemm.py --m 1,16 --json "$OUT/decode.json" 2>&1 \
        | grep -v "programmatic launch" ;;
    model)
      timeout 280 python3 benchmarks/bench_model.py --shape 8b --layers 2 --batches 1,4,16 --steps 128 \
        --unmerged-qkv --profile-batch 0 --json "$OUT/model.json" 2>&1 | grep -v "^{" ;;
    model2)
      timeout 280 python3 benchmarks/bench_model.py --shape 8b --layers 2 --batches 1,4,16 --steps 128 \
        --unmerged-qkv --unmerged-first --profile-batch 0 --json "$OUT/model2.json" 2>&1 | grep -v "^{" ;;
    stack)
      timeout 240 python3 benchmarks/probe_stacked_gate_up.py --json "$OUT/stack.json" ;;
    ncu)
      sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats"
      for c in "kron:112x128:kron-bf16" "blocks:16x32:hadamard-gated" "blocks:9x64:heads" "kron:24x24:kron-bf16" \
               "sliced:down16"; do
        kern=${c%%:*}; case_=${c#*:}
        echo "--- $case_ ($kern)"
        timeout 120 ncu --clock-control none -k "regex:$kern" --launch-skip 2 --launch-count 1 $sections \
          python3 scripts/ncu_target.py --case "$case_" > "$OUT/ncu_${case_//[:x]/_}.txt" 2>&1
        grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Shared Memory Configuration|Dynamic Shared|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|One or More" "$OUT/ncu_${case_//[:x]/_}.txt" | head -30
      done ;;
    regs)
      timeout 300 python3 benchmarks/bench_transform_quantize.py --m 8192,32768 --cases 16x32:hadamard-gated \
        --tilings "$(cat scripts/tilings_gated_regs.json)" --json "$OUT/regs.json" ;;
    *) echo "unknown step $step" ;;
  esac
done
