#!/usr/bin/env bash
# run.sh — the main job: install what is missing, build, prepare the default corpus (the English text of
# Debian's fortunes package, byte-level tokens), train the default small GPT-2 and print a generated sample.
# Extra arguments go to aq-train and override the defaults, e.g.  ./scripts/run.sh --steps 1000 --threads 2
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
./scripts/install_deps.sh
./scripts/build.sh

DATA=data/fortunes
if [[ ! -f $DATA/train_000.bin ]]; then
  build/bin/aq-prepare --out "$DATA" /usr/share/games/fortunes/*.u8
fi
mkdir -p out
build/bin/aq-train --data "$DATA/train_*.bin" --val-data "$DATA/val_*.bin" \
  --layers 4 --heads 4 --dim 128 --seq 128 --batch 16 \
  --steps 1000 --lr 1e-3 --lr-schedule cosine --warmup 50 --min-lr 1e-4 \
  --eval-every 250 --eval-batches 8 --save out/model.safetensors --log out/train.jsonl "$@"

echo
echo "---- sample from out/model.safetensors ----"
build/bin/aq-generate --model out/model.safetensors --prompt "The " --tokens 300 --temperature 0.8 --top-k 40
