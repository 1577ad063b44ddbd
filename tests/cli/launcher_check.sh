#!/usr/bin/env bash
# launcher_check.sh — several launched tasks that found no MPI world are refused (parallel/launcher_check.h).
#
# A bare `srun -n 2` is faked with the variables Slurm 22.05 gives each task (SLURM_NTASKS, SLURM_STEP_NUM_TASKS,
# SLURM_STEP_ID; no PMI/PMIx): aq-train and aq-bench must exit non-zero with exactly one stderr line that names
# the cause and the fix, before any output or file. AQ_ALLOW_INDEPENDENT_TASKS=1 lets the same run go on, and an
# sbatch/salloc shell's variables (SLURM_NTASKS without a step) do not stop a single process. No Slurm needed.
#
#   bash tests/cli/launcher_check.sh build/bin
# Prints "ok NAME" or "FAIL NAME: reason" per case, then "N passed, M failed"; exits 1 if any case failed.
set -u

BIN=${1:?usage: launcher_check.sh BUILD_BIN_DIR}
BIN=$(cd "$BIN" && pwd) || exit 1
export LC_ALL=C OMP_NUM_THREADS=1
# Whatever launcher runs this test, the cases below set the launcher variables themselves.
CLEAN=(env -u SLURM_NTASKS -u SLURM_NPROCS -u SLURM_STEP_NUM_TASKS -u SLURM_STEP_ID -u SLURM_STEPID -u PMI_SIZE
  -u PMI_RANK -u PMIX_RANK -u OMPI_COMM_WORLD_SIZE -u AQ_ALLOW_INDEPENDENT_TASKS)
SRUN2=(SLURM_NTASKS=2 SLURM_NPROCS=2 SLURM_STEP_NUM_TASKS=2 SLURM_STEP_ID=0 SLURM_PROCID=1)

