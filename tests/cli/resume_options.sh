#!/usr/bin/env bash
# resume_options.sh — --resume continues the saved run with its own options:
#   * options not given are the saved run's (sequence length, per-rank batch from the global batch, --steps, the
#     schedule), and one line lists them;
#   * a hyper-parameter given anew is taken, and one line says old → new;
#   * a change that would alter the data order or the shapes (--seq, --data, --grad-accum, the global batch) is
#     refused in one line with the fix, before anything is written;
#   * the resumed run continues to the saved --steps.
#
#   bash tests/cli/resume_options.sh build/bin
# Prints "ok NAME" or "FAIL NAME: reason" per case, then "N passed, M failed"; exits 1 if any case failed.
set -u
BIN=${1:?usage: resume_options.sh BUILD_BIN_DIR}
TRAIN=$BIN/aq-train
[[ -x $TRAIN ]] || { echo "FAIL setup: $TRAIN is missing (build it first)"; exit 1; }
export LC_ALL=C OMP_NUM_THREADS=1
TMP=$(mktemp -d /tmp/aq-resume-options-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
ok() { echo "ok $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
check() {  # NAME CONDITION-STATUS DETAIL
  if [[ $2 -eq 0 ]]; then ok "$1"; else fail "$1" "$3"; fi
}

awk 'BEGIN { for (i = 0; i < 2000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL setup: aq-prepare"; exit 1; }
DATA="$TMP/data/train_*.bin"
CK=$TMP/m
COMMON=(--data "$DATA" --layers 2 --heads 2 --dim 32 --threads 1)

# The first part of a run: T 24, B 3, a cosine schedule over 8 steps, stopped after step 3.
"$TRAIN" "${COMMON[@]}" --seq 24 --batch 3 --steps 8 --stop-at 3 --lr 2e-3 --lr-schedule cosine --warmup 2 \
  --save "$CK" > "$TMP/first.txt" 2>&1
check "first part saved" $? "$(tail -3 "$TMP/first.txt")"

# Refused changes: one line, exit 1, the checkpoint untouched.
refused() {  # NAME REGEX FLAGS...
  local name=$1 regex=$2
  shift 2
  local before
  before=$(find "$CK" -type f | sort | xargs md5sum)
  "$TRAIN" "${COMMON[@]}" --resume "$CK" --save "$CK" "$@" > "$TMP/out.txt" 2> "$TMP/err.txt"
  local rc=$?
  if ((rc != 1)); then
    fail "$name" "exit $rc, expected 1: $(tail -2 "$TMP/err.txt")"
  elif [[ $(awk 'END { print NR }' "$TMP/err.txt") != 1 ]] || ! grep -qE -- "$regex" "$TMP/err.txt"; then
    fail "$name" "expected one line matching /$regex/, got: $(tr '\n' '|' < "$TMP/err.txt")"
  elif [[ $(find "$CK" -type f | sort | xargs md5sum) != "$before" ]]; then
    fail "$name" "the checkpoint changed"
  else
    ok "$name"
  fi
}
refused "--seq change refused" '--seq 32 differs from the saved run.s 24; the sequences would be cut differently: drop --seq' \
  --seq 32
refused "--batch change refused" '--batch 2 on dp=1 is a global batch of 2 sequences, the saved run.s is 3' --batch 2
refused "--grad-accum change refused" '--grad-accum 2 differs from the saved run.s 1; the global batch would change' \
  --grad-accum 2

# Continued without the shape flags: the saved ones are restored and said; --lr given anew is taken and said.
"$TRAIN" "${COMMON[@]}" --resume "$CK" --save "$CK" --lr 1e-3 --log "$TMP/log.jsonl" > "$TMP/rest.txt" 2>&1
check "resumed run exits 0" $? "$(tail -3 "$TMP/rest.txt")"
grep -q "resume: the saved run's options: --seq 24 --batch 3 --steps 8 --lr-schedule cosine --warmup 2" "$TMP/rest.txt"
check "restored options listed" $? "$(grep resume: "$TMP/rest.txt")"
grep -q "resume: changed from the saved run: --lr 0.002 → 0.001" "$TMP/rest.txt"
check "changed hyper-parameter said" $? "$(grep resume: "$TMP/rest.txt")"
grep -q "batch 3 x 24 per rank" "$TMP/rest.txt"
check "trains at the saved shape" $? "$(grep data: "$TMP/rest.txt")"
[[ $(grep -c '"step"' "$TMP/log.jsonl") -eq 5 ]] && grep -q '"step":8' "$TMP/log.jsonl"
check "continues to the saved --steps 8" $? "$(tail -1 "$TMP/log.jsonl")"

echo "$passed passed, $failed failed"
((failed == 0))
