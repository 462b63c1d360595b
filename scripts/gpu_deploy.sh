#!/usr/bin/env bash
# Issue 9 acceptance on the GPU machine (after `source .stage/common/setup.sh`): for each of METHODS,
# fake-quant vs packed-and-reloaded perplexity and greedy generations (scripts/deploy_check.py).
# METHODS entries are METHOD or METHOD:WEIGHTS, e.g. METHODS="rtn quarot flatquant flatquant:gptq";
# DEPLOY_ARGS are passed to every check, e.g. DEPLOY_ARGS="--act-static" for FPTQuant's static row.
# FlatQuant resumes its layer-wise calibration from $FPTQUANT_CACHE when the same recipe ran before
# (carry .fqcache and set FPTQUANT_CACHE=$PWD/.fqcache, or untar .fqcache/fqcache.tar as below).
set -uo pipefail
source "$(dirname "$0")/gpu_rows.sh"
[[ -f .fqcache/fqcache.tar && ! -d "$FPTQUANT_CACHE/calibration" ]] && tar xf .fqcache/fqcache.tar -C "$FPTQUANT_CACHE"
extra=(); [[ -n ${SDPA_MATH:-} ]] && extra=(--sdpa-math)  # SDPA_MATH=1: one attention summation order
for entry in ${METHODS:-rtn quarot}; do
  method=${entry%%:*}; weights=(); name=$method
  [[ $entry == *:* ]] && weights=(--weights "${entry#*:}") && name="${method}-${entry#*:}"
  /usr/bin/time -f "$name deploy check wall %e s" python3 scripts/deploy_check.py --model "$M" --method "$method" \
    "${weights[@]}" "${extra[@]}" ${DEPLOY_ARGS:-} --out "$HOME/packed_$name" --json "$OUT/deploy_$name.json" > "$OUT/deploy_$name.log" 2>&1
  tr '\r' '\n' < "$OUT/deploy_$name.log" | grep -v "it/s\|it\]" | tail -22
done
exit 0
