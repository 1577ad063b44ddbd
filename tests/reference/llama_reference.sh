#!/usr/bin/env bash
# llama_reference.sh — Llama-family training in Aqueduct against an independent float64 PyTorch Llama
# (scripts/torch_llama.py), in every layout.
#   1. The reference's self-test (RoPE, GQA, RMSNorm against closed forms and per-head loops; the model's gradients
#      against finite differences; the Hugging Face layout round trip).
#   2. A random Llama in the HF layout (model.safetensors + config.json: RMSNorm, SwiGLU, RoPE with theta 500,
#      6 query heads over 2 key/value heads, untied head, norm weights perturbed) trained 8 steps by aq-train from
#      that folder and by the reference: losses rel < 1e-4, final weights (saved in the HF layout, q/k/v and
#      gate/up split again) rel < 1e-3 — in one process, and under mpirun as tp 2, dp 2 with ZeRO-1, and tp 2 x dp 2.
#   3. The same with a tied head, one process.
# Usage: llama_reference.sh BUILD_BIN_DIR [MPIRUN...]. Exit 77 (CTest: skipped) without Debian's python3-torch;
# the mpirun layouts are skipped, with the reason, when no MPIRUN is given.
set -uo pipefail
BIN=$1
shift
MPIRUN=("$@")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
if ! "$PY" -c "import torch, numpy" 2> /dev/null; then
  echo "SKIP: $PY cannot import torch and numpy (apt-get install python3-torch python3-numpy)"
  exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
"$PY" "$ROOT/scripts/torch_llama.py" self-test || failed=1

cat "$ROOT"/runtime/*.h "$ROOT"/ops/*/*.h > "$WORK/text.txt"
"$BIN/aq-prepare" --out "$WORK/data" "$WORK/text.txt" > /dev/null || exit 1
ARGS=(--data "$WORK/data/train_*.bin" --batch 2 --seq 37 --steps 8 --lr 1e-3 --lr-schedule cosine --warmup 3
  --min-lr 1e-4 --weight-decay 0.1 --beta1 0.9 --beta2 0.95 --eps 1e-8 --grad-clip 1.0)
# The reference sees the global batch: dp ranks of batch 2 read what one process with batch 2·dp reads.
check() {  # NAME INIT_DIR DP NP [AQ-TRAIN FLAGS...]
  local name=$1 init=$2 dp=$3 np=$4
  shift 4
  local launch=()
  ((np > 1)) && launch=("${MPIRUN[@]}" -np "$np")
  local ref=$WORK/ref_${init##*/}_dp$dp
  if [[ ! -f $ref.safetensors ]]; then
    "$PY" "$ROOT/scripts/torch_llama.py" train --init "$init" "${ARGS[@]}" --batch $((2 * dp)) --log-out "$ref.jsonl" \
      --save "$ref.safetensors" > /dev/null || { echo "FAIL $name: the reference run failed"; failed=1; return; }
  fi
  rm -rf "$WORK/ours"
  if ! "${launch[@]}" "$BIN/aq-train" --device cpu --init-from "$init" "${ARGS[@]}" --log "$WORK/ours.jsonl" \
    --save "$WORK/ours" --threads 1 "$@" > "$WORK/out.txt" 2>&1; then
    echo "FAIL $name: aq-train failed: $(grep -m1 error "$WORK/out.txt" || tail -2 "$WORK/out.txt")"
    failed=1
    return
  fi
  if "$PY" "$ROOT/scripts/compare_reference.py" --ours-log "$WORK/ours.jsonl" --ref-log "$ref.jsonl" \
    --ours-model "$WORK/ours/step-00000008/model.safetensors" --ref-model "$ref.safetensors" \
    --loss-tol 1e-4 --weight-tol 1e-3 > "$WORK/cmp.txt" 2>&1; then
    echo "ok $name: $(tail -1 "$WORK/cmp.txt")"
  else
    echo "FAIL $name:"
    sed 's/^/    /' "$WORK/cmp.txt"
    failed=1
  fi
}

"$PY" "$ROOT/scripts/torch_llama.py" make-init --out "$WORK/untied" --layers 2 --hidden 48 --heads 6 --kv-heads 2 \
  --intermediate 80 --vocab 256 --positions 64 --theta 500 --norm-noise 0.1 --seed 3 > /dev/null || exit 1
"$PY" "$ROOT/scripts/torch_llama.py" make-init --out "$WORK/tied" --layers 2 --hidden 30 --heads 3 --kv-heads 1 \
  --intermediate 46 --vocab 256 --positions 64 --theta 10000 --tied --norm-noise 0.1 --seed 4 > /dev/null || exit 1
check "one process, untied head" "$WORK/untied" 1 1
check "one process, tied head" "$WORK/tied" 1 1
if ((${#MPIRUN[@]})); then
  check "tp 2 (3 query heads over 1 kv head per rank)" "$WORK/untied" 1 2 --tp 2
  check "dp 2, ZeRO-1" "$WORK/untied" 2 2 --zero 1
  check "tp 2 x dp 2" "$WORK/untied" 2 4 --tp 2
else
  echo "SKIP the mpirun layouts: no MPIRUN given (this build has no MPI)"
fi
exit $failed
