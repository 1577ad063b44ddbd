#!/usr/bin/env bash
# check_reference.sh — the 8-step run from a given safetensors checkpoint must match an independent float64
# PyTorch implementation of the same semantics (losses rel. err < 1e-4, final weights rel. err < 1e-3).
# Usage: check_reference.sh BUILD_BIN_DIR. Exit 77 (CTest: skipped) when Debian's python3-torch is missing.
set -euo pipefail
BIN=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
if ! "$PY" -c "import torch, numpy" 2>/dev/null; then
  echo "SKIP: $PY cannot import torch and numpy (apt-get install python3-torch python3-numpy)"
  exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# A real-text shard and a random GPT-2 with odd sizes (random biases and LayerNorm parameters too).
cat "$ROOT"/*/*.h "$ROOT"/*/*/*.h "$ROOT"/*/*.cpp > "$WORK/text.txt"
"$BIN/aq-prepare" --out "$WORK/data" --val-fraction 0.1 "$WORK/text.txt" > /dev/null
"$PY" "$ROOT/scripts/torch_gpt2.py" make-init --out "$WORK/init.safetensors" --layers 3 --heads 3 --embd 48 \
  --vocab 256 --positions 64 --seed 7 --bias-noise 0.1 > /dev/null

ARGS=(--data "$WORK/data/train_*.bin" --batch 3 --seq 37 --steps 8 --lr 1e-3 --lr-schedule cosine --warmup 3
      --min-lr 1e-4 --weight-decay 0.1 --beta1 0.9 --beta2 0.95 --eps 1e-8 --grad-clip 1.0)
"$BIN/aq-train" --device cpu --init-from "$WORK/init.safetensors" "${ARGS[@]}" --log "$WORK/ours.jsonl" \
  --save "$WORK/ours" --threads 2 > /dev/null
"$PY" "$ROOT/scripts/torch_reference.py" --init "$WORK/init.safetensors" "${ARGS[@]}" --log-out "$WORK/ref.jsonl" \
  --save "$WORK/ref.safetensors" > /dev/null
"$PY" "$ROOT/scripts/compare_reference.py" --ours-log "$WORK/ours.jsonl" --ref-log "$WORK/ref.jsonl" \
  --ours-model "$WORK/ours/step-00000008/model.safetensors" --ref-model "$WORK/ref.safetensors" --loss-tol 1e-4 --weight-tol 1e-3
