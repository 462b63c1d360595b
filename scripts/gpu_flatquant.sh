#!/usr/bin/env bash
# FlatQuant acceptance run (issue 5) on the GPU machine, after `source .stage/common/setup.sh`.
# Each `q` line is the exact command of one docs/RESULTS.md row. JSON results and logs go to $OUT.
# Layer checkpoints go to $FPTQUANT_CACHE and come back as $OUT/fqcache.tar (untar into .fqcache to resume):
# the GPTQ rows reuse the calibration of the RTN row with the same bits.
set -uo pipefail
source "$(dirname "$0")/gpu_rows.sh"
trap 'tar -C "$FPTQUANT_CACHE" -cf "$OUT/fqcache.tar" . 2>/dev/null' EXIT  # layer checkpoints come back
q flatquant-rtn_w4a4kv4   --method flatquant --bits w4a4kv4 --out "$OUT/flatquant-rtn"
reload flatquant-rtn
q flatquant-gptq_w4a4kv4  --method flatquant --weights gptq --bits w4a4kv4 --out "$OUT/flatquant-gptq"
reload flatquant-gptq
q flatquant-rtn_w4a8kv8   --method flatquant --bits w4a8kv8
q flatquant-gptq_w4a8kv8  --method flatquant --weights gptq --bits w4a8kv8
q flatquant-rtn_w4a16     --method flatquant --bits w4a16
q flatquant-gptq_w4a16    --method flatquant --weights gptq --bits w4a16
# Ablation (paper Table 16: LT, PS, LCT on/off), RTN weights, W4A4KV4, on the reduced recipe of the official-code
# anchors (ABL_SAMPLES=64 windows, ABL_EPOCHS=5 epochs), all 8 rows incl. all-on; PAR=N runs N at once.
ABL_SAMPLES=${ABL_SAMPLES:-64}; ABL_EPOCHS=${ABL_EPOCHS:-5}
for lt in true false; do for ps in true false; do for lct in true false; do
  qpar "flatquant-ablation-lt_${lt}-ps_${ps}-lct_${lct}" --method flatquant --bits w4a4kv4 \
    --calib-samples "$ABL_SAMPLES" --method-arg epochs="$ABL_EPOCHS" \
    --method-arg transforms=$lt --method-arg diag=$ps --method-arg clip=$lct
done; done; done
wait
