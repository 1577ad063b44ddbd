#!/usr/bin/env bash
# run.sh — the main job: install what is missing, build, prepare the default corpus (the English text of
# Debian's fortunes package, byte-level tokens), train the default small GPT-2 data-parallel over the local
# cores with mpirun, and print a generated sample.
# Extra arguments go to aq-train and override the defaults, e.g.  ./scripts/run.sh --steps 3000
# NP=4 ./scripts/run.sh uses 4 ranks (default: one per core); NP=1 runs a single process without mpirun.
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
NP=${NP:-$(nproc)}
LAUNCH=()
if [[ $NP -gt 1 ]]; then
  # As root Open MPI needs --allow-run-as-root; --oversubscribe allows more ranks than cores; --bind-to none
  # leaves thread placement to OpenMP.
  LAUNCH=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NP")
fi
BATCH=$(( 16 / NP > 0 ? 16 / NP : 1 ))  # per rank: the global batch stays 16 sequences
"${LAUNCH[@]}" build/bin/aq-train --data "$DATA/train_*.bin" --val-data "$DATA/val_*.bin" \
  --layers 4 --heads 4 --dim 128 --seq 128 --batch "$BATCH" \
  --steps 1000 --lr 3e-3 --lr-schedule cosine --warmup 50 --min-lr 3e-4 \
  --eval-every 250 --eval-batches 8 --save out/checkpoint --overwrite --log out/train.jsonl "$@"

# Loss, throughput and the step's time split to out/train.png (when Debian's python3-matplotlib is present;
# ./scripts/install_deps.sh --reference installs it).
if /usr/bin/python3 -c "import matplotlib" 2> /dev/null; then
  /usr/bin/python3 scripts/plot_run.py --out out/train.png out/train.jsonl
else
  echo "(no plot: python3-matplotlib is not installed; ./scripts/install_deps.sh --reference adds it)"
fi

echo
echo "---- sample from the newest save in out/checkpoint ----"
build/bin/aq-generate --model out/checkpoint --prompt "The " --tokens 300 --temperature 0.8 --top-k 40
