#!/usr/bin/env bash
# Foundation acceptance run on the GPU machine (after `source .stage/common/setup.sh`, which sets
# FPTQ_GGUF to the SmolLM2 GGUF). Writes JSON results to $OUT (or ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -x tests 2>&1 | tail -3 | tee "$OUT/pytest.txt"
M=${FPTQ_GGUF:?run source .stage/common/setup.sh first}
python3 -m fptquant eval --model "$M" --device cuda --batch-size 8 --json "$OUT/fp32.json" 2>&1 | grep -v "it/s\]$"
for bits in w8a8 w4a16 w4a8kv8 w4a4kv4; do
  python3 -m fptquant quantize --model "$M" --method rtn --bits $bits --no-compare --device cuda --batch-size 8 \
    --json "$OUT/rtn_$bits.json" 2>&1 | grep -v "it/s\]$"
done
