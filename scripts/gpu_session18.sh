#!/usr/bin/env bash
# Session 18 on the GPU machine (issue 8, acceptance 4): FlatQuant's bfloat16 online numerics (online_bf16: factors
# and P1ᵀX rounded to bfloat16, one tensor-core product per factor in the fused transform+quantize kernel).
#   fq   (after `source .stage/common/setup.sh`) FlatQuant's full recipe with the new default, fake-quant against
#        packed-and-reloaded perplexity through the real kernels: `METHODS=flatquant bash scripts/gpu_deploy.sh`
#   fq32 (after setup.sh) the same with `--method-arg online_bf16=false` (float32 online numerics), for comparison
#   tq   the kernel tests on CUDA, then bench_transform_quantize.py at M = 8192 and 32768 (dynamic scales) and
#        M = 8192 with a static scale; kinds kron (float32 numerics), kron-exact (bf16 factors), kron-bf16 (+ round_mid)
#   STEPS="tq" bash scripts/gpu_session18.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
for step in ${STEPS:-tq}; do
  echo "=== $step $(date +%T)"
  case $step in
    fq)
      METHODS=flatquant timeout 560 bash scripts/gpu_deploy.sh ;;
    fq32)
      METHODS=flatquant DEPLOY_ARGS="--method-arg online_bf16=false" timeout 560 bash scripts/gpu_deploy.sh ;;
    tq)
      timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -3
      timeout 240 python3 benchmarks/bench_transform_quantize.py --m ${TQ_M:-8192,32768} --json "$OUT/tq.json"
      timeout 120 python3 benchmarks/bench_transform_quantize.py --static --m 8192 --json "$OUT/tq_static.json" ;;
    *) echo "unknown step $step" ;;
  esac
done 2>&1 | tee "$OUT/run.log"
