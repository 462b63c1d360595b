#!/usr/bin/env bash
# FPTQuant acceptance run (issue 6) on the GPU machine, after `source .stage/common/setup.sh`.
# Each `q` line is the exact command of one docs/RESULTS.md row; ROWS="name ..." picks rows.
# JSON results and logs go to $OUT; local/e2e checkpoints go to $FPTQUANT_CACHE (a rerun on the same machine resumes).
set -uo pipefail
source "$(dirname "$0")/gpu_rows.sh"
q fptquant-static_w4a4kv4   --method fptquant --bits w4a4kv4 --act-static --out "$OUT/fptquant-static"
reload fptquant-static
q fptquant-dynamic_w4a4kv4  --method fptquant --bits w4a4kv4
# With the optional block-wise stage (BLOCK_EPOCHS epochs over all calibration windows) before e2e.
BLOCK_EPOCHS=${BLOCK_EPOCHS:-2}
q fptquant-static-blockwise_w4a4kv4 --method fptquant --bits w4a4kv4 --act-static \
  --method-arg blockwise_epochs=$BLOCK_EPOCHS --out "$OUT/fptquant-static-blockwise"
reload fptquant-static-blockwise
q fptquant-dynamic-blockwise_w4a4kv4 --method fptquant --bits w4a4kv4 --method-arg blockwise_epochs=$BLOCK_EPOCHS
q fptquant-gptq-static_w4a4kv4 --method fptquant --weights gptq --bits w4a4kv4 --act-static --method-arg e2e_steps=128 \
  --out "$OUT/fptquant-gptq-static"
reload fptquant-gptq-static
# GPTQ on the learned per-row clips (transforms trained with learned-clip RTN weights); best on the CPU quick preset
# E2E_STEPS: end-to-end steps of these rows (default: the recipe's 512); pick it from the static row's e2e_seconds
E2E_STEPS=${E2E_STEPS:-512}
q fptquant-gptq-learned-static_w4a4kv4 --method fptquant --weights gptq --bits w4a4kv4 --act-static \
  --method-arg gptq_scales=learned --method-arg e2e_steps=$E2E_STEPS --out "$OUT/fptquant-gptq-learned-static"
reload fptquant-gptq-learned-static
q fptquant-gptq-learned-dynamic_w4a4kv4 --method fptquant --weights gptq --bits w4a4kv4 --method-arg gptq_scales=learned \
  --method-arg e2e_steps=$E2E_STEPS
# The paper's transform set (no o_proj Hadamard, S_n on with static scales) at session 10's 256 steps
PAPER="--method-arg o_rotation=none --method-arg scale_space=linear --method-arg e2e_steps=256"
q fptquant-static-paper_w4a4kv4 --method fptquant --bits w4a4kv4 --act-static $PAPER --method-arg residual_scaling=all
q fptquant-dynamic-no_orot_w4a4kv4 --method fptquant --bits w4a4kv4 --method-arg o_rotation=none
# W4A8 rows at 256 e2e steps (the ablation's length); PAR=N runs them beside the ablation rows below
qpar fptquant-static_w4a8kv4 --method fptquant --bits w4a8kv4 --act-static --method-arg e2e_steps=256
qpar fptquant-static_w4a8kv8 --method fptquant --bits w4a8kv8 --act-static --method-arg e2e_steps=256
# Ablation, static W4A4KV4, RTN weights: local stage only, and the recipe with and without each transform,
# at ABL_STEPS end-to-end steps (default: the recipe's 512); PAR=N runs N at once.
ABL_STEPS=${ABL_STEPS:-512}
qpar fptquant-ablation-local_only --method fptquant --bits w4a4kv4 --act-static --method-arg e2e_steps=0
qpar "fptquant-ablation-all_e2e$ABL_STEPS" --method fptquant --bits w4a4kv4 --act-static --method-arg e2e_steps=$ABL_STEPS
for t in prerope values up_scale o_rotation=none; do
  [[ $t == *=* ]] && arg=$t || arg=$t=false
  qpar "fptquant-ablation-no_${t%%=*}_e2e$ABL_STEPS" --method fptquant --bits w4a4kv4 --act-static \
    --method-arg $arg --method-arg e2e_steps=$ABL_STEPS
done
# S_n is off by default (docs/FPTQUANT.md): its row adds it
qpar "fptquant-ablation-with_residual_scaling_e2e$ABL_STEPS" --method fptquant --bits w4a4kv4 --act-static \
  --method-arg residual_scaling=all --method-arg e2e_steps=$ABL_STEPS
# S_n around down_proj only (its static error falls with S_n; o_proj's rises: scripts/residual_scaling_profile.py)
qpar "fptquant-ablation-with_residual_scaling_down_e2e$ABL_STEPS" --method fptquant --bits w4a4kv4 --act-static \
  --method-arg residual_scaling=down --method-arg e2e_steps=$ABL_STEPS
wait
