#!/usr/bin/env bash
# FlatQuant acceptance run (issue 5) on the GPU machine, after `source .stage/common/setup.sh`.
# Each `q` line is the exact command of one docs/RESULTS.md row. JSON results and logs go to $OUT.
# Layer checkpoints go to $FPTQUANT_CACHE and come back as $OUT/fqcache.tar (untar into .fqcache to resume):
# the GPTQ rows reuse the calibration of the RTN row with the same bits.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FPTQUANT_CACHE=${FPTQUANT_CACHE:-$HOME/fqcache}
trap 'tar -C "$FPTQUANT_CACHE" -cf "$OUT/fqcache.tar" . 2>/dev/null' EXIT  # layer checkpoints come back
M=${FPTQ_GGUF:?run source .stage/common/setup.sh first}
ROWS=${ROWS:-all}
q() { name=$1; shift; [[ $ROWS == all || " $ROWS " == *" $name "* ]] || return 0
  /usr/bin/time -f "$name wall %e s" python3 -m fptquant quantize --model "$M" --no-compare --device cuda --batch-size 8 \
    --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  grep -E "perplexity|^[a-z].*W[0-9]|wall|error|Error|peak|calibration time" "$OUT/$name.log" | tr '\r' '\n' | tail -5; }
reload() { name=$1; [[ -d "$OUT/$name" ]] || return 0
  python3 -m fptquant eval --quantized "$OUT/$name" --model "$M" --device cuda --batch-size 8 \
    --json "$OUT/${name}_reloaded.json" 2>&1 | grep -E "^[a-z].*W[0-9]|rror"; rm -rf "$OUT/$name"; }
q flatquant-rtn_w4a4kv4   --method flatquant --bits w4a4kv4 --out "$OUT/flatquant-rtn"
reload flatquant-rtn
q flatquant-gptq_w4a4kv4  --method flatquant --weights gptq --bits w4a4kv4 --out "$OUT/flatquant-gptq"
reload flatquant-gptq
q flatquant-gptq_w4a8kv8  --method flatquant --weights gptq --bits w4a8kv8
q flatquant-gptq_w4a16    --method flatquant --weights gptq --bits w4a16
# Ablation (paper Table 16: LT, PS, LCT on/off), RTN weights, W4A4KV4, full recipe.
for lt in true false; do for ps in true false; do for lct in true false; do
  [[ $lt$ps$lct == truetruetrue ]] && continue
  q "flatquant-ablation-lt_${lt}-ps_${ps}-lct_${lct}" --method flatquant --bits w4a4kv4 \
    --method-arg transforms=$lt --method-arg diag=$ps --method-arg clip=$lct
done; done; done
