#!/usr/bin/env bash
# failure.sh — a stalled rank and a killed rank must end the whole job, quickly and loudly.
#   stall: the surviving rank's collective times out after --comm-timeout; the message names the operation,
#          its sequence number and the rank that did not arrive; every rank exits non-zero within timeout + 30 s.
#   die:   a rank killed by SIGKILL ends the job (mpirun names the rank) within timeout + 30 s.
#   error: an error raised on one rank only is reported by that rank, which ends the job at once.
#   The stall is also checked across two centres, where the hierarchical exchange's receive names the centre.
#   sigterm: SIGTERM on one rank stops every rank after the same step, with a save and exit code 75.
#   setupstall: a rank stalled while the process groups are made ends the job after --comm-timeout.
# Usage: failure.sh BUILD_BIN_DIR MPIEXEC
set -u
BIN=$1
MPIEXEC=$2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
awk 'BEGIN { for (i = 0; i < 3000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL: aq-prepare"; exit 1; }

TIMEOUT=5
ARGS=(--device cpu --data "$TMP/data/train_*.bin" --layers 2 --heads 2 --dim 16 --seq 16 --batch 2 --steps 20 --threads 1
      --comm-timeout $TIMEOUT)
pass=0
fail=0
check() {  # NAME FAULT [--centres N] REGEX...
  local name=$1 fault=$2 extra=()
  shift 2
  if [[ ${1:-} == --centres ]]; then
    extra=(--centres "$2")
    shift 2
  fi
  local start end rc
  start=$(date +%s)
  AQ_FAULT_INJECT=$fault timeout 120 "$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    "$BIN/aq-train" "${ARGS[@]}" "${extra[@]}" > "$TMP/out.txt" 2>&1
  rc=$?
  end=$(date +%s)
  local why=""
  [[ $rc -eq 0 ]] && why="exit code 0"
  [[ $rc -eq 124 ]] && why="still running after 120 s (hang)"
  (( end - start > TIMEOUT + 30 )) && why="took $((end - start)) s, more than --comm-timeout + 30 s"
  for re in "$@"; do
    grep -Eq "$re" "$TMP/out.txt" || why="output lacks /$re/"
  done
  if [[ -z $why ]]; then
    echo "ok $name (exit $rc after $((end - start)) s)"
    pass=$((pass + 1))
  else
    echo "FAIL $name: $why"
    sed 's/^/    | /' "$TMP/out.txt" | head -30
    fail=$((fail + 1))
  fi
}
check "stalled rank 1" "stall:1:3" 'timed out after [0-9]+ s' 'sequence number [0-9]+' 'ranks that did not arrive: 1;' \
  'all_reduce "gradient bucket'
check "stalled rank 0 (the group leader)" "stall:0:3" 'timed out' 'did not arrive include 0'
check "stalled rank 1 in another centre (hierarchical exchange)" "stall:1:3" --centres 2 'timed out after [0-9]+ s' \
  'recv "gradient bucket .*cross-centre.*centre 1"' 'the peer never posted the matching send'
check "killed rank 1" "die:1:3" 'rank 1 .*(exited on signal 9|Killed)'
check "error on rank 1 only" "error:1:3" 'aq: error on rank 1 .*injected fault; ending the job'
check "rank 1 stalled in set-up" "setupstall:1:0" 'set-up did not finish: rank 0 .* waited [0-9]+ s while creating the process groups'
# A signal on one rank stops every rank after the same step, saves, and exits 75; the saved run then resumes.
AQ_FAULT_INJECT=sigterm:1:3 timeout 120 "$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none -np 2 \
  "$BIN/aq-train" "${ARGS[@]}" --save "$TMP/ck" > "$TMP/out.txt" 2>&1
rc=$?
if [[ $rc -eq 75 ]] && grep -Eq 'stopped by SIGTERM after step 3 of 20; continue with --resume' "$TMP/out.txt" &&
  timeout 120 "$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none -np 2 "$BIN/aq-train" "${ARGS[@]}" \
    --resume "$TMP/ck" > "$TMP/out2.txt" 2>&1 && grep -q 'resumed .* at step 3' "$TMP/out2.txt"; then
  echo "ok SIGTERM on rank 1 only: every rank stopped after step 3, saved, exit 75, resumed"
  pass=$((pass + 1))
else
  echo "FAIL SIGTERM on rank 1 only (exit $rc)"
  sed 's/^/    | /' "$TMP/out.txt" | tail -20
  fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
