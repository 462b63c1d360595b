# Sourced by the scripts/gpu_*.sh acceptance scripts: `q NAME ARGS...` runs one results row
# (`fptquant quantize` on $M, JSON and log to $OUT) unless ROWS names others; `reload NAME` evaluates
# a model the row saved under $OUT/NAME, then deletes it. EXTRA="ARGS" is appended to every row's command
# (e.g. EXTRA="--method-arg e2e_steps=1024"; record it with the figure). The GPU machine returns at most 8 files a
# call: end the call with e.g. `cd $OUT && tar czf all.tgz *.json *.log && rm *.log`.
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FPTQUANT_CACHE=${FPTQUANT_CACHE:-$HOME/fqcache}
M=${FPTQ_GGUF:?run source .stage/common/setup.sh first}
ROWS=${ROWS:-all}
# DEADLINE=S: stop every row still training after S seconds (keep it under the call's limit); a rerun of the same
# command on the same machine resumes those rows from their checkpoints ($FPTQUANT_CACHE)
# (rows not yet started when it fires are skipped, not started late: they would run into the call's own limit)
PAST_DEADLINE="$OUT/.past_deadline"; rm -f "$PAST_DEADLINE"
if [[ -n ${DEADLINE:-} ]]; then
  (sleep "$DEADLINE"; touch "$PAST_DEADLINE"; pkill -f "fptquant quantize") & DEADLINE_PID=$!; disown
  trap 'kill $DEADLINE_PID 2>/dev/null' EXIT  # a finished script must not leave its timer for the next call
fi
q() { name=$1; shift; [[ $ROWS == all || " $ROWS " == *" $name "* ]] || return 0
  [[ -e $PAST_DEADLINE ]] && { echo "$name skipped: past DEADLINE"; return 0; }
  /usr/bin/time -f "$name wall %e s" python3 -m fptquant quantize --model "$M" --no-compare --device cuda --batch-size 8 \
    --json "$OUT/$name.json" "$@" ${EXTRA:-} > "$OUT/$name.log" 2>&1
  grep -E "perplexity|^[a-z].*W[0-9]|wall|error|Error|peak|seconds|calibration time" "$OUT/$name.log" | tr '\r' '\n' | tail -6; }
reload() { name=$1; [[ -d "$OUT/$name" ]] || return 0
  python3 -m fptquant eval --quantized "$OUT/$name" --model "$M" --device cuda --batch-size 8 \
    --json "$OUT/${name}_reloaded.json" 2>&1 | grep -E "^[a-z].*W[0-9]|rror"; rm -rf "$OUT/$name"; }
# `qpar NAME ARGS...`: like q, but up to PAR rows run at once (one small model leaves the H100 mostly idle:
# rows whose time is not reported, e.g. ablations, finish sooner side by side); end the script with `wait`.
# Only qpar's own rows count against PAR (a caller's background timer must not serialise them).
PAR=${PAR:-1}; QPAR_PIDS=()
qpar() {
  while :; do
    local live=() p; for p in "${QPAR_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && live+=("$p"); done
    QPAR_PIDS=("${live[@]}"); (( ${#QPAR_PIDS[@]} < PAR )) && break; wait -n
  done
  q "$@" & QPAR_PIDS+=($!); }
