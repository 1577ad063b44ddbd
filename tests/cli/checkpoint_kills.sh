#!/usr/bin/env bash
# checkpoint_kills.sh — a kill at any instant of a save never leaves a run that cannot continue.
#
# Kill points come from the fault-injection hook (runtime/fault.h), not from timing: every step of a save that
# changes the disk (each write() of a file, fsync, rename, mkdir, removal of an old save) is a numbered point, and
# AQ_FAULT_KILL_AT=K sends SIGKILL to the writer at point K.
#   1. A 4-step run saving after every step (--keep 2, cosine schedule) passes N points (~260). For every K it is
#      killed at K, then continued as a requeued job would be: --resume DIR when DIR holds a save, a fresh run
#      otherwise.
#   2. A run that resumes an older save (step 2 of 4) with --overwrite replaces the newer saves of the same steps
#      (the atomic exchange of a save directory) and prunes: killed at each of its points, then continued.
# Each trial must end with the final save bit-identical to an uninterrupted run (every tensor's checksum, model
# and state), and a continued run must leave no hidden directory or lock behind. The total is >= 200 kill points.
#
#   bash tests/cli/checkpoint_kills.sh build/bin
# Prints one line per failing trial and a summary; exits 1 if any trial failed.
set -u
BIN=${1:?usage: checkpoint_kills.sh BUILD_BIN_DIR}
TRAIN=$BIN/aq-train
[[ -x $TRAIN ]] || { echo "FAIL setup: $TRAIN is missing (build it first)"; exit 1; }
export LC_ALL=C OMP_NUM_THREADS=1
TMP=$(mktemp -d /tmp/aq-checkpoint-kills-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 1

awk 'BEGIN { for (i = 0; i < 1500; i++) print "line " i ": pack my box with five dozen liquor jugs." }' > text.txt
"$BIN/aq-prepare" --out data text.txt > /dev/null || { echo "FAIL setup: aq-prepare"; exit 1; }
RUN=("$TRAIN" --data "data/train_*.bin" --layers 1 --heads 2 --dim 32 --seq 16 --batch 2 --steps 4 --save-every 1
  --keep 2 --lr 2e-3 --lr-schedule cosine --warmup 1 --threads 1)

# The tensors of a save, as the checksums its files carry (each covers one tensor's bytes).
sums() {
  python3 - "$1" << 'EOF'
import json, struct, sys
out = []
for f in ("model.safetensors", "state.safetensors"):
    with open(f"{sys.argv[1]}/{f}", "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        meta = json.loads(fh.read(n))["__metadata__"]
    out.append(meta["aq_checksums"])
print(json.dumps(out, sort_keys=True))
EOF
}

"${RUN[@]}" --save ref > ref.txt 2>&1 || { echo "FAIL setup: the uninterrupted run: $(tail -2 ref.txt)"; exit 1; }
REF=$(sums ref/step-00000004) || { echo "FAIL setup: cannot read the reference save"; exit 1; }

# The run id in a save's manifest.
run_id_of() { sed -n 's/.*"run_id": "\(.*\)".*/\1/p' "$1/manifest.json" 2> /dev/null; }

count_points() {  # FLAGS... → the number of fault points the run passes
  AQ_FAULT_KILL_AT=count "$@" 2>&1 >/dev/null | sed -n 's/^aq fault points: //p'
}

trials=0 failed=0
# One trial: KILL_POINT PREPARE-FUNCTION FLAGS-OF-THE-KILLED-RUN...
trial() {
  local k=$1 prepare=$2
  shift 2
  rm -rf ck
  $prepare
  trials=$((trials + 1))
  # (the braces keep bash's "Killed" report out of the output)
  { AQ_FAULT_KILL_AT=$k "$@" > killed.txt 2>&1; } 2> /dev/null
  local rc=$? why=""
  if [[ $rc -ne 137 ]]; then
    why="expected the kill at point $k (exit 137), got exit $rc: $(tail -1 killed.txt)"
  else
    # Once the drop has begun (DIR/.dropped written, or the other run's step 4 gone), no --resume DIR may take up
    # one of the dropped saves again (a user continuing by hand, say).
    if [[ -n $DROPPED_ID ]] && { [[ -f ck/.dropped ]] || [[ $(run_id_of ck/step-00000004 2> /dev/null) != "$DROPPED_ID" ]]; }; then
      local pick
      pick=$("${RUN[@]}" --resume ck 2>&1 | sed -n 's/.*newest intact save in ck: \(step-[0-9]*\).*/\1/p')
      if [[ -n $pick && $(run_id_of "ck/$pick") == "$DROPPED_ID" ]]; then
        why="--resume ck would take up ck/$pick, a save --overwrite had begun to drop"
      fi
    fi
    # Continue like a requeued job. A run killed after its final save has nothing left to do.
    if [[ -z $why ]] && ! grep -q "\"run_id\": \"$DONE_ID" ck/step-00000004/manifest.json 2> /dev/null; then
      local cont=()
      if [[ $TAG == fresh* ]]; then
        cont=("${RUN[@]}" --save ck)
        compgen -G "ck/step-*" > /dev/null && cont+=(--resume ck)
      else
        cont=("$@")
      fi
      if ! "${cont[@]}" > cont.txt 2>&1; then
        why="the continued run (${cont[*]:${#RUN[@]}}) failed: $(grep -m1 'error' cont.txt || tail -1 cont.txt)"
      elif [[ -n $(find ck -mindepth 1 -maxdepth 1 -name '.*' -print -quit) ]]; then
        why="the continued run left $(find ck -mindepth 1 -maxdepth 1 -name '.*' | head -3 | tr '\n' ' ')behind"
      fi
    fi
    if [[ -z $why && $(sums ck/step-00000004 2> /dev/null) != "$REF" ]]; then
      why="the final save differs from the uninterrupted run's"
    fi
  fi
  if [[ -n $why ]]; then
    failed=$((failed + 1))
    echo "FAIL ${TAG} kill point $k: $why"
  fi
}

# 1. A fresh run killed at each point of its four saves.
fresh() { :; }
N1=$(count_points "${RUN[@]}" --save count1)
TAG="fresh run:" DONE_ID="" DROPPED_ID=""  # the run is complete once a step-4 save exists
for ((k = 1; k <= N1; ++k)); do trial "$k" fresh "${RUN[@]}" --save ck; done

# 2. Resuming step 2 of the run with --overwrite, into a directory whose saves of steps 3 and 4 come from another
#    run (another seed: different bytes, so taking one of them up again would show in the final checksums). They
#    are dropped at the start (their ids listed in DIR/.dropped first, then removed). The continuation repeats
#    the job's own command, as a requeue does; once step 4 is saved, step 2 is pruned and the run is complete.
"${RUN[@]}" --save all --keep 0 > all.txt 2>&1 || { echo "FAIL setup: the run keeping every save: $(tail -2 all.txt)"; exit 1; }
"${RUN[@]}" --save other --keep 0 --seed 7 > other.txt 2>&1 || { echo "FAIL setup: the other run: $(tail -2 other.txt)"; exit 1; }
mixed() { rm -rf ck && mkdir ck && cp -r all/step-00000001 all/step-00000002 other/step-00000003 other/step-00000004 ck/; }
REPLACE=("${RUN[@]}" --resume ck/step-00000002 --save ck --overwrite)
mixed
N2=$(count_points "${REPLACE[@]}")
TAG="replacing run:" DONE_ID=$(run_id_of all/step-00000002) DROPPED_ID=$(run_id_of other/step-00000004)  # complete: a step-4 save of this run
for ((k = 1; k <= N2; ++k)); do trial "$k" mixed "${REPLACE[@]}"; done

echo "kill points: $N1 in a fresh run, $N2 in a run replacing saves; $trials trials, $failed failed"
[[ $N1 -gt 0 && $N2 -gt 0 && $((N1 + N2)) -ge 200 ]] || { echo "FAIL: too few kill points ($N1 + $N2 < 200)"; exit 1; }
[[ $failed -eq 0 ]]
