#!/usr/bin/env bash
# mixed_centres_gpu.sh (test, label gpu) — one DiLoCo job whose centres differ in device: centre "gpu" is one
# rank on GPU 0 (bf16, --dtype auto), centre "cpu" two CPU ranks (fp32), launched together by mpirun (MPMD,
# AQ_CENTRE per rank, --centres auto). 30 steps with an outer sync every 5: the run ends with exit code 0, every
# step's loss is finite and the loss falls, and the banner shows both devices. Skips (77) without a visible GPU.
# Usage: mixed_centres_gpu.sh BUILD_BIN_DIR MPIEXEC
set -u
BIN=$1
MPIEXEC=$2
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "no NVIDIA GPU visible: the mixed CPU/GPU DiLoCo job is not run"
  exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
awk 'BEGIN { for (i = 0; i < 3000; i++) print "line " i ": the quick brown fox jumps over the lazy dog." }' > "$TMP/text.txt"
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" > /dev/null || { echo "FAIL: aq-prepare"; exit 1; }
# --device cuda for the centres not named (here: none); the CPU centre is named.
ARGS=(--device cuda --centre-device cpu=cpu --centres auto --outer diloco --outer-steps 5 --steps 30
      --data "$TMP/data/train_*.bin" --layers 2 --heads 2 --dim 32 --seq 32 --batch 4 --threads 2 --lr 3e-3
      --log "$TMP/log.jsonl")
timeout 240 "$MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none \
  -np 1 -x AQ_CENTRE=gpu "$BIN/aq-train" "${ARGS[@]}" : \
  -np 2 -x AQ_CENTRE=cpu "$BIN/aq-train" "${ARGS[@]}" > "$TMP/out" 2>&1
rc=$?
if ((rc != 0)); then
  echo "FAIL: exit code $rc"
  tail -20 "$TMP/out"
  exit 1
fi
mapfile -t loss < <(grep -o '"loss":[^,}]*' "$TMP/log.jsonl" | cut -d: -f2)
if ((${#loss[@]} != 30)); then
  echo "FAIL: expected 30 step losses in the log, got ${#loss[@]}"
  exit 1
fi
if ! grep -q "device cuda" "$TMP/out" || ! grep -q "device cpu" "$TMP/out"; then
  echo "FAIL: the banner does not show a cuda rank and a cpu rank:"
  grep "device" "$TMP/out" | head
  exit 1
fi
# The mean of the last 5 losses below the mean of the first 5, by a margin; none is NaN or null.
if ! printf '%s\n' "${loss[@]}" | awk '
    $1 !~ /^-?[0-9]/ { bad = 1 }
    NR <= 5 { first += $1 } NR > 25 { last += $1 }
    END { if (bad) { print "non-finite loss"; exit 1 }
          printf "first 5 steps %.4f, last 5 %.4f\n", first / 5, last / 5; exit !(last < 0.9 * first) }'; then
  echo "FAIL: the loss did not fall: ${loss[*]}"
  exit 1
fi
echo "ok: 30 steps of DiLoCo across a GPU centre and a CPU centre"