TMP=$(mktemp -d /tmp/aq-launcher-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
ok() { echo "ok $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# A small text and a tiny model (one step of a 1-layer, 16-wide GPT).
awk 'BEGIN { srand(3); for (i = 0; i < 4000; i++) printf "%s ", (rand() < 0.5 ? "the quick" : "lazy dog."); }' \
  >"$TMP/text.txt"
if ! "$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" >/dev/null 2>"$TMP/err"; then
  echo "FAIL setup: aq-prepare: $(cat "$TMP/err")"
  echo "0 passed, 1 failed"
  exit 1
fi
TRAIN=("$BIN/aq-train" --threads 1 --device cpu --layers 1 --heads 2 --dim 16 --seq 16 --batch 2 --steps 1
  --data "$TMP/data/train_000.bin")

# refused NAME REGEX SAVE -- CMD...: non-zero exit, one stderr line "<program>: error: " matching REGEX, nothing on
# stdout, and no file at SAVE.
refused() {
  local name=$1 regex=$2 save=$3
  shift 4
  "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$? lines
  lines=$(awk 'END { print NR }' "$TMP/err")
  if ((rc == 0)); then
    fail "$name" "exit code 0 (stderr: $(cat "$TMP/err"))"
  elif ((rc >= 124)); then
    fail "$name" "exit code $rc: killed or crashed (stderr: $(cat "$TMP/err"))"
  elif [[ $lines != 1 ]]; then
    fail "$name" "stderr has $lines lines, expected one: $(tr '\n' '|' <"$TMP/err")"
  elif ! grep -qE -- "$regex" "$TMP/err"; then
    fail "$name" "stderr does not match /$regex/: $(cat "$TMP/err")"
  elif [[ -s $TMP/out ]]; then
    fail "$name" "printed on stdout before refusing: $(head -c 300 "$TMP/out")"
  elif [[ -e $save ]]; then
    fail "$name" "wrote $save"
  else
    ok "$name"
  fi
}

# runs NAME SAVE -- CMD...: exit 0 and a checkpoint at SAVE.
runs() {
  local name=$1 save=$2
  shift 3
  rm -rf "$save"
  if ! "$@" >"$TMP/out" 2>"$TMP/err"; then
    fail "$name" "exit code $? (stderr: $(tail -3 "$TMP/err"))"
  elif [[ ! -f $save/step-00000001/model.safetensors ]]; then
    fail "$name" "no checkpoint in $save"
  else
    ok "$name"
  fi
}

CK=$TMP/ck
runs "no launcher: one process trains" "$CK" -- "${CLEAN[@]}" "${TRAIN[@]}" --save "$CK"
rm -rf "$CK"
refused "bare srun -n 2: aq-train refuses" \
  '^aq-train: error: this process is one of 2 tasks of a Slurm job step \(SLURM_STEP_NUM_TASKS=2\) but no MPI world was found \(world size 1, no PMI or PMIx in the environment\).*launch with srun --mpi=pmix -n 2 \(or mpirun inside the allocation\); or set AQ_ALLOW_INDEPENDENT_TASKS=1' \
  "$CK" -- "${CLEAN[@]}" "${SRUN2[@]}" "${TRAIN[@]}" --save "$CK"
refused "the brief's two variables alone" 'SLURM_STEP_NUM_TASKS=2.*srun --mpi=pmix -n 2' "$CK" -- \
  "${CLEAN[@]}" SLURM_NTASKS=2 SLURM_STEP_NUM_TASKS=2 "${TRAIN[@]}" --save "$CK"
refused "bare srun -n 3: aq-bench refuses" '^aq-bench: error: this process is one of 3 tasks .*srun --mpi=pmix -n 3' \
  "$TMP/none" -- "${CLEAN[@]}" SLURM_NTASKS=3 SLURM_STEP_NUM_TASKS=3 SLURM_STEP_ID=0 \
  "$BIN/aq-bench" --config tiny --steps 1 --warmup 0 --threads 1
refused "AQ_ALLOW_INDEPENDENT_TASKS=0 is not the override" 'SLURM_STEP_NUM_TASKS=2' "$CK" -- \
  "${CLEAN[@]}" "${SRUN2[@]}" AQ_ALLOW_INDEPENDENT_TASKS=0 "${TRAIN[@]}" --save "$CK"

# Two faked tasks at once, as srun would start them: each prints the line and exits non-zero (no MPI, no peer).
pids=()
for t in 0 1; do
  "${CLEAN[@]}" "${SRUN2[@]}" SLURM_PROCID=$t "${TRAIN[@]}" >/dev/null 2>"$TMP/err$t" &
  pids+=($!)
done
rc0=0 rc1=0
wait "${pids[0]}" || rc0=$?
wait "${pids[1]}" || rc1=$?
if ((rc0 != 0 && rc1 != 0)) && [[ $(cat "$TMP/err0" "$TMP/err1" | grep -c '^aq-train: error: this process is one of 2') == 2 ]]; then
  ok "two tasks: each refuses with one line"
else
  fail "two tasks: each refuses with one line" "exit codes $rc0 $rc1, stderr: $(cat "$TMP/err0" "$TMP/err1" | tr '\n' '|')"
fi

runs "AQ_ALLOW_INDEPENDENT_TASKS=1 lets it run" "$CK" -- \
  "${CLEAN[@]}" "${SRUN2[@]}" AQ_ALLOW_INDEPENDENT_TASKS=1 "${TRAIN[@]}" --save "$CK"
runs "srun -n 1 inside an allocation of 4 runs" "$CK" -- \
  "${CLEAN[@]}" SLURM_NTASKS=4 SLURM_NPROCS=4 SLURM_STEP_NUM_TASKS=1 SLURM_STEP_ID=0 "${TRAIN[@]}" --save "$CK"
runs "one process in an sbatch -n 2 script runs" "$CK" -- \
  "${CLEAN[@]}" SLURM_NTASKS=2 SLURM_NPROCS=2 SLURM_PROCID=0 "${TRAIN[@]}" --save "$CK"

echo "$passed passed, $failed failed"
((failed == 0))
