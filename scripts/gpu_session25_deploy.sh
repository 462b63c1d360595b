#!/usr/bin/env bash
# Session 25: the static RTN deploy check on SmolLM2 with the gate+up epilogue on and off (after
# `source .stage/common/setup.sh`), and a count of the epilogue's calls in one packed forward.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
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
