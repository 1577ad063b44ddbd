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
    # Continue like a requeued job. A run killed after its final save has nothing left to do.
    if [[ ! -d ck/step-00000004 ]] || ! grep -q '"step": 4' ck/step-00000004/manifest.json 2> /dev/null; then
      local resume=()
      compgen -G "ck/step-*" > /dev/null && resume=(--resume ck)
      if ! "${RUN[@]}" "${resume[@]}" --save ck > cont.txt 2>&1; then
        why="the continued run (${resume[*]:-fresh}) failed: $(grep -m1 'error' cont.txt || tail -1 cont.txt)"
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
TAG="fresh run:"
for ((k = 1; k <= N1; ++k)); do trial "$k" fresh "${RUN[@]}" --save ck; done

# 2. Resuming step 2 of a complete run (every save kept) with --overwrite: its saves of steps 3 and 4 replace the
#    existing ones.
"${RUN[@]}" --save all --keep 0 > all.txt 2>&1 || { echo "FAIL setup: the run keeping every save: $(tail -2 all.txt)"; exit 1; }
complete() { rm -rf ck && cp -r all ck; }
complete
N2=$(count_points "${RUN[@]}" --resume ck/step-00000002 --save ck --overwrite)
TAG="replacing run:"
for ((k = 1; k <= N2; ++k)); do trial "$k" complete "${RUN[@]}" --resume ck/step-00000002 --save ck --overwrite; done

echo "kill points: $N1 in a fresh run, $N2 in a run replacing saves; $trials trials, $failed failed"
[[ $N1 -gt 0 && $N2 -gt 0 && $((N1 + N2)) -ge 200 ]] || { echo "FAIL: too few kill points ($N1 + $N2 < 200)"; exit 1; }
[[ $failed -eq 0 ]]
