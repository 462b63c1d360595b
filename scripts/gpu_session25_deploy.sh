#!/usr/bin/env bash
# Session 25: the static RTN deploy check on SmolLM2 with the gate+up epilogue on and off (after
# `source .stage/common/setup.sh`), and a count of the epilogue's calls in one packed forward.
# STEP=fptquant: FPTQuant static without T_d (down_rotation=none: down_proj's input takes the epilogue), 256 e2e
# steps, its deploy check, then the packed model's perplexity with the epilogue on and off (scripts/epilogue_ppl.py).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
if [[ ${STEP:-rtn} == fptquant ]]; then
  METHODS=fptquant DEPLOY_ARGS="--act-static --method-arg down_rotation=none --method-arg e2e_steps=256" \
    bash scripts/gpu_deploy.sh | tail -4
  python3 scripts/epilogue_ppl.py --packed "$HOME/packed_fptquant" --json "$OUT/epilogue_ppl_fptquant.json"
  exit 0
fi
for on in 1 0; do
  FPTQUANT_SWIGLU_EPILOGUE=$on METHODS=rtn DEPLOY_ARGS="--act-static" bash scripts/gpu_deploy.sh
  for ext in json log; do mv "$OUT/deploy_rtn.$ext" "$OUT/deploy_rtn_static_epilogue$on.$ext"; done
done
python3 - <<'PY'
import os, torch
import fptquant.deploy.mlp as mlp
from fptquant.deploy import load
calls = []
real = mlp.w4a4_swiglu_quantize
mlp.w4a4_swiglu_quantize = lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw)
model, _ = load(os.path.expanduser("~/packed_rtn"), device="cuda")
with torch.no_grad():
    model(torch.randint(0, 1000, (8, 2048), device="cuda"))
print("epilogue calls in one 8x2048 forward:", len(calls), "layers:", len(model.model.layers), "codes shape", calls[:1])
PY
