#!/usr/bin/env bash
# Issue 9 acceptance on the GPU machine (after `source .stage/common/setup.sh`): for each of METHODS,
# fake-quant vs packed-and-reloaded perplexity and greedy generations (scripts/deploy_check.py).
set -uo pipefail
source "$(dirname "$0")/gpu_rows.sh"
[[ -f .fqcache/fqcache.tar && ! -d "$FPTQUANT_CACHE/calibration" ]] && tar xf .fqcache/fqcache.tar -C "$FPTQUANT_CACHE"
for method in ${METHODS:-rtn quarot}; do
  /usr/bin/time -f "$method deploy check wall %e s" python3 scripts/deploy_check.py --model "$M" --method "$method" \
    --out "$HOME/packed_$method" --json "$OUT/deploy_$method.json" > "$OUT/deploy_$method.log" 2>&1
  tr '\r' '\n' < "$OUT/deploy_$method.log" | grep -v "it/s\|it\]" | tail -22
done
exit 0
