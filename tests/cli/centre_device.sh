#!/usr/bin/env bash
# centre_device.sh — aq-train --centre-device on two ranks in two centres (--centres 2), CPU only: naming every
# centre's device as the CPU trains exactly as without the flag (the same losses, bit for bit, with --outer
# diloco; evaluations of θ_global in between leave them so too), and the lists that cannot run are refused by
# every rank with one line and a non-zero exit: a centre on a GPU beside one on the CPU without --outer diloco,
# an unknown centre name (the names are listed), and a centre named twice. (The refusals that need no second
# rank are in bad_input.sh.)
# Usage: centre_device.sh BUILD_BIN_DIR MPIEXEC
set -u
BIN=$1
MPIEXEC=$2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN=("$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none -np 2)
awk 'BEGIN { for (i = 0; i < 3000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL: aq-prepare"; exit 1; }
ARGS=(--device cpu --data "$TMP/data/train_*.bin" --layers 2 --heads 2 --dim 32 --seq 16 --batch 2 --steps 6
      --threads 1 --centres 2 --outer diloco --outer-steps 2)
pass=0
fail=0
ok() { echo "ok $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }

# 1. Both centres named as CPU centres: the same run, loss for loss. And evaluations of θ_global in between
#    (the replica swapped out and back) leave the training losses as they were.
losses() { grep -v '"split":"val"' "$1" | grep -o '"loss":[^,}]*'; }
for run in plain named eval; do
  extra=()
  [[ $run == named ]] && extra=(--centre-device 0=cpu,1=cpu)
  [[ $run == eval ]] && extra=(--val-data "$TMP/data/val_*.bin" --eval-every 3 --eval-batches 2)
  if ! timeout 300 "${MPIRUN[@]}" "$BIN/aq-train" "${ARGS[@]}" "${extra[@]}" --log "$TMP/$run.jsonl" \
      > "$TMP/$run.out" 2>&1; then
    bad "train ($run)" "exit code $?: $(tail -5 "$TMP/$run.out")"
  fi
done
if [[ -s $TMP/plain.jsonl && -s $TMP/named.jsonl ]]; then
  if [[ $(losses "$TMP/plain.jsonl" | wc -l) -ne 6 ]]; then
    bad "same losses" "expected 6 step losses, got: $(losses "$TMP/plain.jsonl" | tr '\n' ' ')"
  elif ! diff <(losses "$TMP/plain.jsonl") <(losses "$TMP/named.jsonl") > "$TMP/diff"; then
    bad "same losses" "--centre-device 0=cpu,1=cpu changed the losses: $(tr '\n' ' ' < "$TMP/diff")"
  else
    ok "same losses with --centre-device 0=cpu,1=cpu"
  fi
fi
if [[ -s $TMP/plain.jsonl && -s $TMP/eval.jsonl ]]; then
  if [[ $(grep -c '"split":"val"' "$TMP/eval.jsonl") -ne 2 ]]; then
    bad "evaluations" "expected 2 validation lines in the log: $(grep '"split"' "$TMP/eval.jsonl" | tr '\n' ' ')"
  elif ! diff <(losses "$TMP/plain.jsonl") <(losses "$TMP/eval.jsonl") > "$TMP/diff"; then
    bad "evaluations" "evaluating θ_global changed the training losses: $(tr '\n' ' ' < "$TMP/diff")"
  else
    ok "evaluations leave the replicas as they were"
  fi
fi

# 2. Refusals: exactly one error line (the ranks agree and one reports), a non-zero exit, no hang.
source "$(dirname "${BASH_SOURCE[0]}")/one_error.sh"  # one_error
refuse() {  # NAME REGEX ARGS...
  local name=$1 re=$2
  shift 2
  timeout 120 "${MPIRUN[@]}" "$BIN/aq-train" "$@" > "$TMP/stdout" 2> "$TMP/stderr"
  one_error "$name" "$re" $? && ok "$name"
}
NONE=("${ARGS[@]/diloco/none}")  # the same flags with --outer none
refuse "mixed devices without diloco" \
  'aq-train: error: --centre-device puts some centres on the CPU and some on GPUs, but synchronous data parallelism .*not supported across devices; add --outer diloco' \
  "${NONE[@]}" --centre-device 0=cuda
refuse "unknown centre" 'aq-train: error: --centre-device: no centre is named "east"; this job.s centres are 0, 1' \
  "${ARGS[@]}" --centre-device east=cpu
refuse "centre named twice" 'aq-train: error: --centre-device names centre 1 twice; give each centre one device' \
  "${ARGS[@]}" --centre-device 1=cpu,0=cpu,1=cpu
echo "$pass passed, $fail failed"
((fail == 0))
