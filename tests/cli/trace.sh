#!/usr/bin/env bash
# trace.sh — aq-train --trace end to end: a 4-rank tp2 x dp2 run writes ONE Chrome-trace file that
# check_trace.py validates (JSON; every rank a named process; spans properly nested per (pid, tid) and inside
# --trace-steps; block, optimizer, data, checkpoint, evaluation and tensor-parallel spans; gradient-bucket
# all-reduces with bytes, at least one overlapping a backward block of its rank). Also: a single process
# without mpirun traces too, and a bad --trace-steps or an unwritable --trace path (on one rank and on four) is
# refused at start with one line and a non-zero exit, leaving no file behind.
# Usage: trace.sh BUILD_BIN_DIR MPIEXEC
set -u
BIN=$1
MPIEXEC=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN=("$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none)
awk 'BEGIN { for (i = 0; i < 3000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL: aq-prepare"; exit 1; }
# Three blocks and buckets of ~0.01 MiB: several buckets per step, launched during backward.
ARGS=(--device cpu --data "$TMP/data/train_*.bin" --val-data "$TMP/data/val_*.bin" --layers 3 --heads 2 --dim 32
      --seq 16 --batch 2 --steps 5 --threads 1 --bucket-mb 0.01 --eval-every 3 --eval-batches 2)
pass=0
fail=0
ok() { echo "ok $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }

# 1. Four ranks, tp 2 x dp 2, steps 2-3 recorded (a save at step 2 and an evaluation at step 3 fall inside).
if timeout 300 "${MPIRUN[@]}" -np 4 "$BIN/aq-train" "${ARGS[@]}" --tp 2 --save-every 2 --save "$TMP/m" \
    --trace "$TMP/trace.json" --trace-steps 2:3 > "$TMP/out.txt" 2>&1; then
  if /usr/bin/python3 "$HERE/check_trace.py" "$TMP/trace.json" --ranks 4 --steps 2:3 --buckets --tp \
      --expect "checkpoint write" --expect "evaluation" > "$TMP/check.txt" 2>&1; then
    ok "4-rank tp2 x dp2 trace"
    sed 's/^/    /' "$TMP/check.txt"
  else
    bad "4-rank tp2 x dp2 trace" "check_trace.py failed"
    sed 's/^/    | /' "$TMP/check.txt"
  fi
  ls "$TMP"/trace.json.* > /dev/null 2>&1 && bad "no leftovers" "$(ls "$TMP"/trace.json.*)"
else
  bad "4-rank tp2 x dp2 trace" "aq-train failed"
  sed 's/^/    | /' "$TMP/out.txt" | tail -20
fi

# 2. One process, no launcher, the default window 2:4.
if timeout 120 "$BIN/aq-train" "${ARGS[@]}" --trace "$TMP/one.json" > "$TMP/out.txt" 2>&1 &&
   /usr/bin/python3 "$HERE/check_trace.py" "$TMP/one.json" --ranks 1 --steps 2:4 > "$TMP/check.txt" 2>&1; then
  ok "single process, default --trace-steps"
else
  bad "single process" "$(tail -5 "$TMP/out.txt" "$TMP/check.txt")"
fi

# 3. Refusals: one line on stderr, non-zero exit, no trace file.
source "$(dirname "${BASH_SOURCE[0]}")/one_error.sh"  # one_error
refuse() {  # NAME REGEX NP ARGS...
  local name=$1 re=$2 np=$3
  shift 3
  local cmd=("$BIN/aq-train")
  ((np > 1)) && cmd=("${MPIRUN[@]}" -np "$np" "$BIN/aq-train")
  timeout 120 "${cmd[@]}" "${ARGS[@]}" "$@" > "$TMP/stdout" 2> "$TMP/stderr"
  one_error "$name" "$re" $? || return
  if ls "$TMP"/bad*.json > /dev/null 2>&1; then
    bad "$name" "a trace file was left behind"
  else
    ok "$name"
  fi
}
refuse "--trace-steps 5:2" 'aq-train: error: --trace-steps 5:2 is not a window of steps.*1 <= A <= B' 1 \
  --trace "$TMP/bad.json" --trace-steps 5:2
refuse "--trace-steps x" 'aq-train: error: --trace-steps x: "x" is not a step number' 1 --trace "$TMP/bad.json" \
  --trace-steps x
refuse "unwritable --trace" 'aq-train: error: cannot write --trace to /nonexistent-dir/t.json' 1 \
  --trace /nonexistent-dir/t.json
refuse "unwritable --trace, 4 ranks" 'aq-train: error: cannot write --trace to /nonexistent-dir/t.json' 4 --tp 2 \
  --trace /nonexistent-dir/t.json
echo "$pass passed, $fail failed"
((fail == 0))
