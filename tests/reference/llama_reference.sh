#!/usr/bin/env bash
# llama_reference.sh — the float64 PyTorch Llama (scripts/torch_llama.py) that Llama training in Aqueduct will be
# checked against: its self-test (RoPE, GQA, RMSNorm against closed forms and per-head loops; the model's
# gradients against finite differences; the Hugging Face layout round trip), then a random HF-layout model
# (make-init: model.safetensors + config.json) trained 3 steps, whose first loss must be ln(V) ± 0.1 (weights of
# std 0.02 give near-uniform logits) and whose losses must be finite.
# Usage: llama_reference.sh. Exit 77 (CTest: skipped) when Debian's python3-torch is missing.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
if ! "$PY" -c "import torch, numpy" 2> /dev/null; then
  echo "SKIP: $PY cannot import torch and numpy (apt-get install python3-torch python3-numpy)"
  exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" "$ROOT/scripts/torch_llama.py" self-test || exit 1
"$PY" "$ROOT/scripts/torch_llama.py" make-init --out "$WORK/init" --layers 2 --hidden 30 --heads 3 --kv-heads 1 \
  --intermediate 46 --vocab 97 --positions 32 --theta 500 --norm-noise 0.1 --seed 11 > /dev/null || exit 1
"$PY" "$ROOT/scripts/torch_gpt2.py" make-shard --out "$WORK/train_000.bin" --tokens 4000 --vocab 97 --seed 5 || exit 1
"$PY" "$ROOT/scripts/torch_llama.py" train --init "$WORK/init" --data "$WORK/train_*.bin" --batch 3 --seq 13 \
  --steps 3 --lr 1e-3 --log-out "$WORK/ref.jsonl" --save "$WORK/ref.safetensors" > /dev/null || exit 1
"$PY" - "$WORK/ref.jsonl" << 'PYEOF'
import json, math, sys
losses = [json.loads(l)["loss"] for l in open(sys.argv[1])]
ok = len(losses) == 3 and all(math.isfinite(x) for x in losses) and abs(losses[0] - math.log(97)) < 0.1
print(("ok" if ok else "FAIL") + f" reference training: losses {losses}, ln(V) = {math.log(97):.4f}")
sys.exit(0 if ok else 1)
PYEOF
