#!/usr/bin/env bash
# Baselines acceptance run (issue 4) on the GPU machine, after `source .stage/common/setup.sh`.
# Each line is the exact command of one docs/RESULTS.md row. JSON results go to $OUT (or ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
M=${FPTQ_GGUF:?run source .stage/common/setup.sh first}
ROWS=${ROWS:-all}  # e.g. ROWS="gptq_w4a4kv4 quarot-gptq_w4a16" to run only those rows
q() { name=$1; shift; [[ $ROWS == all || " $ROWS " == *" $name "* ]] || return 0; /usr/bin/time -f "$name wall %e s" python3 -m fptquant quantize --model "$M" --no-compare \
        --device cuda --batch-size 8 --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" | grep -E "perplexity|^[a-z].*W[0-9]|wall|error|Error|Hadamard" ; }
q rtn_w4a4kv4            --method rtn --bits w4a4kv4
q smoothquant_w4a4kv4    --method smoothquant --bits w4a4kv4
q gptq_w4a4kv4           --method gptq --bits w4a4kv4
q quarot-rtn_w4a4kv4     --method quarot --bits w4a4kv4
q quarot-gptq_w4a4kv4    --method quarot --weights gptq --bits w4a4kv4 --out "$OUT/quarot-gptq"
q quarot-gptq_w4a8kv8    --method quarot --weights gptq --bits w4a8kv8
q quarot-gptq_w4a16      --method quarot --weights gptq --bits w4a16
[[ -d "$OUT/quarot-gptq" ]] && python3 -m fptquant eval --quantized "$OUT/quarot-gptq" --model "$M" --device cuda --batch-size 8 \
  --json "$OUT/quarot-gptq_reloaded.json" 2>&1 | grep -E "^[a-z].*W[0-9]"
rm -rf "$OUT/quarot-gptq"
q spinquant-gptq_w4a4kv4 --method spinquant --weights gptq --bits w4a4kv4 --out "$OUT/spinquant-gptq"
[[ -d "$OUT/spinquant-gptq" ]] && python3 -m fptquant eval --quantized "$OUT/spinquant-gptq" --model "$M" --device cuda \
  --batch-size 8 --json "$OUT/spinquant-gptq_reloaded.json" 2>&1 | grep -E "^[a-z].*W[0-9]"
rm -rf "$OUT/spinquant-gptq"
